"""The golden disk, inspected from the host without booting it (root: extlinux needs a mount)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import golden
import pytest
from bootlab import require_e2e

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def image() -> Path:
    require_e2e()
    return golden.golden_image()


def test_partition_table_and_boot_code(image: Path) -> None:
    assert image.stat().st_size == 128 << 20
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, check=True).stdout
    )["partitiontable"]
    assert table["label"] == "dos"
    assert table["id"] == golden.DISK_ID
    p1, p2 = table["partitions"]
    assert (p1["start"], p1["size"], p1["type"], p1.get("bootable")) == (2048, 194560, "83", True)
    assert (p2["start"], p2["size"], p2["type"], p2.get("bootable")) == (196608, 65536, "ef", None)
    with image.open("rb") as disk:
        assert disk.read(440) == golden.MBR_BIN.read_bytes()[:440]


def test_root_partition_holds_loader_kernel_and_seed_marker(image: Path) -> None:
    label = subprocess.run(
        ["dumpe2fs", "-h", f"{image}?offset={golden.P1_OFFSET}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Filesystem volume name:   labroot" in label
    assert "metadata_csum" not in label
    assert " 64bit" not in label
    assert golden.read_root_file(image, "/marker").startswith("boot-count=0 writer=build built=")
    config = golden.read_root_file(image, "/boot/extlinux/extlinux.conf")
    assert "APPEND console=ttyS0,115200 panic=10 lab.label=labroot" in config
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /boot/extlinux", f"{image}?offset={golden.P1_OFFSET}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ldlinux.sys" in listing
    assert "ldlinux.c32" in listing
    kernel = golden.read_root_file_bytes(image, "/boot/vmlinuz")
    version = golden.default_kernel_version()
    assert kernel == Path(f"/boot/vmlinuz-{version}").read_bytes()


def test_esp_holds_standalone_grub(image: Path) -> None:
    listing = subprocess.run(
        ["mdir", "-b", "-i", f"{image}@@{golden.P2_OFFSET}", "::/EFI/BOOT"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing.upper()
    label = subprocess.run(
        ["mlabel", "-s", "-i", f"{image}@@{golden.P2_OFFSET}", "::"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    assert "LABESP" in label


def test_initramfs_has_init_iscsistart_and_modules_in_order(image: Path, tmp_path: Path) -> None:
    archive = gzip.decompress(golden.read_root_file_bytes(image, "/boot/initrd.img"))
    subprocess.run(["cpio", "-idm", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "init").stat().st_mode & 0o111
    assert (tmp_path / "bin/busybox").exists()
    assert (tmp_path / golden.ISCSISTART.relative_to("/")).exists()
    assert (tmp_path / "etc/iscsi/iscsid.conf").read_text() == ""
    order = (tmp_path / "etc/modules.order").read_text().split()
    names = [golden._module_name(line.lstrip("?")) for line in order]
    for path in order:
        assert (tmp_path / path.lstrip("?").lstrip("/")).exists(), path
    assert len(names) == len(set(names))
    optional = {name for name, line in zip(names, order, strict=True) if line.startswith("?")}
    assert optional == {"crc32c_intel", "crct10dif_pclmul"}
    for before, after in [
        ("virtio_ring", "virtio_net"),
        ("crc32c_generic", "ext4"),
        ("jbd2", "ext4"),
        ("crct10dif_generic", "t10_pi"),
        ("crc64_rocksoft_generic", "sd_mod"),
        ("scsi_mod", "sd_mod"),
        ("libiscsi_tcp", "iscsi_tcp"),
        ("iscsi_boot_sysfs", "iscsi_ibft"),
    ]:
        assert names.index(before) < names.index(after), (before, after)
    assert names[-1] == "iscsi_ibft"


def test_the_image_is_cached_by_its_inputs(image: Path) -> None:
    inode = image.stat().st_ino  # a rebuild renames a new file into place
    assert golden.golden_image() == image
    assert image.stat().st_ino == inode
    inputs = golden.GoldenInputs(golden.default_kernel_version())
    assert inputs.key() in image.name
