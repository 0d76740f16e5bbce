"""Machines: create, read, change, delete; validation and conflicts that name the field."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from diskless.boot.machines import LinuxTarget, LocalDiskTarget, SanbootTarget
from diskless.inventory import (
    InvalidFieldError,
    Inventory,
    InventoryConflictError,
    InventoryNotFoundError,
    MachinePatch,
    MachineSpec,
)
from diskless.inventory.model import MachineRow
from diskless.storage.disks import DiskMode

MAC1 = "52:54:00:18:00:10"
MAC2 = "52:54:00:18:00:11"


def add(inventory: Inventory, mac: str = MAC1, hostname: str = "seat-01", **fields: object) -> None:
    inventory.create_machine(
        MachineSpec.model_validate({"mac": mac, "hostname": hostname, **fields}), actor="test"
    )


def test_create_and_read_back(inventory: Inventory) -> None:
    spec = MachineSpec(
        mac="52-54-00-18-00-10",
        hostname="Seat-01",
        ip=IPv4Address("198.18.0.170"),
        image="win11",
        image_version=3,
        disk_mode=DiskMode.RESET_ON_BOOT,
        boot=LinuxTarget(kernel="debian/linux", initrd=["debian/initrd.gz"]),
        initiator_name="iqn.2026-11.org.example:seat01",
        chap_secret="0123456789abcdef",
        notes="front row",
    )

    created = inventory.create_machine(spec, actor="alice")

    assert created.mac == MAC1
    assert created.hostname == "seat-01"
    stored = inventory.get_machine(MAC1)
    assert stored == created
    assert stored.ip == IPv4Address("198.18.0.170")
    assert stored.boot == LinuxTarget(kernel="debian/linux", initrd=["debian/initrd.gz"])
    assert stored.disk_mode is DiskMode.RESET_ON_BOOT
    assert stored.image_version == 3
    assert inventory.get_machine("SEAT-01") == stored
    assert inventory.get_machine(bytes.fromhex("525400180010")) == stored
    assert [machine.mac for machine in inventory.list_machines()] == [MAC1]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mac": "52:54:00:18:00", "hostname": "ok"}, "mac"),
        ({"mac": MAC1, "hostname": "bad_name"}, "hostname"),
        ({"mac": MAC1, "hostname": "ok", "ip": "198.18.0.300"}, "ip"),
        ({"mac": MAC1, "hostname": "ok", "image": "Win 11"}, "image"),
        ({"mac": MAC1, "hostname": "ok", "image_version": 0}, "image_version"),
        ({"mac": MAC1, "hostname": "ok", "disk_mode": "sometimes"}, "disk_mode"),
        ({"mac": MAC1, "hostname": "ok", "boot": {"kind": "floppy"}}, "boot"),
        ({"mac": MAC1, "hostname": "ok", "chap_secret": "short"}, "chap_secret"),
        ({"mac": MAC1, "hostname": "ok", "initiator_name": "not an iqn"}, "initiator_name"),
        ({"mac": MAC1, "hostname": "ok", "colour": "red"}, "colour"),
    ],
)
def test_invalid_spec_names_the_field(
    inventory: Inventory, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        MachineSpec.model_validate(fields)

    assert caught.value.errors()[0]["loc"][0] == field
    assert inventory.list_machines() == []


@pytest.mark.parametrize(
    ("second", "field"),
    [
        ({"mac": MAC1, "hostname": "other"}, "mac"),
        ({"mac": MAC2, "hostname": "SEAT-01"}, "hostname"),
        ({"mac": MAC2, "hostname": "other", "ip": "198.18.0.170"}, "ip"),
        (
            {"mac": MAC2, "hostname": "other", "initiator_name": "iqn.2026-11.org.x:one"},
            "initiator_name",
        ),
    ],
)
def test_unique_values_conflict_naming_the_field(
    inventory: Inventory, second: dict[str, object], field: str
) -> None:
    add(inventory, ip="198.18.0.170", initiator_name="iqn.2026-11.org.x:one")
    serial = inventory.serial()

    with pytest.raises(InventoryConflictError) as caught:
        inventory.create_machine(MachineSpec.model_validate(second), actor="test")

    assert caught.value.field == field
    assert MAC1 in str(caught.value)
    assert len(inventory.list_machines()) == 1
    assert inventory.serial() == serial


def test_unknown_group_is_an_invalid_field(inventory: Inventory) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        add(inventory, group="nowhere")

    assert caught.value.field == "group"


def test_patch_changes_only_given_fields_and_null_clears(inventory: Inventory) -> None:
    add(inventory, ip="198.18.0.170", notes="keep me", image="win11", image_version=2)

    updated = inventory.update_machine(
        MAC1, MachinePatch.model_validate({"ip": None, "image_version": 4}), actor="test"
    )

    assert updated.ip is None
    assert updated.image_version == 4
    assert updated.image == "win11"
    assert updated.notes == "keep me"


def test_required_fields_cannot_be_cleared(inventory: Inventory) -> None:
    add(inventory)

    with pytest.raises(InvalidFieldError) as caught:
        inventory.update_machine(
            MAC1, MachinePatch.model_validate({"hostname": None}), actor="test"
        )

    assert caught.value.field == "hostname"


def test_a_version_needs_an_image(inventory: Inventory) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        add(inventory, image_version=3)

    assert caught.value.field == "image_version"


def test_rename_and_move_to_another_mac(inventory: Inventory) -> None:
    add(inventory)
    add(inventory, MAC2, "seat-02")

    with pytest.raises(InventoryConflictError) as caught:
        inventory.update_machine(MAC1, MachinePatch(hostname="seat-02"), actor="test")
    assert caught.value.field == "hostname"

    moved = inventory.update_machine(
        "seat-01", MachinePatch(mac="52:54:00:18:00:99", hostname="seat-99"), actor="test"
    )

    assert moved.mac == "52:54:00:18:00:99"
    with pytest.raises(InventoryNotFoundError):
        inventory.get_machine(MAC1)


def test_every_change_bumps_the_serial_and_a_no_op_does_not(inventory: Inventory) -> None:
    seen: list[int] = []
    inventory.subscribe(seen.append)
    start = inventory.serial()

    add(inventory)
    inventory.set_boot(MAC1, LocalDiskTarget(), actor="test")
    inventory.set_boot(MAC1, LocalDiskTarget(), actor="test")  # unchanged: no bump
    inventory.delete_machine(MAC1, actor="test")

    assert seen == [start + 1, start + 2, start + 3]
    assert inventory.serial() == start + 3


def test_set_image_mode_boot_and_next_boot_once(inventory: Inventory) -> None:
    add(inventory)

    inventory.set_image(MAC1, "win11", 5, "reset-on-boot", actor="test")
    inventory.set_disk_mode(MAC1, "persistent", actor="test")
    inventory.set_boot(MAC1, {"kind": "local"}, actor="test")
    record = inventory.set_next_boot_once(
        MAC1, SanbootTarget(disk="installer", keep_san=True), actor="test"
    )

    assert (record.image, record.image_version, record.disk_mode) == (
        "win11",
        5,
        DiskMode.PERSISTENT,
    )
    assert record.boot == LocalDiskTarget()
    assert record.next_boot_once == SanbootTarget(disk="installer", keep_san=True)
    machine = inventory.load_book().by_mac(bytes.fromhex("525400180010"))
    assert machine is not None
    assert machine.next_boot_once == SanbootTarget(disk="installer", keep_san=True)


def test_invalid_boot_target_through_the_setter_names_the_field(inventory: Inventory) -> None:
    add(inventory)

    with pytest.raises(InvalidFieldError) as caught:
        inventory.set_boot(MAC1, {"kind": "linux"}, actor="test")  # kernel missing

    assert caught.value.field.startswith("boot")
    assert "kernel" in caught.value.field


def test_next_boot_once_is_consumed_once(inventory: Inventory) -> None:
    add(inventory)
    inventory.set_next_boot_once(MAC1, LocalDiskTarget(), actor="test")
    mac = bytes.fromhex("525400180010")
    serial = inventory.serial()

    assert inventory.consume_next_boot_once(mac) == LocalDiskTarget()
    assert inventory.consume_next_boot_once(mac) is None
    assert inventory.get_machine(MAC1).next_boot_once is None
    assert inventory.serial() == serial + 1
    machine = inventory.load_book().by_mac(mac)
    assert machine is not None
    assert machine.next_boot_once is None
    assert inventory.audit_log(limit=1)[0].action == "machine.consume-next-boot"


def test_delete_and_not_found(inventory: Inventory) -> None:
    add(inventory)

    deleted = inventory.delete_machine("seat-01", actor="test")

    assert deleted.mac == MAC1
    with pytest.raises(InventoryNotFoundError):
        inventory.delete_machine("seat-01", actor="test")
    with pytest.raises(InventoryNotFoundError):
        inventory.get_machine(MAC1)


def test_audit_log_records_who_what_before_after_without_secrets(inventory: Inventory) -> None:
    add(inventory, chap_secret="0123456789abcdef")
    inventory.update_machine(MAC1, MachinePatch(notes="moved"), actor="token:ops")
    inventory.delete_machine(MAC1, actor="cli")

    entries = inventory.audit_log()

    assert [(entry.actor, entry.action) for entry in entries] == [
        ("cli", "machine.delete"),
        ("token:ops", "machine.update"),
        ("test", "machine.create"),
    ]
    update = entries[1]
    assert update.target == MAC1
    assert update.before is not None
    assert update.after is not None
    assert (update.before["notes"], update.after["notes"]) == ("", "moved")
    assert update.after["chap_secret"] == "********"
    assert entries[0].after is None
    assert "0123456789abcdef" not in repr(entries)
    assert [entry.action for entry in inventory.audit_log(target=MAC1, limit=1)] == [
        "machine.delete"
    ]


def test_times_are_utc_and_from_the_clock(inventory: Inventory) -> None:
    add(inventory)

    record = inventory.get_machine(MAC1)

    assert record.created.timestamp() == pytest.approx(1_800_000_000.0)
    assert record.created.utcoffset() is not None
    assert record.created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    with inventory.database.read() as session:
        assert session.scalars(select(MachineRow.mac)).all() == [MAC1]
