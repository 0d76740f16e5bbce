"""Importing machines: the TOML machines file (for boot.machines_file users) and CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskless.boot.machines import LinuxTarget, SanbootTarget
from diskless.errors import ConfigError
from diskless.inventory import InvalidFieldError, Inventory, InventoryConflictError, MachineSpec
from diskless.storage.disks import DiskMode

MACHINES_TOML = """
[[machine]]
mac = "52:54:00:18:00:10"
hostname = "seat-01"
ip = "198.18.0.170"
group = "classroom"
boot = { kind = "sanboot" }
chap_secret = "0123456789abcdef"

[[machine]]
mac = "52:54:00:18:00:11"
hostname = "installer"
boot.kind = "linux"
boot.kernel = "debian/linux"
boot.initrd = ["debian/initrd.gz"]
boot.cmdline = "auto=true priority=critical"
"""

CSV = """mac,hostname,ip,group,image,version,mode,boot,notes
52:54:00:18:01:01,pc-101,198.18.1.101,lab,win11,3,reset-on-boot,,row 1
52-54-00-18-01-02,PC-102,,lab,,,,local,
525400180103,pc-103,,,ubuntu,,,"{""kind"": ""linux"", ""kernel"": ""ubuntu/vmlinuz""}",

"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_import_the_machines_file(inventory: Inventory, tmp_path: Path) -> None:
    result = inventory.import_machines_file(write(tmp_path, "m.toml", MACHINES_TOML), actor="cli")

    assert result.created == ["52:54:00:18:00:10", "52:54:00:18:00:11"]
    assert result.groups_created == ["classroom"]
    book = inventory.load_book()
    seat = book.by_hostname("seat-01")
    assert seat is not None
    assert seat.boot == SanbootTarget()
    assert seat.chap_secret == "0123456789abcdef"
    assert str(seat.ip) == "198.18.0.170"
    installer = book.by_hostname("installer")
    assert installer is not None
    assert installer.boot == LinuxTarget(
        kernel="debian/linux", initrd=["debian/initrd.gz"], cmdline="auto=true priority=critical"
    )
    assert [group.name for group in inventory.list_groups()] == ["classroom"]


def test_import_conflicts_error_skip_or_update(inventory: Inventory, tmp_path: Path) -> None:
    path = write(tmp_path, "m.toml", MACHINES_TOML)
    inventory.import_machines_file(path, actor="cli")
    changed = write(tmp_path, "m2.toml", MACHINES_TOML.replace("198.18.0.170", "198.18.0.171"))
    serial = inventory.serial()

    with pytest.raises(InventoryConflictError) as caught:
        inventory.import_machines_file(changed, actor="cli")
    assert caught.value.field == "[0].mac"
    assert inventory.serial() == serial

    skipped = inventory.import_machines_file(changed, actor="cli", on_conflict="skip")
    assert skipped.skipped == ["52:54:00:18:00:10", "52:54:00:18:00:11"]
    assert inventory.serial() == serial

    updated = inventory.import_machines_file(changed, actor="cli", on_conflict="update")
    assert updated.updated == ["52:54:00:18:00:10", "52:54:00:18:00:11"]
    assert str(inventory.get_machine("seat-01").ip) == "198.18.0.171"


def test_a_bad_machines_file_names_the_entry(inventory: Inventory, tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", '[[machine]]\nmac = "nope"\nhostname = "x"\n')

    with pytest.raises(ConfigError, match=r"machine\.0\.mac"):
        inventory.import_machines_file(path, actor="cli")

    assert inventory.list_machines() == []


def test_import_csv(inventory: Inventory, tmp_path: Path) -> None:
    result = inventory.import_csv(write(tmp_path, "m.csv", CSV), actor="cli")

    assert result.created == ["52:54:00:18:01:01", "52:54:00:18:01:02", "52:54:00:18:01:03"]
    first = inventory.get_machine("pc-101")
    assert (first.image, first.image_version, first.disk_mode, first.notes) == (
        "win11",
        3,
        DiskMode.RESET_ON_BOOT,
        "row 1",
    )
    assert first.group == "lab"
    assert inventory.get_machine("pc-102").boot is not None
    assert inventory.get_machine("pc-103").boot == LinuxTarget(kernel="ubuntu/vmlinuz")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("mac,hostname\n52:54:00:18:01:01,pc-1\n52:54:00:18:01:0g,pc-2\n", "line 3.mac"),
        ("mac,hostname,version\n52:54:00:18:01:01,pc-1,zero\n", "line 2.version"),
        ("mac,hostname,mode\n52:54:00:18:01:01,pc-1,weekly\n", "line 2.mode"),
        ("mac,hostname,boot\n52:54:00:18:01:01,pc-1,{broken\n", "line 2.boot"),
        ("mac,hostname,colour\n52:54:00:18:01:01,pc-1,red\n", "line 1.colour"),
        ("mac,ip\n52:54:00:18:01:01,198.18.0.1\n", "line 1.hostname"),
    ],
)
def test_csv_errors_name_line_and_column(
    inventory: Inventory, tmp_path: Path, text: str, field: str
) -> None:
    path = write(tmp_path, "bad.csv", text)

    with pytest.raises(InvalidFieldError) as caught:
        inventory.import_csv(path, actor="cli")

    assert caught.value.field == f"{path}: {field}"
    assert inventory.list_machines() == []


def test_an_import_is_all_or_nothing(inventory: Inventory) -> None:
    inventory.create_machine(MachineSpec(mac="52:54:00:00:00:09", hostname="taken"), actor="t")
    specs = [
        MachineSpec(mac="52:54:00:00:00:01", hostname="fresh", group="new-group"),
        MachineSpec(mac="52:54:00:00:00:02", hostname="taken"),
    ]

    with pytest.raises(InventoryConflictError) as caught:
        inventory.import_machines(specs, actor="cli")

    assert caught.value.field == "[1].hostname"
    assert [m.hostname for m in inventory.list_machines()] == ["taken"]
    assert inventory.list_groups() == []


def test_duplicate_macs_in_one_import(inventory: Inventory) -> None:
    spec = MachineSpec(mac="52:54:00:00:00:01", hostname="a")

    with pytest.raises(InvalidFieldError) as caught:
        inventory.import_machines([spec, spec.model_copy(update={"hostname": "b"})], actor="t")

    assert caught.value.field == "[1].mac"
