"""create_qcow2 writes exactly the bytes ``qemu-img create -f qcow2`` writes.

Byte identity (not just "qemu-img check passes") is the contract: an overlay made by us and one made
by the operator with qemu-img must be interchangeable, down to where the refcount table, refcount
blocks and L1 table sit and how far the file extends.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from qcow2_oracle import (
    QEMU_IMG,
    QEMU_MISSING,
    GiB,
    MiB,
    assert_check_clean,
    first_difference,
    qemu_img_create,
    run_ok,
)

if QEMU_MISSING is not None:
    pytest.skip(QEMU_MISSING, allow_module_level=True)

from diskless.storage.errors import OutOfRangeError, StorageError
from diskless.storage.images import inspect_image
from diskless.storage.qcow2 import create_qcow2

TiB = 1024 * GiB

HEADER_FIELDS = [
    ("magic", ">4s", 0),
    ("version", ">I", 4),
    ("backing_file_offset", ">Q", 8),
    ("backing_file_size", ">I", 16),
    ("cluster_bits", ">I", 20),
    ("size", ">Q", 24),
    ("crypt_method", ">I", 32),
    ("l1_size", ">I", 36),
    ("l1_table_offset", ">Q", 40),
    ("refcount_table_offset", ">Q", 48),
    ("refcount_table_clusters", ">I", 56),
    ("nb_snapshots", ">I", 60),
    ("snapshots_offset", ">Q", 64),
    ("incompatible_features", ">Q", 72),
    ("compatible_features", ">Q", 80),
    ("autoclear_features", ">Q", 88),
    ("refcount_order", ">I", 96),
    ("header_length", ">I", 100),
]


def header_diff(ours: bytes, qemus: bytes) -> str:
    """Name the header fields that differ, for a readable failure."""
    lines = []
    for name, fmt, offset in HEADER_FIELDS:
        end = offset + struct.calcsize(fmt)
        if len(ours) < end or len(qemus) < end:
            lines.append(f"  {name}: file too short")
            continue
        a = struct.unpack_from(fmt, ours, offset)[0]
        b = struct.unpack_from(fmt, qemus, offset)[0]
        if a != b:
            lines.append(f"  {name}: ours {a!r} qemu {b!r}")
    return "\n".join(lines) or "  (header fields equal)"


def assert_identical(ours: Path, qemus: Path) -> None:
    a, b = ours.read_bytes(), qemus.read_bytes()
    problem = first_difference(a, b)
    if problem is not None:
        raise AssertionError(
            f"create_qcow2 output differs from qemu-img create: {problem}\n"
            f"file sizes: ours {len(a)} qemu {len(b)}\n{header_diff(a, b)}"
        )


STANDALONE = [
    # (size, cluster_size, extended_l2)
    (64 * MiB, 65536, False),  # qemu's default layout
    (1 * GiB, 65536, False),
    (100 * GiB, 65536, False),  # 200 L1 entries
    (2 * TiB, 65536, False),  # 4096 L1 entries: L1 spans 32 KiB
    (10 * MiB + 512, 65536, False),  # size not a multiple of the cluster
    (1_000_001, 65536, False),  # size not a multiple of 512: qemu rounds it up
    (0, 65536, False),
    (64 * MiB, 131072, True),  # our default layout
    (1 * GiB, 131072, True),
    (1 * TiB + 4096, 131072, True),
    (256 * MiB, 16384, True),  # smallest cluster extended L2 allows
    (3 * GiB, 2 * MiB, True),
    (2 * TiB, 2 * MiB, False),  # largest cluster size
    (100 * MiB + 7 * 512, 4096, False),
    (1 * TiB, 4096, False),  # 4 MiB of L1 table: 1024 clusters to count
    (1 * MiB, 512, False),
    (8 * GiB, 512, False),  # L1 needs 17 refcount blocks
]


@pytest.mark.parametrize(
    ("size", "cluster_size", "extended_l2"),
    STANDALONE,
    ids=[f"{s}-c{c}-{'ext' if e else 'std'}" for s, c, e in STANDALONE],
)
def test_standalone_matches_qemu_img(
    tmp_path: Path, size: int, cluster_size: int, extended_l2: bool
) -> None:
    ours, qemus = tmp_path / "ours.qcow2", tmp_path / "qemu.qcow2"
    create_qcow2(ours, size=size, cluster_size=cluster_size, extended_l2=extended_l2)
    qemu_img_create(qemus, size=size, cluster_size=cluster_size, extended_l2=extended_l2)
    assert_identical(ours, qemus)
    assert_check_clean(ours)
    assert_info_matches(ours)


def test_layout_needing_a_grown_refcount_table_is_refused_clearly(tmp_path: Path) -> None:
    # 64 GiB of 512-byte clusters needs 129 refcount blocks, more than one table cluster holds;
    # QEMU would move the table while creating. We refuse rather than lay it out differently.
    target = tmp_path / "huge.qcow2"
    with pytest.raises(StorageError, match=r"huge\.qcow2.*larger clusters"):
        create_qcow2(target, size=64 * GiB, cluster_size=512)
    assert not target.exists()


def make_backing(directory: Path, kind: str, size: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "raw":
        path = directory / "golden.raw"
        with path.open("wb") as f:
            f.truncate(size)
    else:
        path = directory / "golden.qcow2"
        qemu_img_create(path, size=size)
    return path


BACKED = [
    # (id, backing kind, backing size, how the backing is named, overlay size, cluster, ext)
    ("raw-abs-default", "raw", 64 * MiB, "absolute", None, 65536, False),
    ("raw-abs-ext128k", "raw", 64 * MiB, "absolute", None, 131072, True),
    ("raw-rel-sibling", "raw", 5 * MiB + 1536, "sibling", None, 131072, True),
    ("raw-rel-parent-dir", "raw", 40 * MiB, "parent", None, 65536, False),
    ("raw-odd-size", "raw", 3 * MiB + 100, "absolute", None, 65536, False),
    ("raw-bigger-overlay", "raw", 8 * MiB, "absolute", 20 * GiB, 65536, False),
    ("raw-smaller-overlay", "raw", 8 * MiB, "absolute", 2 * MiB, 131072, True),
    ("raw-c4k", "raw", 100 * MiB, "sibling", None, 4096, False),
    ("raw-c512", "raw", 30 * MiB, "sibling", None, 512, False),
    ("qcow2-abs", "qcow2", 40 * MiB, "absolute", None, 65536, False),
    ("qcow2-rel-ext", "qcow2", 1 * GiB, "sibling", None, 131072, True),
    ("qcow2-c16k-ext", "qcow2", 300 * MiB, "parent", None, 16384, True),
]


@pytest.mark.parametrize("case", BACKED, ids=[case[0] for case in BACKED])
def test_overlay_matches_qemu_img(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str, int, str, int | None, int, bool],
) -> None:
    """The backing name is stored as given; a relative one is resolved against the overlay's
    directory (not the working directory) when its size or format must be read."""
    _, kind, backing_size, naming, size, cluster_size, extended_l2 = case
    golden_dir = tmp_path / "golden" if naming == "parent" else tmp_path / "overlays"
    backing_path = make_backing(golden_dir, kind, backing_size)
    backing = {
        "absolute": str(backing_path),
        "sibling": backing_path.name,
        "parent": f"../golden/{backing_path.name}",
    }[naming]
    overlays = tmp_path / "overlays"
    overlays.mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ours, qemus = overlays / "ours.qcow2", overlays / "qemu.qcow2"
    create_qcow2(
        ours,
        size=size,
        backing=backing,
        backing_format=kind,
        cluster_size=cluster_size,
        extended_l2=extended_l2,
    )
    qemu_img_create(
        qemus,
        size=size,
        backing=backing,
        backing_format=kind,
        cluster_size=cluster_size,
        extended_l2=extended_l2,
        cwd=elsewhere,
    )
    assert_identical(ours, qemus)
    assert_check_clean(ours)
    assert os.listdir(elsewhere) == [], "nothing may be created in the working directory"
    assert_info_matches(ours)


def assert_info_matches(path: Path) -> None:
    """inspect_image agrees with ``qemu-img info --output=json``."""
    assert QEMU_IMG
    qemu = json.loads(run_ok([QEMU_IMG, "info", "--output=json", path]))
    info = inspect_image(path)
    assert info.format == "qcow2"
    assert info.virtual_size == qemu["virtual-size"]
    assert info.cluster_size == qemu["cluster-size"]
    assert info.backing_file == qemu.get("backing-filename")
    assert info.backing_format == qemu.get("backing-filename-format")
    assert info.extended_l2 == qemu["format-specific"]["data"]["extended-l2"]
    assert info.file_size == path.stat().st_size


def padded_name(path: Path, length: int) -> str:
    """``path`` spelled with ``length`` characters (leading slashes): the same file."""
    name = str(path.resolve())
    assert len(name) <= length
    return "/" * (length - len(name)) + name


@pytest.mark.parametrize(
    ("cluster_size", "name_length"),
    [(65536, 1023), (512, 200), (512, 376)],
    ids=["c64k-1023-max", "c512-200-no-feature-table", "c512-376-exact-fit"],
)
def test_long_backing_name_matches_qemu_img(
    tmp_path: Path, cluster_size: int, name_length: int
) -> None:
    """The qcow2 maximum (1023 bytes) fits a 64 KiB cluster 0; with 512-byte clusters qemu-img
    drops the feature-name table to make room, and 376 bytes is the longest name that fits."""
    backing = padded_name(make_backing(tmp_path, "raw", 4 * MiB), name_length)
    ours, qemus = tmp_path / "ours.qcow2", tmp_path / "qemu.qcow2"
    create_qcow2(ours, backing=backing, backing_format="raw", cluster_size=cluster_size)
    qemu_img_create(qemus, backing=backing, backing_format="raw", cluster_size=cluster_size)
    assert_identical(ours, qemus)


@pytest.mark.parametrize(
    ("cluster_size", "name_length"),
    [(65536, 1024), (512, 377)],
    ids=["c64k-1024-over-max", "c512-377-does-not-fit"],
)
def test_backing_name_too_long_is_refused(
    tmp_path: Path, cluster_size: int, name_length: int
) -> None:
    """qemu-img refuses these names (and leaves no file); so must we."""
    backing = padded_name(make_backing(tmp_path, "raw", 4 * MiB), name_length)
    qemus = tmp_path / "qemu.qcow2"
    with pytest.raises(AssertionError):
        qemu_img_create(qemus, backing=backing, backing_format="raw", cluster_size=cluster_size)
    assert not qemus.exists()
    ours = tmp_path / "ours.qcow2"
    with pytest.raises((StorageError, ValueError)) as info:
        create_qcow2(ours, backing=backing, backing_format="raw", cluster_size=cluster_size)
    assert not isinstance(info.value, OutOfRangeError)


def test_fresh_overlay_size_is_what_the_research_notes_say(tmp_path: Path) -> None:
    """iscsi-and-cow.md §5.1: a fresh 64 KiB-cluster overlay is 196,616 bytes = 0x30000 + 8."""
    backing = make_backing(tmp_path, "raw", 64 * MiB)
    ours = tmp_path / "ours.qcow2"
    create_qcow2(ours, backing=str(backing), backing_format="raw")
    assert ours.stat().st_size == 196_616
