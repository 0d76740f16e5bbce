"""Running real iSCSI initiators against a target: libiscsi's test suite and tgt as the reference.

Shared by the conformance tests and ``bench/iscsi_conformance.py``. Everything listens on
127.0.0.1 on ports picked free at run time, and every process started here is stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ISCSI_TEST_CU = shutil.which("iscsi-test-cu")
TGTD = shutil.which("tgtd")
TGTADM = shutil.which("tgtadm")

# The families the iSCSI issue names as the acceptance gate (libiscsi 1.19 names).
FAMILIES = (
    "Inquiry",
    "Mandatory",
    "ModeSense6",
    "Read6",
    "Read10",
    "Read12",
    "Read16",
    "ReadCapacity10",
    "ReadCapacity16",
    "Write10",
    "Write12",
    "Write16",
    "WriteVerify10",
    "WriteVerify12",
    "WriteVerify16",
    "Verify10",
    "Verify12",
    "Verify16",
    "Prefetch10",
    "Prefetch16",
    "TestUnitReady",
    "StartStopUnit",
    "PreventAllow",
    "ReportSupportedOpcodes",
    "ReadOnly",
    "NoMedia",
    "Unmap",
    "WriteSame10",
    "WriteSame16",
    "GetLBAStatus",
    "iSCSIcmdsn",
    "iSCSIdatasn",
    "iSCSIResiduals",
    "iSCSITMF",
)

_TEST_LINE = re.compile(r"^\s+Test: (?P<name>\S+) \.\.\.(?P<rest>.*)$")


@dataclass(frozen=True, slots=True)
class CuOutcome:
    name: str
    result: str  # "passed", "skipped" or "failed"
    detail: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def run_family(url: str, family: str, *, timeout: float = 300.0) -> list[CuOutcome]:
    """Run one ``ALL.<family>`` suite of iscsi-test-cu (destructive tests allowed)."""
    return run_family_counted(url, family, timeout=timeout)[0]


_ASSERTS = re.compile(r"^\s+asserts\s+(\d+)\s+(\d+)\s+(\d+)", re.MULTILINE)


def run_family_counted(
    url: str, family: str, *, timeout: float = 300.0
) -> tuple[list[CuOutcome], int]:
    """Like :func:`run_family`, plus how many assertions passed (0 when everything skipped)."""
    assert ISCSI_TEST_CU is not None
    completed = subprocess.run(
        [ISCSI_TEST_CU, "--dataloss", f"--test=ALL.{family}", url],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = completed.stdout + completed.stderr
    summary = _ASSERTS.search(output)
    return parse_outcomes(output), int(summary.group(3)) if summary else 0


def parse_outcomes(output: str) -> list[CuOutcome]:
    """Per-test results from iscsi-test-cu's verbose output."""
    outcomes: list[CuOutcome] = []
    lines = output.splitlines()
    index = 0
    while index < len(lines):
        match = _TEST_LINE.match(lines[index])
        index += 1
        if match is None:
            continue
        name = match.group("name")
        body = [match.group("rest")]
        while index < len(lines) and not _TEST_LINE.match(lines[index]):
            if lines[index].startswith(("Run Summary", "Suite:")):
                break
            body.append(lines[index])
            index += 1
        text = "\n".join(body)
        result = _verdict(text)
        outcomes.append(CuOutcome(name, result, text.strip()))
    return outcomes


_TOKENS = re.compile(r"\[SKIPPED\]|\[FAILED\]|\bpassed\b|\bFAILED\b")


def _verdict(text: str) -> str:
    """CUnit's verdict for one test: the first bare ``passed``/``FAILED`` after its name.

    Bracketed ``[FAILED]``/``[SKIPPED]`` are libiscsi's log lines (a test that expects a command
    to fail logs ``[FAILED]`` and passes); anything after the verdict belongs to the next test.
    """
    skipped = False
    for token in _TOKENS.finditer(text):
        word = token.group()
        if word == "[SKIPPED]":
            skipped = True
        elif word == "passed":
            return "skipped" if skipped else "passed"
        elif word == "FAILED":
            return "failed"
    return "failed"  # crashed or hung: no verdict at all


