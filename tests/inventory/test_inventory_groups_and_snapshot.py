"""Groups and the snapshot: machines inherit what they leave unset, and override what they set."""

from __future__ import annotations

import pytest

from diskless.boot.machines import LinuxTarget, LocalDiskTarget, MenuItem, MenuTarget, SanbootTarget
from diskless.inventory import (
    DiskAssignment,
    GroupPatch,
    GroupSpec,
    InvalidFieldError,
    Inventory,
    InventoryConflictError,
    InventoryNotFoundError,
    MachinePatch,
    MachineSpec,
)
from diskless.inventory.model import MachineRow
from diskless.storage.disks import DiskMode

MAC1 = bytes.fromhex("525400180010")
MAC2 = bytes.fromhex("525400180011")


def classroom(inventory: Inventory, **fields: object) -> None:
    values: dict[str, object] = {
        "name": "classroom",
        "image": "win11",
        "image_version": 7,
        "disk_mode": "reset-on-boot",
        "boot": {"kind": "local"},
        **fields,
    }
    inventory.create_group(GroupSpec.model_validate(values), actor="test")


def machine(inventory: Inventory, mac: bytes, hostname: str, **fields: object) -> None:
    inventory.create_machine(
        MachineSpec.model_validate({"mac": mac, "hostname": hostname, **fields}), actor="test"
    )


def test_a_machine_inherits_its_groups_settings(inventory: Inventory) -> None:
    classroom(inventory)
    machine(inventory, MAC1, "seat-01", group="classroom")

    snapshot = inventory.load_snapshot()

    resolved = snapshot.book.by_mac(MAC1)
    assert resolved is not None
    assert resolved.boot == LocalDiskTarget()
    assert resolved.group == "classroom"
    assert snapshot.disks[MAC1] == DiskAssignment("seat-01", "win11", 7, DiskMode.RESET_ON_BOOT)


def test_machine_fields_override_the_group(inventory: Inventory) -> None:
    classroom(inventory)
    machine(
        inventory,
        MAC1,
        "teacher",
        group="classroom",
        boot={"kind": "sanboot", "disk": "teacher-disk"},
        disk_mode="persistent",
        image="win11",
        image_version=8,
    )
    machine(inventory, MAC2, "lab", group="classroom", image="ubuntu")

    snapshot = inventory.load_snapshot()

    teacher = snapshot.book.by_mac(MAC1)
    assert teacher is not None
    assert teacher.boot == SanbootTarget(disk="teacher-disk")
    assert snapshot.disks[MAC1] == DiskAssignment("teacher-disk", "win11", 8, DiskMode.PERSISTENT)
    # Another image than the group's: the group's pinned version does not apply to it.
    assert snapshot.disks[MAC2] == DiskAssignment("lab", "ubuntu", None, DiskMode.RESET_ON_BOOT)


def test_machine_pins_a_version_of_the_groups_image(inventory: Inventory) -> None:
    classroom(inventory)
    machine(inventory, MAC1, "seat-01", group="classroom", image_version=6)

    assert inventory.load_snapshot().disks[MAC1].version == 6


def test_defaults_without_a_group(inventory: Inventory) -> None:
    machine(inventory, MAC1, "seat-01")

    snapshot = inventory.load_snapshot()

    resolved = snapshot.book.by_mac(MAC1)
    assert resolved is not None
    assert resolved.boot == SanbootTarget()
    assert resolved.chap_secret is None
    assert MAC1 not in snapshot.disks  # no image: nothing for the storage side to create


def test_menu_disk_name_comes_from_its_sanboot_item(inventory: Inventory) -> None:
    menu = MenuTarget(
        items=[
            MenuItem(label="Linux", target=LinuxTarget(kernel="k")),
            MenuItem(label="Windows", target=SanbootTarget(disk="win-seat")),
        ]
    )
    machine(inventory, MAC1, "seat-01", image="win11", boot=menu.model_dump())

    assert inventory.load_snapshot().disks[MAC1].disk == "win-seat"


