"""Per-machine disks: create, serve, reset, rollback, commit, delete, locking and crash safety.

qemu-img is the oracle: it must read our overlays (relative raw backing), and ``qemu-img compare``
must find a committed blob identical to the overlay it was flattened from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diskless.errors import ConflictError, NotFoundError
from diskless.storage.catalog import ImageVersion, InvalidNameError
from diskless.storage.disks import DiskMode
from diskless.storage.errors import ImageBusyError
from diskless.storage.library import ImageLibrary

KiB = 1 << 10
MiB = 1 << 20
# Not a multiple of any cluster size or of the 4 MiB flatten step: the last cluster is partial.
GOLDEN_SIZE = 6 * MiB + 1536

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_library(
    data_dir: Path, *, cluster_size: int = 64 * KiB, extended_l2: bool = True
) -> ImageLibrary:
    return ImageLibrary(data_dir, cluster_size=cluster_size, extended_l2=extended_l2)


def add_golden(
    lib: ImageLibrary, name: str, chunks: dict[int, bytes], size: int = GOLDEN_SIZE
) -> ImageVersion:
    """A golden version with ``chunks`` at their offsets and zeros elsewhere (no qemu-img)."""
    raw = lib.data_dir.parent / f"{name}-{len(chunks)}-{size}.src"
    with raw.open("wb") as file:
        file.truncate(size)
        for offset, data in chunks.items():
            file.seek(offset)
            file.write(data)
    digest = lib.store.add(raw)
    with lib.catalog.locked():
        return lib.catalog.add_version(name, digest=digest, size=size, source=str(raw))


GOLDEN_CHUNKS = {
    0: b"\xaa" * MiB,
    3 * MiB + 5 * KiB: b"golden" * 1000,
    GOLDEN_SIZE - 512: b"\xee" * 512,
}


@pytest.fixture
def lib(tmp_path: Path) -> ImageLibrary:
    return make_library(tmp_path / "data")


@pytest.fixture
def v1(lib: ImageLibrary) -> ImageVersion:
    return add_golden(lib, "win11", GOLDEN_CHUNKS)


def read_disk(lib: ImageLibrary, name: str, offset: int, length: int) -> bytes:
    with lib.disks.open(name, read_only=True) as disk:
        return disk.read(offset, length)


def write_disk(lib: ImageLibrary, name: str, writes: dict[int, bytes]) -> None:
    with lib.disks.open(name) as disk:
        for offset, data in writes.items():
            disk.write(offset, data)
        disk.flush()


CLIENT_WRITES = {
    4 * KiB: b"\x11" * 4 * KiB,  # inside the golden's first MiB: COW of a subcluster
    2 * MiB - 512: b"\x22" * 8 * KiB,  # crosses a cluster boundary over a golden hole
    GOLDEN_SIZE - 1024: b"\x33" * 1024,  # the partial last cluster
}


def test_create_writes_a_relocatable_qemu_readable_overlay(
    lib: ImageLibrary, v1: ImageVersion, tmp_path: Path
) -> None:
    record = lib.disks.create("pc01", "win11")

    assert (record.image, record.version, record.digest) == ("win11", 1, v1.digest)
    assert record.mode is DiskMode.PERSISTENT
    directory = lib.disks.directory("pc01")
    assert sorted(p.name for p in directory.iterdir()) == ["disk.json", "lock", record.overlay]
    info = json.loads(qemu_img("info", "--output=json", str(directory / record.overlay)).stdout)
    assert info["backing-filename"] == f"../../images/blobs/sha256/{v1.digest.hex}.raw"
    assert info["backing-filename-format"] == "raw"
    assert info["cluster-size"] == 64 * KiB
    assert info["format-specific"]["data"]["extended-l2"] is True
    assert info["virtual-size"] == GOLDEN_SIZE

    # Moving the whole data directory keeps every disk working (relative backing path).
    moved = tmp_path / "elsewhere"
    lib.data_dir.rename(moved)
    relocated = make_library(moved)
    assert read_disk(relocated, "pc01", 0, 16) == b"\xaa" * 16
    assert (
        qemu_img(
            "compare",
            "-U",
            str(moved / "disks/pc01" / record.overlay),
            str(relocated.store.path(v1.digest)),
        ).returncode
        == 0
    )


def test_create_refuses_duplicates_unknown_images_and_bad_names(
    lib: ImageLibrary, v1: ImageVersion
) -> None:
    lib.disks.create("pc01", "win11", 1, mode=DiskMode.RESET_ON_BOOT)
    with pytest.raises(ConflictError, match="'pc01' already exists"):
        lib.disks.create("pc01", "win11")
    with pytest.raises(NotFoundError, match="'nope' does not exist"):
        lib.disks.create("pc02", "nope")
    with pytest.raises(NotFoundError, match="no version 9"):
        lib.disks.create("pc02", "win11", 9)
    with pytest.raises(InvalidNameError, match="disk name"):
        lib.disks.create("../pc", "win11")
    assert lib.disks.names() == ["pc01"]
    assert [p.name for p in lib.disks.root.iterdir()] == ["pc01"]


def test_writes_info_reset_and_golden_untouched(lib: ImageLibrary, v1: ImageVersion) -> None:
    golden = lib.store.path(v1.digest)
    golden_sha = sha256_file(golden)
    lib.disks.create("pc01", "win11")
    empty = lib.disks.info("pc01").allocated_bytes

    write_disk(lib, "pc01", CLIENT_WRITES)

    info = lib.disks.info("pc01")
    assert info.virtual_size == GOLDEN_SIZE
    assert info.allocated_bytes > empty
    for offset, data in CLIENT_WRITES.items():
        assert read_disk(lib, "pc01", offset, len(data)) == data
    assert read_disk(lib, "pc01", 0, 4 * KiB) == b"\xaa" * 4 * KiB
    assert qemu_img("check", str(info.overlay_path)).returncode == 0

    lib.disks.reset("pc01")

    assert lib.disks.info("pc01").allocated_bytes == empty
    for offset, data in CLIENT_WRITES.items():
        assert read_disk(lib, "pc01", offset, len(data)) == bytes(
            golden.read_bytes()[offset : offset + len(data)]
        )
    assert sha256_file(golden) == golden_sha == v1.digest.hex


def test_a_served_disk_refuses_every_change(lib: ImageLibrary, v1: ImageVersion) -> None:
    lib.disks.create("pc01", "win11")
    with lib.disks.open("pc01") as disk:
        for operation in (
            lambda: lib.disks.reset("pc01"),
            lambda: lib.disks.delete("pc01"),
            lambda: lib.disks.set_mode("pc01", DiskMode.RESET_ON_BOOT),
            lambda: lib.disks.rollback("pc01", 1),
            lambda: lib.disks.commit("pc01"),
            lambda: lib.disks.open("pc01"),
        ):
            with pytest.raises(ImageBusyError, match="disk 'pc01' is in use"):
                operation()
        disk.write(0, b"still mine")
        # Reading the record and host usage needs no lock.
        assert lib.disks.info("pc01").record.name == "pc01"
    lib.disks.reset("pc01")


def test_reset_on_boot_discards_writes_at_every_boot(lib: ImageLibrary, v1: ImageVersion) -> None:
    lib.disks.create("cafe", "win11", mode=DiskMode.RESET_ON_BOOT)
    lib.disks.create("home", "win11")
    for name in ("cafe", "home"):
        with lib.disks.open(name, boot=True) as disk:
            disk.write(0, b"session 1")
            disk.flush()

    with lib.disks.open("cafe", boot=True) as disk:
        assert disk.read(0, 9) == b"\xaa" * 9
    with lib.disks.open("home", boot=True) as disk:
        assert disk.read(0, 9) == b"session 1"

    lib.disks.set_mode("home", DiskMode.RESET_ON_BOOT)
    with lib.disks.open("home", boot=True) as disk:
        assert disk.read(0, 9) == b"\xaa" * 9


@pytest.mark.parametrize(("cluster_size", "extended_l2"), [(64 * KiB, False), (128 * KiB, True)])
def test_commit_makes_a_new_version_equal_to_the_overlay(
    tmp_path: Path, cluster_size: int, extended_l2: bool
) -> None:
    lib = make_library(tmp_path / "data", cluster_size=cluster_size, extended_l2=extended_l2)
    v1 = add_golden(lib, "win11", GOLDEN_CHUNKS)
    golden_sha = sha256_file(lib.store.path(v1.digest))
    lib.disks.create("super", "win11")
    write_disk(lib, "super", CLIENT_WRITES)
    with lib.disks.open("super") as disk:
        disk.write_zeroes(512 * KiB, 256 * KiB)  # zeroing golden data must be committed too
        disk.flush()
    overlay = lib.disks.info("super").overlay_path

    result = lib.disks.commit("super", note="office installed", keep_overlay=True)

    v2 = result.version
    blob = lib.store.path(v2.digest)
    assert (v2.image, v2.version, v2.parent_image, v2.parent_version) == ("win11", 2, "win11", 1)
    assert v2.source == "commit of disk super"
    assert v2.note == "office installed"
    assert v2.size == GOLDEN_SIZE
    compare = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(overlay), str(blob))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert sha256_file(blob) == v2.digest.hex
    assert blob.stat().st_blocks * 512 < 2 * MiB  # sparse: holes of the golden stay holes
    assert sha256_file(lib.store.path(v1.digest)) == golden_sha
    assert result.disk.version == 1  # --keep-overlay: still on v1 with its writes
    assert lib.catalog.get("win11").versions == (v1, v2)


def test_commit_moves_the_disk_to_the_new_version(lib: ImageLibrary, v1: ImageVersion) -> None:
    lib.disks.create("super", "win11")
    lib.disks.create("other", "win11")
    write_disk(lib, "super", CLIENT_WRITES)
    old_overlay = lib.disks.info("super").overlay_path

    result = lib.disks.commit("super")

    info = lib.disks.info("super")
    assert (info.record.version, info.record.digest) == (2, result.version.digest)
    assert not old_overlay.exists()
    assert (
        qemu_img(
            "compare", "-U", str(info.overlay_path), str(lib.store.path(result.version.digest))
        ).returncode
        == 0
    )
    for offset, data in CLIENT_WRITES.items():
        assert read_disk(lib, "super", offset, len(data)) == data
    assert lib.disks.get("other").version == 1
    assert read_disk(lib, "other", 4 * KiB, 4) == b"\xaa" * 4

    # Nothing changed since: committing again would only duplicate v2.
    with pytest.raises(ConflictError, match="same content as win11 v2"):
        lib.disks.commit("super")


def test_commit_into_another_image(lib: ImageLibrary, v1: ImageVersion) -> None:
    lib.disks.create("super", "win11")
    write_disk(lib, "super", {0: b"lab build"})

    result = lib.disks.commit("super", image="win11-lab")

    assert result.version.label == "win11-lab v1"
    assert (result.version.parent_image, result.version.parent_version) == ("win11", 1)
    assert lib.disks.get("super").image == "win11-lab"
    assert lib.catalog.names() == ["win11", "win11-lab"]


def test_rollback_goes_back_and_discards_writes(lib: ImageLibrary, v1: ImageVersion) -> None:
    lib.disks.create("pc01", "win11")
    write_disk(lib, "pc01", {0: b"v2 content"})
    lib.disks.commit("pc01")
    write_disk(lib, "pc01", {MiB: b"unsaved"})

    record = lib.disks.rollback("pc01", 1)

    assert (record.version, record.digest) == (1, v1.digest)
    assert read_disk(lib, "pc01", 0, 10) == b"\xaa" * 10
    assert read_disk(lib, "pc01", MiB, 7) == bytes(7)
    directory = lib.disks.directory("pc01")
    assert sorted(p.name for p in directory.iterdir()) == ["disk.json", "lock", record.overlay]

    record = lib.disks.rollback("pc01", 2)
    assert read_disk(lib, "pc01", 0, 10) == b"v2 content"
    with pytest.raises(NotFoundError, match="no version 5"):
        lib.disks.rollback("pc01", 5)


def test_versions_in_use_cannot_be_deleted(lib: ImageLibrary, v1: ImageVersion) -> None:
    v2 = add_golden(lib, "win11", {0: b"second"})
    same_as_v1 = add_golden(lib, "other", GOLDEN_CHUNKS)
    assert same_as_v1.digest == v1.digest
    lib.disks.create("pc01", "win11", 1)
    lib.disks.create("pc02", "win11", 1)

    with pytest.raises(ConflictError, match=r"win11 v1 is in use by disk\(s\): pc01 \(v1\), pc02"):
        lib.delete_version("win11", 1)
    with pytest.raises(ConflictError, match="image 'win11' is in use"):
        lib.delete_image("win11")

    lib.delete_version("win11", 2)
    assert not lib.store.has(v2.digest)
    lib.disks.delete("pc01")
    lib.disks.delete("pc02")
    lib.delete_image("win11")
    assert lib.store.has(v1.digest)  # still the content of "other" v1
    lib.delete_image("other")
    assert lib.store.digests() == []
    with pytest.raises(NotFoundError):
        lib.delete_image("other")


def test_delete_disk_removes_everything(lib: ImageLibrary, v1: ImageVersion) -> None:
    lib.disks.create("pc01", "win11")
    write_disk(lib, "pc01", {0: b"x"})

    lib.disks.delete("pc01")

    assert list(lib.disks.root.iterdir()) == []
    with pytest.raises(NotFoundError, match="disk 'pc01' does not exist"):
        lib.disks.open("pc01")
    lib.disks.create("pc01", "win11")  # the name is free again
    assert read_disk(lib, "pc01", 0, 1) == b"\xaa"


def test_failure_mid_commit_changes_nothing(lib: ImageLibrary, v1: ImageVersion) -> None:
    lib.disks.create("pc01", "win11")
    write_disk(lib, "pc01", CLIENT_WRITES)
    catalog_before = (lib.catalog.root / "win11.json").read_bytes()
    disk_before = (lib.disks.directory("pc01") / "disk.json").read_bytes()

    def explode(done: int, total: int) -> None:
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        lib.disks.commit("pc01", progress=explode)

    assert (lib.catalog.root / "win11.json").read_bytes() == catalog_before
    assert (lib.disks.directory("pc01") / "disk.json").read_bytes() == disk_before
    assert lib.store.digests() == [v1.digest]
    assert list(lib.store.staging_dir.iterdir()) == []
    assert read_disk(lib, "pc01", 4 * KiB, 4) == b"\x11" * 4


def test_killed_commit_leaves_only_a_staging_file_that_gc_removes(
    lib: ImageLibrary, v1: ImageVersion
) -> None:
    lib.disks.create("pc01", "win11")
    write_disk(lib, "pc01", CLIENT_WRITES)
    catalog_before = (lib.catalog.root / "win11.json").read_bytes()
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from diskless.storage.library import ImageLibrary\n"
        "lib = ImageLibrary(Path(sys.argv[1]), cluster_size=65536)\n"
        "def die(done, total):\n"
        "    os.kill(os.getpid(), 9)\n"
        "lib.disks.commit('pc01', progress=die)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(lib.data_dir)], check=False)
    assert done.returncode == -9

    assert len(list(lib.store.staging_dir.iterdir())) == 1
    assert (lib.catalog.root / "win11.json").read_bytes() == catalog_before
    assert lib.store.digests() == [v1.digest]

    report = lib.gc()

    assert len(report.staging_files) == 1
    assert list(lib.store.staging_dir.iterdir()) == []
    assert lib.disks.commit("pc01").version.version == 2  # the disk was never locked out


def test_gc_removes_orphans_and_leftovers_but_not_live_data(
    lib: ImageLibrary, v1: ImageVersion
) -> None:
    lib.disks.create("pc01", "win11")
    # A blob published by a process that died before cataloguing it.
    orphan_src = lib.data_dir.parent / "orphan.raw"
    orphan_src.write_bytes(b"orphan" * 100 + bytes(424))
    orphan = lib.store.add(orphan_src)
    # A disk directory half-created, and a stale overlay in a disk directory.
    (lib.disks.root / ".tmp-pc02.abcdef").mkdir()
    (lib.disks.root / ".tmp-pc02.abcdef" / "disk.json").write_text("{}")
    stale = lib.disks.directory("pc01") / "overlay-000000000000.qcow2"
    stale.write_bytes(b"old")

    report = lib.gc()

    assert report.orphan_blobs == [orphan]
    assert not lib.store.has(orphan)
    assert lib.store.has(v1.digest)
    assert stale in report.disk_leftovers
    assert sorted(p.name for p in lib.disks.root.iterdir()) == ["pc01"]
    assert read_disk(lib, "pc01", 0, 1) == b"\xaa"


def test_gc_skips_a_disk_being_served(lib: ImageLibrary, v1: ImageVersion) -> None:
    lib.disks.create("pc01", "win11")
    stale = lib.disks.directory("pc01") / ".tmp-disk.json.123"
    stale.write_text("{}")
    with lib.disks.open("pc01"):
        assert lib.gc().disk_leftovers == []
        assert stale.exists()
    assert lib.gc().disk_leftovers == [stale]


def test_switching_overlay_crash_window_keeps_record_consistent(
    lib: ImageLibrary, v1: ImageVersion
) -> None:
    """If a process dies after writing the new overlay but before flipping disk.json, the disk
    is still exactly the old one: disk.json names the old overlay, which is untouched."""
    add_golden(lib, "win11", {0: b"v2"})
    lib.disks.create("pc01", "win11", 1)
    write_disk(lib, "pc01", {0: b"keep me"})
    record = lib.disks.get("pc01")
    # Simulate the first half of a rollback to v2: the new overlay exists, disk.json unchanged.
    v2 = lib.catalog.version("win11", 2)
    lib.disks._write_overlay(
        lib.disks.directory("pc01"),
        lib.disks.directory("pc01"),
        f"overlay-{v2.digest.short}.qcow2",
        v2,
    )

    assert lib.disks.get("pc01") == record
    assert read_disk(lib, "pc01", 0, 7) == b"keep me"
    lib.gc()
    assert sorted(os.listdir(lib.disks.directory("pc01"))) == ["disk.json", "lock", record.overlay]
