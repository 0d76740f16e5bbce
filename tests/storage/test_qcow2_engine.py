"""Engine internals the acceptance tests don't reach directly: locks, growth, reuse, caches."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from diskless.storage.blockdev import FileExtent, RawImage, ZeroExtent
from diskless.storage.errors import ImageBusyError, OutOfRangeError, ReadOnlyError
from diskless.storage.images import inspect_image, open_image, probe_format
from diskless.storage.qcow2 import Qcow2Image, create_qcow2

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason="qemu-img not installed (Debian qemu-utils)"
)

MiB = 1 << 20


def _qemu_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-img", "check", str(path)], capture_output=True, text=True, check=False
    )


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.raw"
    rng = random.Random(7)
    path.write_bytes(rng.randbytes(MiB) * 8)
    path.chmod(0o444)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_overlay_of_golden_reads_golden_bytes_zero_copy(golden: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "disk.qcow2"
    create_qcow2(overlay, backing=golden.name, backing_format="raw")
    with Qcow2Image(overlay, read_only=True) as disk:
        plan = disk.read_plan(3 * MiB + 512, MiB)
        # An empty overlay sends the whole range to the golden file: one extent to sendfile.
        assert len(plan) == 1
        extent = plan[0]
        assert isinstance(extent, FileExtent)
        assert (extent.offset, extent.length) == (3 * MiB + 512, MiB)
        assert os.pread(extent.fd, 16, extent.offset) == golden.read_bytes()[extent.offset :][:16]


def test_overlay_larger_than_golden_reads_zeros_past_it(golden: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "big.qcow2"
    create_qcow2(overlay, size=12 * MiB, backing=golden.name, backing_format="raw")
    with Qcow2Image(overlay) as disk:
        tail = disk.read(8 * MiB - 100, 200)
        assert tail[:100] == golden.read_bytes()[-100:]
        assert tail[100:] == bytes(100)
        disk.write(8 * MiB - 10, b"x" * 20)
        assert disk.read(8 * MiB - 20, 40) == golden.read_bytes()[-20:-10] + b"x" * 20 + bytes(10)
    assert _qemu_check(overlay).returncode == 0


def test_writer_lock_keeps_qemu_out_and_golden_lock_keeps_writers_out(
    golden: Path, tmp_path: Path
) -> None:
    overlay = tmp_path / "disk.qcow2"
    create_qcow2(overlay, backing=golden.name, backing_format="raw")
    with Qcow2Image(overlay) as disk:
        disk.write(0, b"a" * 4096)
        busy = _qemu_check(overlay)
        assert busy.returncode != 0
        assert "lock" in busy.stderr
        with pytest.raises(ImageBusyError, match=str(overlay)):
            Qcow2Image(overlay)
        writer = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write 0 512", str(golden)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert writer.returncode != 0
        assert "lock" in writer.stderr
        # Force-share inspection still works while the disk is served, as with QEMU itself.
        info = subprocess.run(
            ["qemu-img", "info", "-U", str(overlay)], capture_output=True, text=True, check=False
        )
        assert info.returncode == 0
    assert _qemu_check(overlay).returncode == 0


def test_small_clusters_grow_the_refcount_table_and_stay_consistent(tmp_path: Path) -> None:
    image = tmp_path / "tiny.qcow2"
    # 512-byte clusters: one refcount-table cluster covers only 8 MiB of file.
    create_qcow2(image, size=32 * MiB, cluster_size=512)
    header_before = inspect_image(image)
    expected = bytearray(32 * MiB)
    rng = random.Random(3)
    with Qcow2Image(image) as disk:
        for step in range(40):
            offset = rng.randrange(0, 31 * MiB)
            data = bytes([step + 1]) * rng.randrange(1, 512 * 1024)
            disk.write(offset, data)
            expected[offset : offset + len(data)] = data
            if step % 7 == 0:
                disk.flush()
        assert disk.header.refcount_table_offset == 512  # the header object is the opened one
    assert header_before.file_size < image.stat().st_size
    result = _qemu_check(image)
    assert result.returncode == 0, result.stdout + result.stderr
    with Qcow2Image(image, read_only=True) as disk:
        assert disk.read(0, 32 * MiB) == expected


def test_discarded_clusters_are_reused_after_flush(golden: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "disk.qcow2"
    create_qcow2(overlay, backing=golden.name, backing_format="raw")
    with Qcow2Image(overlay) as disk:
        disk.write(0, b"1" * (4 * MiB))
        disk.flush()
        size_after_first = overlay.stat().st_size
        disk.discard(0, 4 * MiB)
        assert disk.read(0, 4 * MiB) == bytes(4 * MiB)
        disk.flush()
        disk.write(4 * MiB, b"2" * (2 * MiB))
        disk.flush()
        assert overlay.stat().st_size == size_after_first
        assert disk.read(4 * MiB, 2 * MiB) == b"2" * (2 * MiB)
    assert _qemu_check(overlay).returncode == 0


def test_tiny_l2_cache_evicts_clean_tables_only(golden: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "disk.qcow2"
    # 4 KiB clusters: each L2 table maps 2 MiB, so an 8 MiB disk needs 4 tables.
    create_qcow2(overlay, backing=golden.name, backing_format="raw", cluster_size=4096)
    expected = bytearray(golden.read_bytes())
    with Qcow2Image(overlay, l2_cache_bytes=1) as disk:
        for index in range(64):
            offset = (index * 524288 + 1000) % (8 * MiB - 10000)
            disk.write(offset, bytes([index]) * 5000)
            expected[offset : offset + 5000] = bytes([index]) * 5000
            if index % 16 == 15:
                disk.flush()
        assert disk.read(0, 8 * MiB) == expected
    assert _qemu_check(overlay).returncode == 0
    with Qcow2Image(overlay, read_only=True, l2_cache_bytes=1) as disk:
        assert disk.read(0, 8 * MiB) == expected


def test_volatile_overlay_skips_syncs_but_stays_valid(golden: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "cafe.qcow2"
    create_qcow2(
        overlay, backing=golden.name, backing_format="raw", cluster_size=131072, extended_l2=True
    )
    with open_image(overlay, sync=False) as disk:
        disk.write(12345, b"volatile" * 1000, fua=True)
    assert _qemu_check(overlay).returncode == 0
    with open_image(overlay, read_only=True) as disk:
        assert disk.read(12345, 8000) == b"volatile" * 1000


def test_read_only_and_range_errors(golden: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "disk.qcow2"
    create_qcow2(overlay, backing=golden.name, backing_format="raw")
    with Qcow2Image(overlay, read_only=True) as disk:
        with pytest.raises(ReadOnlyError):
            disk.write(0, b"x")
        with pytest.raises(OutOfRangeError):
            disk.read(8 * MiB - 1, 2)
        with pytest.raises(OutOfRangeError):
            disk.read_plan(-1, 1)
    with RawImage(golden, read_only=True) as raw, pytest.raises(ReadOnlyError):
        raw.write_zeroes(0, 512)


def test_golden_is_untouched_by_everything_overlays_do(golden: Path, tmp_path: Path) -> None:
    before = _sha256(golden)
    for index, (cluster_size, extended) in enumerate([(65536, False), (131072, True)]):
        overlay = tmp_path / f"disk{index}.qcow2"
        create_qcow2(
            overlay,
            backing=golden.name,
            backing_format="raw",
            cluster_size=cluster_size,
            extended_l2=extended,
        )
        with Qcow2Image(overlay) as disk:
            disk.write(100, b"z" * 300000)
            disk.write_zeroes(MiB, 3 * MiB)
            disk.discard(5 * MiB + 7, 1000)
            disk.flush()
    assert _sha256(golden) == before


def test_raw_image_write_zeroes_and_plan(tmp_path: Path) -> None:
    path = tmp_path / "raw.img"
    path.write_bytes(b"\xff" * (2 * MiB))
    assert probe_format(path) == "raw"
    with RawImage(path) as raw:
        raw.write_zeroes(4096, 8192)
        raw.write(0, b"abc", fua=True)
        assert raw.read(0, 3) == b"abc"
        assert raw.read(4096, 8192) == bytes(8192)
        assert raw.read_plan(10, 20) == [FileExtent(raw.fd, 10, 20)]
    info = inspect_image(path)
    assert (info.format, info.virtual_size) == ("raw", 2 * MiB)


def test_zero_ranges_plan_as_zero_extents(tmp_path: Path) -> None:
    image = tmp_path / "blank.qcow2"
    create_qcow2(image, size=4 * MiB)
    with Qcow2Image(image) as disk:
        assert disk.read_plan(0, 4 * MiB) == [ZeroExtent(4 * MiB)]
        disk.write(MiB, b"q" * 10)
        plan = disk.read_plan(MiB - 5, 20)
        # The cluster before is unallocated; the written cluster is data (zero-filled around).
        assert [type(extent) for extent in plan] == [ZeroExtent, FileExtent]
        assert [extent.length for extent in plan] == [5, 15]
        assert disk.read(MiB - 5, 20) == bytes(5) + b"q" * 10 + bytes(5)