def test_required_chap_derives_a_stable_secret_per_machine(inventory: Inventory) -> None:
    classroom(inventory, chap_policy="required")
    machine(inventory, MAC1, "seat-01", group="classroom")
    machine(inventory, MAC2, "seat-02", group="classroom")
    machine(
        inventory,
        bytes.fromhex("525400180012"),
        "own",
        group="classroom",
        chap_secret="my-own-secret-1",
    )

    first = inventory.load_snapshot().book
    second = inventory.load_snapshot().book

    one, two = first.by_mac(MAC1), first.by_mac(MAC2)
    assert one is not None
    assert two is not None
    assert one.chap_secret is not None
    assert len(one.chap_secret) == 16
    assert one.chap_secret != two.chap_secret
    again = second.by_mac(MAC1)
    assert again is not None
    assert again.chap_secret == one.chap_secret
    own = first.by_hostname("own")
    assert own is not None
    assert own.chap_secret == "my-own-secret-1"


def test_group_changes_reach_members_in_the_next_snapshot(inventory: Inventory) -> None:
    classroom(inventory)
    machine(inventory, MAC1, "seat-01", group="classroom")
    before = inventory.load_snapshot()

    inventory.update_group(
        "classroom", GroupPatch.model_validate({"boot": {"kind": "netbootxyz"}}), actor="test"
    )
    after = inventory.load_snapshot()

    assert after.serial > before.serial
    resolved = after.book.by_mac(MAC1)
    assert resolved is not None
    assert resolved.boot.kind == "netbootxyz"


def test_clearing_a_machine_field_falls_back_to_the_group(inventory: Inventory) -> None:
    classroom(inventory)
    machine(inventory, MAC1, "seat-01", group="classroom", boot={"kind": "sanboot"})

    inventory.update_machine(MAC1, MachinePatch.model_validate({"boot": None}), actor="test")

    resolved = inventory.load_snapshot().book.by_mac(MAC1)
    assert resolved is not None
    assert resolved.boot == LocalDiskTarget()


def test_groups_crud(inventory: Inventory) -> None:
    classroom(inventory, description="room 12")
    machine(inventory, MAC1, "seat-01", group="classroom")

    assert [group.name for group in inventory.list_groups()] == ["classroom"]
    assert inventory.get_group("classroom").members == 1
    with pytest.raises(InventoryConflictError) as caught:
        classroom(inventory)
    assert caught.value.field == "name"

    renamed = inventory.update_group("classroom", GroupPatch(name="room-12"), actor="test")

    assert renamed.name == "room-12"
    assert inventory.get_machine(MAC1).group == "room-12"
    with pytest.raises(InventoryConflictError) as in_use:
        inventory.delete_group("room-12", actor="test")
    assert in_use.value.field == "group"

    inventory.update_machine(MAC1, MachinePatch.model_validate({"group": None}), actor="test")
    inventory.delete_group("room-12", actor="test")

    assert inventory.list_groups() == []
    with pytest.raises(InventoryNotFoundError):
        inventory.get_group("room-12")


def test_group_name_cannot_be_cleared(inventory: Inventory) -> None:
    classroom(inventory)

    with pytest.raises(InvalidFieldError) as caught:
        inventory.update_group("classroom", GroupPatch.model_validate({"name": None}), actor="t")

    assert caught.value.field == "name"


def test_a_broken_record_is_left_out_and_reported(inventory: Inventory) -> None:
    machine(inventory, MAC1, "seat-01")
    machine(inventory, MAC2, "seat-02")
    with inventory.database.write() as session:
        row = session.query(MachineRow).filter_by(hostname="seat-02").one()
        row.boot = {"kind": "from-the-future"}

    snapshot = inventory.load_snapshot()

    assert [m.hostname for m in snapshot.book] == ["seat-01"]
    assert len(snapshot.problems) == 1
    assert "52:54:00:18:00:11" in snapshot.problems[0]


def test_settings_reach_the_snapshot(inventory: Inventory) -> None:
    serial = inventory.serial()

    inventory.set_setting("boot.menu_title", "Room 12", actor="test")

    snapshot = inventory.load_snapshot()
    assert snapshot.settings == {"boot.menu_title": "Room 12"}
    assert snapshot.serial == serial + 1
    inventory.set_setting("boot.menu_title", None, actor="test")
    assert inventory.settings() == {}
    with pytest.raises(InvalidFieldError) as caught:
        inventory.set_setting("Bad Key", 1, actor="test")
    assert caught.value.field == "key"