@contextlib.contextmanager
def tgt_reference(backing: Path, target_name: str) -> Iterator[str]:
    """Run Debian's tgtd on a free loopback port exporting ``backing``; yields the LUN URL.

    tgt puts its controller at LUN 0, so the disk is LUN 1.
    """
    assert TGTD is not None
    assert TGTADM is not None
    port = free_port()
    control = str(port % 10000 + 100)  # tgtd's control "port" is a small integer
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [TGTD, "-f", "-C", control, "--iscsi", f"portal=127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        with _stopped(process, control):
            wait_for_port(port)
            adm = [TGTADM, "-C", control, "--lld", "iscsi"]
            for args in (
                ["--op", "new", "--mode", "target", "--tid", "1", "-T", target_name],
                [
                    "--op",
                    "new",
                    "--mode",
                    "logicalunit",
                    "--tid",
                    "1",
                    "--lun",
                    "1",
                    "-b",
                    str(backing),
                ],
                ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"],
            ):
                subprocess.run([*adm, *args], check=True, capture_output=True)
            yield f"iscsi://127.0.0.1:{port}/{target_name}/1"


@contextlib.contextmanager
def _stopped(process: subprocess.Popen[bytes], control: str) -> Iterator[None]:
    """Take tgtd down on the way out, however the block exits."""
    assert TGTADM is not None
    try:
        yield
    finally:
        # tgtd ignores SIGTERM while targets exist: take them down through tgtadm first.
        adm = [TGTADM, "-C", control]
        for args in (
            ["--op", "update", "--mode", "target", "--tid", "1", "-n", "state", "-v", "offline"],
            ["--op", "delete", "--mode", "target", "--tid", "1", "--force"],
            ["--op", "delete", "--mode", "system"],
        ):
            subprocess.run([*adm, *args], check=False, capture_output=True)
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


# -- `diskless export` as a subprocess, and the initiator tools run against it -------------------

ISCSI_INQ = shutil.which("iscsi-inq")
ISCSI_LS = shutil.which("iscsi-ls")
ISCSI_READCAPACITY16 = shutil.which("iscsi-readcapacity16")
QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")

DEFAULT_EXPORT_NAME = "iqn.2026-11.org.diskless.test:export"
TOOL_TIMEOUT = 60.0
_DISKLESS = Path(sys.executable).with_name("diskless")


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for initiator tools and the server: no stray ``LIBISCSI_*``/``DISKLESS_*``
    settings from the caller's shell (CHAP secrets, a config file) leak into a test."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LIBISCSI_", "DISKLESS_"))
    }
    env.update(extra)
    return env


def run_tool(
    args: Sequence[str | Path | None],
    *,
    timeout: float = TOOL_TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run an initiator tool with a timeout; never raises on a non-zero exit.

    ``None`` may only stand for a tool that ``shutil.which`` did not find, in a test that is
    skipped when it is missing; it fails here.
    """
    assert None not in args, f"tool not installed: {args}"
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        errors="replace",  # iscsi-inq prints binary designators (NAA) as they are
        timeout=timeout,
        check=False,
        env=env if env is not None else tool_env(),
    )


def run_tool_ok(
    args: Sequence[str | Path | None],
    *,
    timeout: float = TOOL_TIMEOUT,
    env: dict[str, str] | None = None,
) -> str:
    """Run a tool that must succeed; returns its stdout."""
    done = run_tool(args, timeout=timeout, env=env)
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} exited {done.returncode}\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done.stdout


@dataclass
class ExportServer:
    """A running ``diskless export``: where it listens and what it logged."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    target_name: str
    log_path: Path

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def portal_url(self) -> str:
        return f"iscsi://{self.portal}"

    def url(
        self,
        lun: int = 0,
        *,
        user: str | None = None,
        secret: str | None = None,
        query: str = "",
        target_name: str | None = None,
    ) -> str:
        """A libiscsi URL for ``lun``, with CHAP credentials (``user%secret@``) if given."""
        credentials = f"{user}%{secret}@" if user is not None else ""
        suffix = f"?{query}" if query else ""
        target = target_name or self.target_name
        return f"iscsi://{credentials}{self.portal}/{target}/{lun}{suffix}"

    def image_opts(self, **options: str) -> str:
        """A qemu ``--image-opts`` string for LUN 0 (extra options such as ``initiator-name``)."""
        parts = {
            "driver": "iscsi",
            "transport": "tcp",
            "portal": self.portal,
            "target": self.target_name,
            "lun": "0",
            **options,
        }
        return ",".join(f"{key}={value}" for key, value in parts.items())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, *, since: int = 0, timeout: float = 5.0) -> str:
        """The log from character ``since`` on, once it contains ``text``.

        The server logs a refusal after sending it, so the initiator may exit first.
        """
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()[since:]
            if text in log or time.monotonic() > deadline:
                return log
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.process.poll() is None

    def assert_healthy(self) -> None:
        """The server still runs and has logged no traceback."""
        log = self.log()
        assert self.alive(), f"diskless export died (exit {self.process.returncode}):\n{log}"
        assert "Traceback" not in log, f"diskless export logged a traceback:\n{log}"


