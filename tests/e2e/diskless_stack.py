"""``diskless serve`` as the only boot server of an end-to-end lab (DHCP, TFTP, HTTP, iSCSI).

The stack prepares a data directory the way an operator would (the golden disk as version 1 of an
image, one copy-on-write disk per machine, a machines file), writes a configuration for the lab's
server namespace, and runs ``diskless serve`` there. Between boots a test may stop it, inspect a
machine's disk from the host (:meth:`DisklessStack.read_disk_file`: the qcow2 overlay flattened
with ``qemu-img``), change the machines, and start it again::

    with boot_lab(tmp) as lab, DisklessStack(lab, golden_image(), machines) as stack:
        result = vm.boot(lab.lan, lab.tap, tmp / "boot1", VmConfig(mac=...))
        assert stack.timeline(mac) == [...]
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from bootlab import SERVER_INTERFACE, BootLab
from golden import read_root_file

from diskless.storage.disks import DiskMode
from diskless.storage.library import ImageLibrary
from netlab import wait_for_text

IQN_PREFIX = "iqn.2026-11.lab"
IMAGE = "labos"
POOL = ("198.18.0.100", "198.18.0.199")


@dataclass(frozen=True)
class LabMachine:
    mac: str
    hostname: str
    mode: DiskMode = DiskMode.PERSISTENT
    ip: str | None = None
    version: int | None = None

    @property
    def initiator(self) -> str:
        return f"{IQN_PREFIX}:client.{self.hostname}"


@dataclass
class DisklessStack:
    lab: BootLab
    golden: Path
    machines: list[LabMachine]
    dhcp_mode: Literal["full", "proxy"] = "full"
    workdir: Path = field(init=False)
    library: ImageLibrary = field(init=False)
    _server: subprocess.Popen[bytes] | None = None
    _starts: int = 0

    def __post_init__(self) -> None:
        self.workdir = self.lab.workdir / "diskless"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.library = ImageLibrary(self.workdir / "data")
        digest = self.library.store.add(self.golden)
        with self.library.catalog.locked():
            self.library.catalog.add_version(
                IMAGE, digest=digest, size=self.golden.stat().st_size, source=str(self.golden)
            )
        for machine in self.machines:
            self.library.disks.create(machine.hostname, IMAGE, machine.version, mode=machine.mode)

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def log(self) -> Path:
        return self.workdir / f"serve-{self._starts}.log"

    def start(self) -> None:
        assert self._server is None, "already running"
        self._starts += 1
        config = self._write_config()
        self._server = self.lab.net.start(
            self.lab.server,
            [sys.executable, "-m", "diskless", "serve", "--config", config],
            log=self.log,
        )
        wait_for_text(self.log, '"event": "ready"', timeout=60, process=self._server)

    def stop(self) -> None:
        if self._server is not None:
            code = self.lab.net.stop(self._server)
            self._server = None
            assert code == 0, f"diskless serve exited {code}:\n{self.log.read_text()[-3000:]}"

    def _write_config(self) -> Path:
        machines = self.workdir / "machines.toml"
        lines = []
        for machine in self.machines:
            lines += ["[[machine]]", f'mac = "{machine.mac}"', f'hostname = "{machine.hostname}"']
            if machine.ip is not None:
                lines.append(f'ip = "{machine.ip}"')
            lines.append('boot = { kind = "sanboot" }')
        machines.write_text("\n".join(lines) + "\n", encoding="utf-8")
        config = self.workdir / "diskless.toml"
        pool = (
            f'pool_start = "{POOL[0]}"\npool_end = "{POOL[1]}"\n'
            if self.dhcp_mode == "full"
            else ""
        )
        config.write_text(
            f'data_dir = "{self.workdir / "data"}"\n'
            f'[boot]\nmachines_file = "{machines}"\niqn_prefix = "{IQN_PREFIX}"\n'
            f'[dhcp]\ninterface = "{SERVER_INTERFACE}"\nmode = "{self.dhcp_mode}"\n'
            f"lease_time = 600\n{pool}"
            '[logging]\nformat = "json"\n',
            encoding="utf-8",
        )
        return config

    # -- inspection ------------------------------------------------------------------------------

    def timeline(self, mac: str) -> list[str]:
        """The boot stages the server recorded for ``mac`` in its current log, in order."""
        stages = []
        for line in self.log.read_text(errors="replace").splitlines():
            if '"boot event"' not in line:
                continue
            event = json.loads(line)
            if event.get("mac") == mac.lower():
                stages.append(str(event["stage"]))
        return stages

    def read_disk_file(self, hostname: str, path: str) -> str:
        """A file of ``labroot`` as ``hostname``'s disk holds it (the server must be stopped)."""
        assert self._server is None, "stop the server first: it holds the disk's lock"
        record = self.library.disks.get(hostname)
        overlay = self.library.disks.directory(hostname) / record.overlay
        flat = self.workdir / f"{hostname}.flat.raw"
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", str(overlay), str(flat)],
            check=True,
            capture_output=True,
        )
        try:
            return read_root_file(flat, path)
        finally:
            flat.unlink()
