"""InventoryService: the live snapshot follows local commits, other servers' commits (PostgreSQL
LISTEN/NOTIFY, or polling), survives a lost listener connection, and writes activity in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from inventory_support import START, PostgresServer

from diskless.boot.events import BootEvent, BootStage
from diskless.config import Settings
from diskless.inventory import (
    Inventory,
    InventoryRecorder,
    InventorySnapshot,
    MachineSpec,
)
from diskless.inventory.endpoint import InventoryService

MAC1 = bytes.fromhex("525400180010")
MAC2 = bytes.fromhex("525400180011")
T = TypeVar("T")


def spec(mac: bytes, hostname: str) -> MachineSpec:
    return MachineSpec(mac=mac.hex(), hostname=hostname)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def running(
    service: InventoryService, scenario: Callable[[], Awaitable[T]], timeout: float = 30.0
) -> T:
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), timeout)
        return await asyncio.wait_for(scenario(), timeout)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_local_commits_refresh_the_snapshot(inventory: Inventory) -> None:
    service = InventoryService(inventory, poll_interval=0, listen=False)
    published: list[InventorySnapshot] = []
    service.subscribe(published.append)

    async def scenario() -> None:
        assert service.book().by_mac(MAC1) is None
        await asyncio.to_thread(inventory.create_machine, spec(MAC1, "seat-01"), actor="test")
        await until(lambda: service.book().by_mac(MAC1) is not None)
        # A burst of changes ends with the newest state, whatever the reloads coalesced.
        for n in range(5):
            await asyncio.to_thread(
                inventory.create_machine, spec(bytes([2, 0, 0, 0, 0, n]), f"b{n}"), actor="test"
            )
        await until(lambda: len(service.book()) == 6)

    asyncio.run(running(service, scenario))

    assert published[-1].serial == inventory.serial()
    assert len(published[0].book) == 0  # the start-up load
    assert service.snapshot.serial == inventory.serial()


def test_another_writer_is_seen(database_url: str, inventory: Inventory) -> None:
    # Another process (another boot server, or the CLI) writes through its own engine. On
    # PostgreSQL its NOTIFY arrives (polling is off); on SQLite polling the serial finds it.
    listen = inventory.database.is_postgresql
    service = InventoryService(inventory, poll_interval=0 if listen else 0.1, listen=listen)
    other = Inventory.open(database_url)

    async def scenario() -> None:
        await asyncio.to_thread(other.create_machine, spec(MAC1, "seat-01"), actor="other")
        await until(lambda: service.book().by_mac(MAC1) is not None)
        await asyncio.to_thread(other.delete_machine, MAC1, actor="other")
        await until(lambda: service.book().by_mac(MAC1) is None)

    try:
        asyncio.run(running(service, scenario))
    finally:
        other.close()
    assert service.snapshot.serial == inventory.serial()


def test_a_snapshot_given_at_start_is_served_at_once(inventory: Inventory) -> None:
    inventory.create_machine(spec(MAC1, "seat-01"), actor="test")
    snapshot = inventory.load_snapshot()
    service = InventoryService(inventory, snapshot=snapshot, poll_interval=0, listen=False)

    # Readable before the service runs: build_services can plan exports from it.
    assert service.book().by_mac(MAC1) is not None
    assert service.snapshot is snapshot


def test_recorded_activity_is_flushed_and_the_last_batch_on_stop(inventory: Inventory) -> None:
    inventory.create_machine(spec(MAC1, "seat-01"), actor="test")
    recorder = InventoryRecorder()
    service = InventoryService(
        inventory, recorder=recorder, poll_interval=0, listen=False, flush_interval=0.05
    )

    async def scenario() -> None:
        recorder(BootEvent(MAC1, BootStage.DHCP_ACK, START, "198.18.0.10 undionly.kpxe"))
        recorder(BootEvent(MAC2, BootStage.DISCOVERED, START, "dhcp", known=False))
        await until(lambda: recorder.pending() == 0)
        await until(lambda: len(inventory.boot_events(MAC1)) == 1)
        # Pending when the service stops: written on the way out.
        recorder(BootEvent(MAC1, BootStage.ISCSI_LOGIN, START + 1, "login"))
        service.flush_interval = 3600

    asyncio.run(running(service, scenario))

    assert [e.stage for e in inventory.boot_events(MAC1)] == [
        BootStage.DHCP_ACK,
        BootStage.ISCSI_LOGIN,
    ]
    assert [d.mac for d in inventory.list_discovered()] == ["52:54:00:18:00:11"]


def test_a_failing_reload_keeps_the_old_snapshot(inventory: Inventory) -> None:
    inventory.create_machine(spec(MAC1, "seat-01"), actor="test")
    service = InventoryService(
        inventory, snapshot=inventory.load_snapshot(), poll_interval=0, listen=False
    )
    service.reconnect_delay = 0.05
    real = inventory.load_snapshot
    failures = 0

    def broken() -> InventorySnapshot:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise OSError("database unreachable")
        return real()

    inventory.load_snapshot = broken  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.to_thread(inventory.create_machine, spec(MAC2, "seat-02"), actor="t")
        # The reload fails twice; meanwhile the old snapshot keeps serving.
        assert service.book().by_mac(MAC1) is not None
        await until(lambda: service.book().by_mac(MAC2) is not None)

    asyncio.run(running(service, scenario))
    assert failures == 2


def test_listener_reconnects_and_reloads_in_full(
    postgres_database: tuple[PostgresServer, str],
) -> None:
    # PostgreSQL only: the LISTEN connection is killed by the server; a change committed while
    # it is away sends a notification nobody hears, so only the full reload after reconnecting
    # can bring it in (polling is off).
    server, name = postgres_database
    url = server.url(name)
    inventory = Inventory.open(url)
    writer = Inventory.open(url)
    service = InventoryService(
        inventory, poll_interval=0, reconnect_delay=0.5, max_reconnect_delay=0.5
    )

    async def scenario() -> None:
        assert service.connects == 1
        killed = await asyncio.to_thread(server.terminate_listeners, name)
        assert killed == 1
        await asyncio.to_thread(writer.create_machine, spec(MAC1, "seat-01"), actor="other")
        await until(lambda: service.connects == 2)
        await until(lambda: service.book().by_mac(MAC1) is not None)
        # And notifications flow again on the new connection.
        await asyncio.to_thread(writer.create_machine, spec(MAC2, "seat-02"), actor="other")
        await until(lambda: service.book().by_mac(MAC2) is not None)

    try:
        asyncio.run(running(service, scenario))
    finally:
        writer.close()
        inventory.close()


def test_sqlite_never_listens(tmp_path: Path) -> None:
    inventory = Inventory.open(f"sqlite:///{tmp_path}/x.sqlite3")
    try:
        assert InventoryService(inventory).listen is False
    finally:
        inventory.close()


def test_open_from_settings_uses_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = InventoryService.open(settings)
    try:
        first.inventory.create_machine(spec(MAC1, "seat-01"), actor="test")
    finally:
        first.inventory.close()

    again = InventoryService.open(settings)  # a restart: migrations are a no-op, data stays
    try:
        assert (tmp_path / "data" / "state" / "inventory.sqlite3").is_file()
        assert again.book().by_mac(MAC1) is not None
        assert again.recorder is not None
        assert again.listen is False
    finally:
        again.inventory.close()
