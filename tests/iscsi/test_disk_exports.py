"""Machine disks on the iSCSI portal: the export plan, and the service against real initiators."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from libiscsi_support import QEMU_IO, run_tool, run_tool_ok

from diskless.boot import (
    BootEvent,
    BootSite,
    BootStage,
    BootTimeline,
    LocalDiskTarget,
    Machine,
    MachineBook,
    MenuItem,
    MenuTarget,
    SanbootTarget,
    parse_mac,
)
from diskless.config import Settings
from diskless.exports import plan_exports
from diskless.exports.endpoint import IscsiService
from diskless.storage.disks import DiskMode, DiskSpec
from diskless.storage.errors import ImageBusyError
from diskless.storage.library import ImageLibrary

PREFIX = "iqn.2026-11.org.diskless.test"
SEAT = Machine(mac=parse_mac("525400180010"), hostname="seat-01", ip=IPv4Address("198.18.0.170"))
MiB = 1 << 20


def test_plan_exports_one_target_per_sanbooted_disk() -> None:
    book = MachineBook(
        [
            SEAT,
            Machine(mac=parse_mac("525400180011"), hostname="local", boot=LocalDiskTarget()),
            Machine(
                mac=parse_mac("525400180012"),
                hostname="menu",
                chap_secret="s3cret-long-enough",
                boot=MenuTarget(
                    items=[
                        MenuItem(label="win", target=SanbootTarget(disk="Win11")),
                        MenuItem(label="local", target=LocalDiskTarget()),
                    ]
                ),
                next_boot_once=SanbootTarget(disk="win11", keep_san=True),
            ),
        ]
    )
    exports = {export.hostname: export for export in plan_exports(book, PREFIX)}
    assert set(exports) == {"seat-01", "menu"}
    seat = exports["seat-01"]
    assert seat.disk == "seat-01"
    assert seat.target_name == f"{PREFIX}:disk.seat-01"
    assert seat.access.allowed_initiators == {f"{PREFIX}:client.seat-01"}
    assert seat.access.chap is None
    menu = exports["menu"]
    assert menu.disk == "win11"
    assert menu.access.chap is not None
    assert menu.access.chap.user == f"{PREFIX}:client.menu"


@contextmanager
def running(service: IscsiService) -> Iterator[tuple[asyncio.AbstractEventLoop, int]]:
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(task_holder.setdefault("task", loop.create_task(service.run())))
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            failure.append(exc)
            service.ready.set()

    task_holder: dict[str, asyncio.Task[None]] = {}
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = 0
    while not service.ready.is_set() and deadline < 200:
        threading.Event().wait(0.05)
        deadline += 1
    if failure:
        raise failure[0]
    try:
        yield loop, service.addresses[0][1]
    finally:
        loop.call_soon_threadsafe(task_holder["task"].cancel)
        thread.join(10)
        loop.close()


def _library(tmp_path: Path) -> ImageLibrary:
    library = ImageLibrary(tmp_path / "data")
    raw = tmp_path / "golden.raw"
    with raw.open("wb") as file:
        file.truncate(16 * MiB)
        file.write(b"GOLDEN" * 100)
    digest = library.store.add(raw)
    with library.catalog.locked():
        library.catalog.add_version("debian", digest=digest, size=16 * MiB, source=str(raw))
    return library


def _qemu_io(port: int, initiator: str, command: str) -> str:
    opts = (
        f"driver=iscsi,transport=tcp,portal=127.0.0.1:{port},"
        f"target={PREFIX}:disk.seat-01,lun=0,initiator-name={initiator}"
    )
    return run_tool_ok([QEMU_IO, "--image-opts", opts, "-c", command])


@pytest.mark.skipif(QEMU_IO is None, reason="qemu-io (qemu-utils) not installed")
@pytest.mark.parametrize("mode", [DiskMode.PERSISTENT, DiskMode.RESET_ON_BOOT])
def test_service_serves_each_machine_its_disk_and_resets_on_boot(
    tmp_path: Path, mode: DiskMode
) -> None:
    library = _library(tmp_path)
    library.disks.create("seat-01", "debian", mode=mode)
    timeline = BootTimeline()
    service = IscsiService(
        settings=Settings(data_dir=tmp_path / "data", iscsi={"host": "127.0.0.1", "port": 0}),
        disks=library.disks,
        exports=plan_exports(MachineBook([SEAT]), PREFIX),
        timeline=timeline,
    )
    initiator = f"{PREFIX}:client.seat-01"
    with running(service) as (loop, port):
        assert "GOLDENGOLDEN" in _qemu_io(port, initiator, "read -v 0 12")
        _qemu_io(port, initiator, "write -P 0x5a 1M 64k")
        assert "5a 5a 5a 5a" in _qemu_io(port, initiator, "read -v 1M 16")
        # Another initiator name is refused: a machine never reaches another's disk.
        intruder = run_tool(
            [
                QEMU_IO,
                "--image-opts",
                f"driver=iscsi,transport=tcp,portal=127.0.0.1:{port},"
                f"target={PREFIX}:disk.seat-01,lun=0,initiator-name={PREFIX}:client.other",
                "-c",
                "read 0 512",
            ]
        )
        assert intruder.returncode != 0
        # The machine boots again (its firmware asks DHCP).
        boot = BootEvent(SEAT.mac, BootStage.DHCP_OFFER, 0.0, "198.18.0.170 undionly.kpxe")
        loop.call_soon_threadsafe(timeline.record, boot)
        threading.Event().wait(0.5)
        after = _qemu_io(port, initiator, "read -v 1M 16")
        if mode is DiskMode.RESET_ON_BOOT:
            assert "00 00 00 00" in after
        else:
            assert "5a 5a 5a 5a" in after
        assert "GOLDENGOLDEN" in _qemu_io(port, initiator, "read -v 0 12")
    stages = [event.stage for event in timeline.events(SEAT.mac)]
    assert stages.count(BootStage.ISCSI_FIRST_WRITE) == 1
    assert BootStage.ISCSI_LOGIN in stages
    assert BootStage.ISCSI_LOGOUT in stages
    # Closed on shutdown: the disk can be opened (locked) again.
    library.disks.open("seat-01").close()


def test_a_missing_disk_does_not_stop_the_others(tmp_path: Path) -> None:
    library = _library(tmp_path)
    service = IscsiService(
        settings=Settings(data_dir=tmp_path / "data", iscsi={"host": "127.0.0.1", "port": 0}),
        disks=library.disks,
        exports=plan_exports(MachineBook([SEAT]), PREFIX),
    )
    with running(service) as (_, port):
        assert port > 0


def _free_port_pair() -> int:
    import socket

    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no two adjacent free ports")


@pytest.mark.skipif(QEMU_IO is None, reason="qemu-io (qemu-utils) not installed")
def test_worker_processes_serve_each_disk_on_its_shard_port(tmp_path: Path) -> None:
    library = _library(tmp_path)
    machines = [
        Machine(mac=parse_mac(f"5254001800{n:02x}"), hostname=f"seat-{n:02d}") for n in range(8)
    ]
    for machine in machines:
        library.disks.create(machine.hostname, "debian", mode=DiskMode.RESET_ON_BOOT)
    base = _free_port_pair()
    settings = Settings(
        data_dir=tmp_path / "data", iscsi={"host": "127.0.0.1", "port": base, "workers": 2}
    )
    timeline = BootTimeline()
    exports = plan_exports(MachineBook(machines), PREFIX)
    service = IscsiService(
        settings=settings, disks=library.disks, exports=exports, timeline=timeline
    )
    site = BootSite(server=IPv4Address("127.0.0.1"), iscsi_port=base, iscsi_workers=2)
    ports = {site.portal_port(export.target_name) for export in exports}
    assert ports == {base, base + 1}  # eight disks land on both workers
    with running(service) as (loop, _):
        assert sorted(port for _, port in service.addresses) == [base, base + 1]
        for machine in machines:
            export = next(e for e in exports if e.mac == machine.mac)
            opts = (
                f"driver=iscsi,transport=tcp,portal=127.0.0.1:{site.portal_port(export.target_name)},"
                f"target={export.target_name},lun=0,"
                f"initiator-name={PREFIX}:client.{machine.hostname}"
            )
            run_tool_ok([QEMU_IO, "--image-opts", opts, "-c", "write -P 0x33 0 4k"])
            assert "33 33" in run_tool_ok([QEMU_IO, "--image-opts", opts, "-c", "read -v 0 4"])
            # A boot seen by the main process resets the disk in its worker.
            event = BootEvent(machine.mac, BootStage.PROXY_OFFER, 0.0, "ipxe.efi")
            loop.call_soon_threadsafe(timeline.record, event)
            threading.Event().wait(0.5)
            assert "47 4f 4c 44" in run_tool_ok(
                [QEMU_IO, "--image-opts", opts, "-c", "read -v 0 4"]
            )
        threading.Event().wait(0.3)
    stages = [event.stage for machine in machines for event in timeline.events(machine.mac)]
    assert stages.count(BootStage.ISCSI_FIRST_WRITE) == len(machines)
    assert stages.count(BootStage.ISCSI_LOGIN) == 3 * len(machines)
    library.disks.open("seat-00").close()  # the workers closed their disks on shutdown


@pytest.mark.skipif(QEMU_IO is None, reason="qemu-io (qemu-utils) not installed")
def test_reset_on_boot_disks_follow_their_assignment_at_each_boot(tmp_path: Path) -> None:
    # The super-client workflow: a prepared disk is committed as the image's next version; a
    # reset-on-boot seat that tracks the latest version boots it at its next boot, and pinning
    # the old version (a rollback of the site) takes it back at the boot after.
    library = _library(tmp_path)
    library.disks.create("super", "debian", mode=DiskMode.PERSISTENT)
    with library.disks.open("super") as prepared:
        prepared.device.write(2 * MiB, b"UPDATE-2" * 512)
        prepared.flush()
    timeline = BootTimeline()
    latest = DiskSpec("debian", None, DiskMode.RESET_ON_BOOT)
    service = IscsiService(
        settings=Settings(data_dir=tmp_path / "data", iscsi={"host": "127.0.0.1", "port": 0}),
        disks=library.disks,
        # No disk "seat-01" yet: it is created from its assignment.
        exports=plan_exports(MachineBook([SEAT]), PREFIX, {"seat-01": latest}),
        timeline=timeline,
    )
    initiator = f"{PREFIX}:client.seat-01"

    def boot(loop: asyncio.AbstractEventLoop) -> None:
        event = BootEvent(SEAT.mac, BootStage.DHCP_OFFER, 0.0, "198.18.0.170 undionly.kpxe")
        loop.call_soon_threadsafe(timeline.record, event)
        threading.Event().wait(0.5)

    with running(service) as (loop, port):
        assert library.disks.get("seat-01").version == 1
        assert "00 00 00 00" in _qemu_io(port, initiator, "read -v 2M 16")
        library.disks.commit("super")  # version 2 of debian
        assert "00 00 00 00" in _qemu_io(port, initiator, "read -v 2M 16")  # until it reboots
        boot(loop)
        assert library.disks.get("seat-01").version == 2
        assert "55 50 44 41" in _qemu_io(port, initiator, "read -v 2M 16")  # "UPDA"
        pinned = DiskSpec("debian", 1, DiskMode.RESET_ON_BOOT)
        loop.call_soon_threadsafe(
            service.apply_exports,
            plan_exports(MachineBook([SEAT]), PREFIX, {"seat-01": pinned}),
        )
        threading.Event().wait(0.3)
        # A new assignment does not pull the disk from under a running machine...
        assert "55 50 44 41" in _qemu_io(port, initiator, "read -v 2M 16")
        boot(loop)
        # ...it takes effect at its next boot.
        assert library.disks.get("seat-01").version == 1
        assert "00 00 00 00" in _qemu_io(port, initiator, "read -v 2M 16")


@pytest.mark.skipif(QEMU_IO is None, reason="qemu-io (qemu-utils) not installed")
@pytest.mark.parametrize("workers", [1, 2])
def test_an_exported_disk_is_released_for_admin_actions_unless_in_use(
    tmp_path: Path, workers: int
) -> None:
    library = _library(tmp_path)
    library.disks.create("seat-01", "debian", mode=DiskMode.PERSISTENT)
    port = _free_port_pair()
    settings = Settings(
        data_dir=tmp_path / "data", iscsi={"host": "127.0.0.1", "port": port, "workers": workers}
    )
    exports = plan_exports(MachineBook([SEAT]), PREFIX)
    service = IscsiService(settings=settings, disks=library.disks, exports=exports)
    site = BootSite(server=IPv4Address("127.0.0.1"), iscsi_port=port, iscsi_workers=workers)
    portal = f"127.0.0.1:{site.portal_port(exports[0].target_name)}"
    opts = (
        f"driver=iscsi,transport=tcp,portal={portal},target={PREFIX}:disk.seat-01,lun=0,"
        f"initiator-name={PREFIX}:client.seat-01"
    )

    async def reset_while_released() -> str:
        try:
            async with service.released("seat-01"):
                await asyncio.to_thread(library.disks.reset, "seat-01")
        except ImageBusyError as exc:
            return str(exc)
        return "reset"

    def attempt(loop: asyncio.AbstractEventLoop) -> str:
        return asyncio.run_coroutine_threadsafe(reset_while_released(), loop).result(30)

    with running(service) as (loop, _):
        run_tool_ok([QEMU_IO, "--image-opts", opts, "-c", "write -P 0x5a 1M 4k"])
        # A machine that is up holds a session: its disk is not pulled from under its OS.
        holder = subprocess.Popen(
            [QEMU_IO, "--image-opts", opts],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdin is not None
            holder.stdin.write("read 0 512\n")
            holder.stdin.flush()
            threading.Event().wait(1.0)  # logged in
            refused = attempt(loop)
            assert "in use by 1 iSCSI session" in refused
            assert f"{PREFIX}:client.seat-01" in refused
        finally:
            holder.communicate("quit\n", timeout=30)
        assert "5a 5a" in run_tool_ok([QEMU_IO, "--image-opts", opts, "-c", "read -v 1M 2"])
        # The machine is off: the action runs, and the disk is served again right after.
        assert attempt(loop) == "reset"
        assert "00 00" in run_tool_ok([QEMU_IO, "--image-opts", opts, "-c", "read -v 1M 2"])
