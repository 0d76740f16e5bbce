"""``diskless serve`` on its inventory database: machines added while it runs boot at once.

No machines file: the server reads the inventory (SQLite under the data directory), exports each
sanboot machine's disk, renders its script, and picks up a machine another process adds while it
runs (the change serial is polled), exporting the new disk without a restart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diskless.config import Settings
from diskless.inventory import Inventory, MachineSpec
from diskless.storage.library import ImageLibrary

MiB = 1 << 20


def _listening(log: Path, event: str, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if f'"event": "{event}"' in line:
                return json.loads(line)  # type: ignore[no-any-return]
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"no {event!r} in the log:\n{log.read_text()[-3000:]}")


def _curl(url: str) -> str:
    return subprocess.run(
        ["curl", "-sf", url], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def _wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.timeout(120)
def test_serve_boots_machines_from_the_inventory_and_picks_up_new_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    library = ImageLibrary(data)
    raw = tmp_path / "golden.raw"
    with raw.open("wb") as file:
        file.truncate(8 * MiB)
    digest = library.store.add(raw)
    with library.catalog.locked():
        library.catalog.add_version("debian", digest=digest, size=8 * MiB, source=str(raw))
    for name in ("seat-01", "seat-02"):
        library.disks.create(name, "debian")
    (data / "state").mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=data)
    inventory = Inventory.from_settings(settings)
    inventory.create_machine(MachineSpec(mac="52:54:00:18:00:01", hostname="seat-01"), actor="test")

    config = tmp_path / "diskless.toml"
    config.write_text(
        f'data_dir = "{data}"\n[inventory]\npoll_interval = 0.5\n'
        '[iscsi]\nhost = "127.0.0.1"\nport = 0\n[http]\nhost = "127.0.0.1"\nport = 0\n'
        '[tftp]\nenabled = false\n[api]\nhost = "127.0.0.1"\nport = 0\n'
        '[logging]\nformat = "json"\n',
        encoding="utf-8",
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "diskless", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _listening(log, "ready", server)
        port = _listening(log, "http boot plane listening", server)["port"]
        script = _curl(f"http://127.0.0.1:{port}/boot/52:54:00:18:00:01.ipxe")
        assert "sanboot iscsi:127.0.0.1::" in script
        assert "disk.seat-01" in script

        # Another process (the future API, or a second server) adds a machine.
        inventory.create_machine(
            MachineSpec(mac="52:54:00:18:00:02", hostname="seat-02"), actor="test"
        )
        _wait_for(
            lambda: "disk.seat-02" in _curl(f"http://127.0.0.1:{port}/boot/52:54:00:18:00:02.ipxe"),
            "the new machine's script",
        )
        _wait_for(
            lambda: (
                "disk exported" in log.read_text()
                and "seat-02"
                in "".join(line for line in log.read_text().splitlines() if "disk exported" in line)
            ),
            "the new machine's disk to be exported",
        )
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0, log.read_text()[-3000:]
        inventory.close()
