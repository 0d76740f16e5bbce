"""The serve composition root: data directory layout, service supervision, signals, exit status."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskless import runtime
from diskless.config import Settings
from diskless.errors import ConfigError, DisklessError

# Every wait here is bounded, so a shutdown bug fails a test instead of hanging the suite.
STOP_TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    # serve() configures logging; keep its handler from outliving the test's captured stderr.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class RecordingService:
    """Serves until cancelled and records what happened to it."""

    def __init__(self, name: str, *, fail_with: BaseException | None = None) -> None:
        self.name = name
        self.started = asyncio.Event()
        self.cleaned_up = False
        self._fail_with = fail_with

    async def run(self) -> None:
        self.started.set()
        try:
            if self._fail_with is not None:
                raise self._fail_with
            await asyncio.Event().wait()
        finally:
            self.cleaned_up = True


class SignalSelf:
    """Sends ``signum`` to this very process once running, as an operator's kill would."""

    name = "signaller"

    def __init__(self, signum: signal.Signals) -> None:
        self._signum = signum
        self.cleaned_up = False

    async def run(self) -> None:
        os.kill(os.getpid(), self._signum)
        try:
            await asyncio.Event().wait()
        finally:
            self.cleaned_up = True


def test_prepare_data_dir_creates_the_layout(tmp_path: Path) -> None:
    layout = runtime.prepare_data_dir(tmp_path / "data")

    assert layout.root == tmp_path / "data"
    for folder in (layout.images, layout.disks, layout.state):
        assert folder.is_dir()
        assert folder.parent == layout.root
    # A second start finds everything in place.
    assert runtime.prepare_data_dir(tmp_path / "data") == layout


def test_unusable_data_dir_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    with pytest.raises(ConfigError, match=r"^data_dir: cannot create"):
        runtime.prepare_data_dir(blocker / "data")


def test_default_services_never_include_dhcp(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    names = [
        service.name
        for service in runtime.build_services(settings, runtime.DataLayout.under(tmp_path))
    ]
    assert "dhcp" not in names
    assert "iscsi" in names
    with_dhcp = Settings(data_dir=tmp_path, dhcp={"interface": "veth-test"})
    names = [
        service.name
        for service in runtime.build_services(with_dhcp, runtime.DataLayout.under(tmp_path))
    ]
    assert "dhcp" in names


def test_services_run_until_stop_then_clean_up() -> None:
    services = [RecordingService("a"), RecordingService("b")]

    async def scenario() -> None:
        stop = asyncio.Event()
        async with asyncio.timeout(STOP_TIMEOUT):
            running = asyncio.create_task(runtime.run_services(services, stop=stop))
            for service in services:
                await service.started.wait()
            assert not running.done()
            stop.set()
            await running

    asyncio.run(scenario())

    assert all(service.cleaned_up for service in services)


def test_no_services_still_waits_for_stop() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        async with asyncio.timeout(STOP_TIMEOUT):
            running = asyncio.create_task(runtime.run_services([], stop=stop))
            await asyncio.sleep(0.01)
            assert not running.done()
            stop.set()
            await running

    asyncio.run(scenario())


def test_a_failing_service_cancels_the_others() -> None:
    healthy = RecordingService("healthy")
    broken = RecordingService("broken", fail_with=DisklessError("port 3260 in use"))

    async def scenario() -> None:
        async with asyncio.timeout(STOP_TIMEOUT):
            await runtime.run_services([healthy, broken], stop=asyncio.Event())

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(scenario())

    assert caught.group_contains(DisklessError, match="port 3260 in use")
    assert healthy.cleaned_up


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    service = SignalSelf(signum)
    monkeypatch.setattr(runtime, "build_services", lambda settings, layout: [service])

    status = runtime.serve(Settings(data_dir=tmp_path / "data"))

    assert status == 0
    assert service.cleaned_up
    assert (tmp_path / "data" / "disks").is_dir()
    # The handlers are gone again: a later signal is not swallowed by a dead loop.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.timeout(30)
def test_serve_exits_1_when_a_service_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = RecordingService("broken", fail_with=RuntimeError("a bug"))
    monkeypatch.setattr(runtime, "build_services", lambda settings, layout: [broken])

    assert runtime.serve(Settings(data_dir=tmp_path)) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_diskless_serve_process_shuts_down_on_a_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    config = tmp_path / "diskless.toml"
    config.write_text(
        'data_dir = "data"\n[iscsi]\nhost = "127.0.0.1"\nport = 0\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\n[tftp]\nenabled = false\n'
        '[api]\nhost = "127.0.0.1"\nport = 0\n[logging]\nformat = "json"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKLESS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "diskless", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        seen: list[str] = []
        for line in process.stderr:
            seen.append(line)
            if '"event": "ready"' in line:
                break
        else:
            pytest.fail("serve exited before it was ready:\n" + "".join(seen))
        process.send_signal(signum)
        assert process.wait(timeout=STOP_TIMEOUT) == 0
        rest = process.stderr.read()
    finally:
        process.kill()
        process.wait()

    assert any('"event": "iscsi listening"' in line for line in [*seen, rest])
    assert any('"event": "api listening"' in line for line in seen)
    assert f'"signal": "{signum.name}"' in rest
    assert "diskless stopped" in rest
    assert (tmp_path / "data" / "images").is_dir()