def export_command(path: Path, listen: str, target_name: str, **options: object) -> list[str]:
    """The ``diskless export`` command line; ``chap_user="u"`` becomes ``--chap-user u``, a True
    bool a bare flag, and a list or tuple one option per item."""
    program = [str(_DISKLESS)] if _DISKLESS.exists() else [sys.executable, "-m", "diskless"]
    command = [*program, "export", str(path), "--listen", listen, "--target-name", target_name]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            command.append(flag)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                command += [flag, str(item)]
        else:
            command += [flag, str(value)]
    return command


@contextlib.contextmanager
def export_server(
    path: Path,
    *,
    target_name: str = DEFAULT_EXPORT_NAME,
    log_path: Path | None = None,
    start_timeout: float = 30.0,
    stop_timeout: float = 15.0,
    **options: object,
) -> Iterator[ExportServer]:
    """Run ``diskless export PATH`` on a free 127.0.0.1 port until the block ends.

    Waits until the portal accepts connections, yields an :class:`ExportServer`, then sends
    SIGTERM and asserts the server exits 0. The server's log (stderr) goes to ``log_path`` (kept
    afterwards) or to a temporary file; it is printed to stderr if the block fails, so pytest
    shows it with the failure. Other keyword arguments become ``diskless export`` options.
    """
    port = free_port()
    with contextlib.ExitStack() as files:
        log_file: IO[bytes]
        if log_path is None:
            log_file = files.enter_context(
                tempfile.NamedTemporaryFile(prefix="diskless-export-", suffix=".log")
            )
            log_path = Path(log_file.name)
        else:
            log_file = files.enter_context(log_path.open("wb"))
        process = subprocess.Popen(
            export_command(path, f"127.0.0.1:{port}", target_name, **options),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=tool_env(),
        )
        server = ExportServer(process, "127.0.0.1", port, target_name, log_path)
        stopped = False
        try:
            _wait_until_serving(server, start_timeout)
            yield server
            stopped = True
            code = _terminate(process, stop_timeout)
            assert code == 0, f"diskless export exited {code} on SIGTERM:\n{server.log()}"
        except BaseException:
            sys.stderr.write(f"---- diskless export log ({log_path}) ----\n{server.log()}\n")
            raise
        finally:
            if not stopped or process.poll() is None:
                _stop(process)


def _wait_until_serving(server: ExportServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"diskless export exited {server.process.returncode} at start:\n{server.log()}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection((server.host, server.port), 0.2),
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"diskless export not listening on {server.portal} after {timeout} s")


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then wait; a server that ignores it is killed and reported as a failure."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
        raise AssertionError(f"diskless export ignored SIGTERM for {timeout} s") from None


_QEMU_IO_DONE = re.compile(r"^(wrote|read|discard) (\d+)/\2 bytes", re.MULTILINE)


class QemuIo:
    """An interactive ``qemu-io`` session: one open image, commands sent one at a time.

    Keeps one iSCSI session open across commands, so a test can interleave what two initiators
    do. ``command`` returns the output of one command (up to the next ``qemu-io>`` prompt).
    """

    PROMPT = "qemu-io> "

    def __init__(self, args: list[str], *, timeout: float = 30.0) -> None:
        assert QEMU_IO is not None
        self._timeout = timeout
        self.process = subprocess.Popen(
            [QEMU_IO, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=tool_env(),
        )
        self._buffer = b""
        self.transcript = ""
        self._read_prompt()

    def command(self, line: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        out = self._read_prompt()
        self.transcript += f"{self.PROMPT}{line}\n{out}"
        return out

    def check(self, line: str) -> str:
        """Run a read/write command that must succeed (and, for ``read -P``, verify)."""
        out = self.command(line)
        assert "Pattern verification failed" not in out, f"qemu-io {line!r}:\n{out}"
        assert " failed: " not in out, f"qemu-io {line!r}:\n{out}"
        assert _QEMU_IO_DONE.search(out), f"qemu-io {line!r} did not complete:\n{out}"
        return out

    def close(self) -> int:
        """Quit; returns qemu-io's exit status."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.write(b"quit\n")
                self.process.stdin.close()
            try:
                self.process.wait(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.transcript += self.process.stdout.read().decode(errors="replace")
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> QemuIo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_prompt(self) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + self._timeout
        prompt = self.PROMPT.encode()
        while not self._buffer.endswith(prompt):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"qemu-io gave no prompt in {self._timeout} s: {self._buffer!r}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(
                    f"qemu-io exited ({self.process.wait(timeout=5)}): "
                    f"{self._buffer.decode(errors='replace')}"
                )
            self._buffer += chunk
        out, self._buffer = self._buffer[: -len(prompt)], b""
        return out.decode(errors="replace")
