"""Discovered MACs and boot events: collected in memory, written in batches, kept bounded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from typing import Any

import pytest
from inventory_support import START, Clock
from sqlalchemy import event

from diskless.boot.events import BootEvent, BootStage, BootTimeline
from diskless.inventory import (
    Inventory,
    InventoryNotFoundError,
    InventoryRecorder,
    MachineSpec,
    Retention,
    Sighting,
)

UNKNOWN = bytes.fromhex("525400aa0001")
KNOWN = bytes.fromhex("525400180010")


@contextmanager
def count_statements(inventory: Inventory) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(inventory.database.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(inventory.database.engine, "before_cursor_execute", before)


def add_known(inventory: Inventory) -> None:
    inventory.create_machine(MachineSpec(mac=KNOWN.hex(), hostname="seat-01"), actor="test")


def test_a_dhcp_storm_becomes_one_small_batch(inventory: Inventory) -> None:
    add_known(inventory)
    recorder = InventoryRecorder()
    timeline = BootTimeline()
    timeline.subscribe(recorder)
    for n in range(5000):
        at = START + n / 1000
        timeline.record(BootEvent(UNKNOWN, BootStage.DISCOVERED, at, "dhcp", known=False))
        timeline.record(
            BootEvent(UNKNOWN, BootStage.DHCP_OFFER, at, "198.18.0.77 undionly.kpxe", known=False)
        )
        timeline.record(BootEvent(KNOWN, BootStage.DHCP_OFFER, at, "198.18.0.10 undionly.kpxe"))

    with count_statements(inventory) as statements:
        batch = recorder.flush(inventory)

    # Everything folded: one sighting, the newest 32 events of the known machine.
    assert len(batch.sightings) == 1
    assert len(batch.events) == recorder.events_per_mac
    assert len(statements) < 15
    [found] = inventory.list_discovered()
    assert found.mac == "52:54:00:aa:00:01"
    assert found.count == 5000
    assert found.last_ip == IPv4Address("198.18.0.77")
    assert found.first_seen.timestamp() == pytest.approx(START)
    assert found.last_seen.timestamp() == pytest.approx(START + 4.999)
    assert recorder.pending() == 0
    assert not recorder.flush(inventory)


def test_sightings_accumulate_across_batches(inventory: Inventory) -> None:
    inventory.record_discovered(
        [Sighting(UNKNOWN, START, arch=7, vendor_class="PXEClient:Arch:00007", count=3)]
    )
    inventory.record_discovered([Sighting(UNKNOWN, START + 60, ip=IPv4Address("198.18.0.5"))])

    [found] = inventory.list_discovered()

    assert found.count == 4
    assert found.last_arch == 7  # kept: the second sighting did not know the arch
    assert found.last_vendor_class == "PXEClient:Arch:00007"
    assert found.last_ip == IPv4Address("198.18.0.5")
    assert found.first_seen.timestamp() == pytest.approx(START)
    assert found.last_seen.timestamp() == pytest.approx(START + 60)


def test_detail_words_feed_the_discovered_facts(inventory: Inventory) -> None:
    recorder = InventoryRecorder()
    recorder(
        BootEvent(
            UNKNOWN,
            BootStage.DISCOVERED,
            START,
            "dhcp arch=0x7 vendor=PXEClient:Arch:00007 ip=198.18.0.9",
            known=False,
        )
    )

    recorder.flush(inventory)

    [found] = inventory.list_discovered()
    assert (found.last_arch, found.last_vendor_class, found.last_ip) == (
        7,
        "PXEClient:Arch:00007",
        IPv4Address("198.18.0.9"),
    )


def test_known_machines_are_not_discovered(inventory: Inventory) -> None:
    add_known(inventory)

    written = inventory.record_discovered([Sighting(KNOWN, START)])

    assert written == 0
    assert inventory.list_discovered() == []


def test_the_discovered_list_is_bounded(database_url: str, clock: Clock) -> None:
    inventory = Inventory.open(database_url, clock=clock, retention=Retention(discovered_limit=3))
    try:
        for n in range(5):
            inventory.record_discovered([Sighting(bytes([0x52, 0, 0, 0, 0, n]), START + n)])

        kept = sorted(found.mac for found in inventory.list_discovered())

        assert kept == ["52:00:00:00:00:02", "52:00:00:00:00:03", "52:00:00:00:00:04"]
    finally:
        inventory.close()


def test_recorder_memory_is_bounded() -> None:
    recorder = InventoryRecorder(max_macs=10)
    for n in range(100):
        recorder.sighting(n.to_bytes(6, "big"), START)
        recorder.event(BootEvent((1000 + n).to_bytes(6, "big"), BootStage.TFTP_SENT, START))

    assert recorder.pending() == 20
    assert recorder.dropped == 180


def test_approve_a_discovered_mac(inventory: Inventory) -> None:
    inventory.record_discovered([Sighting(UNKNOWN, START)])
    serial = inventory.serial()

    approved = inventory.approve_discovered(
        "52-54-00-AA-00-01", group=None, actor="cli", image="win11"
    )

    assert approved.hostname == "pc-aa0001"
    assert approved.image == "win11"
    assert inventory.list_discovered() == []
    assert inventory.load_book().by_mac(UNKNOWN) is not None
    assert inventory.serial() == serial + 1
    assert inventory.audit_log(limit=1)[0].action == "discovered.approve"
    with pytest.raises(InventoryNotFoundError):
        inventory.approve_discovered(UNKNOWN, actor="cli")


def test_approve_names_the_bad_field(inventory: Inventory) -> None:
    inventory.record_discovered([Sighting(UNKNOWN, START)])

    with pytest.raises(ValueError, match="hostname"):
        inventory.approve_discovered(UNKNOWN, hostname="no spaces", actor="cli")

    assert len(inventory.list_discovered()) == 1


def test_forget_a_discovered_mac(inventory: Inventory) -> None:
    inventory.record_discovered([Sighting(UNKNOWN, START)])

    inventory.forget_discovered(UNKNOWN, actor="cli")

    assert inventory.list_discovered() == []
    with pytest.raises(InventoryNotFoundError):
        inventory.forget_discovered(UNKNOWN, actor="cli")


def test_boot_events_are_stored_and_update_last_seen(inventory: Inventory) -> None:
    add_known(inventory)
    events = [
        BootEvent(KNOWN, BootStage.DHCP_ACK, START + 1, "198.18.0.10 undionly.kpxe"),
        BootEvent(KNOWN, BootStage.HTTP_SCRIPT, START + 2, "sanboot"),
        BootEvent(KNOWN, BootStage.ISCSI_LOGIN, START + 3, "x" * 1000),
    ]
    serial = inventory.serial()

    assert inventory.record_boot_events(events) == 3

    stored = inventory.boot_events(KNOWN)
    assert [(e.stage, e.at) for e in stored] == [(e.stage, e.at) for e in events]
    assert len(stored[2].detail) == 255
    last_seen = inventory.get_machine(KNOWN).last_seen
    assert last_seen is not None
    assert last_seen.timestamp() == pytest.approx(START + 3)
    assert inventory.serial() == serial  # activity is not a snapshot change


def test_boot_events_keep_the_newest_per_machine(database_url: str, clock: Clock) -> None:
    inventory = Inventory.open(
        database_url, clock=clock, retention=Retention(boot_events_per_machine=5)
    )
    try:
        other = bytes.fromhex("525400180099")
        for n in range(3):
            inventory.record_boot_events(
                [
                    BootEvent(KNOWN, BootStage.TFTP_SENT, START + 4 * n + k, str(4 * n + k))
                    for k in range(4)
                ]
                + [BootEvent(other, BootStage.TFTP_SENT, START + n, "other")]
            )

        assert [e.detail for e in inventory.boot_events(KNOWN)] == ["7", "8", "9", "10", "11"]
        assert len(inventory.boot_events(other)) == 3
        assert [e.detail for e in inventory.boot_events(KNOWN, limit=2)] == ["10", "11"]
    finally:
        inventory.close()


def test_old_boot_events_are_pruned(inventory: Inventory, clock: Clock) -> None:
    inventory.record_boot_events(
        [
            BootEvent(KNOWN, BootStage.DHCP_ACK, START - 40 * 86400, "old"),
            BootEvent(KNOWN, BootStage.DHCP_ACK, START - 86400, "recent"),
        ]
    )

    assert inventory.prune_boot_events() == 1

    assert [e.detail for e in inventory.boot_events(KNOWN)] == ["recent"]
    clock.advance(30 * 86400)
    assert inventory.prune_boot_events() == 1
    assert inventory.boot_events(KNOWN) == []
