"""Damaged, hostile or unsupported qcow2 files give a clear error naming the file.

Every case starts from a valid image made by qemu-img/qemu-io and edits a few bytes. Opening and
reading must raise :class:`ImageFormatError` (or :class:`BackingFileError` for backing problems)
whose message names the file: never another exception type, never a huge allocation, and never a
silent read of zeros where the metadata points nowhere. Also: writes to a read-only image raise
ReadOnlyError, I/O outside the device raises OutOfRangeError, and a fuzzer flips metadata bytes
to check that nothing but StorageError ever escapes.
"""

from __future__ import annotations

import random
import resource
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qcow2_oracle import (
    QEMU_IMG,
    QEMU_MISSING,
    MiB,
    hyp_settings,
    qemu_img_create,
    qemu_io,
    run_ok,
    sha256_file,
    write_pattern_files,
)

if QEMU_MISSING is not None:
    pytest.skip(QEMU_MISSING, allow_module_level=True)

from diskless.storage.errors import (
    BackingFileError,
    ImageFormatError,
    OutOfRangeError,
    ReadOnlyError,
    StorageError,
)
from diskless.storage.images import open_image
from diskless.storage.qcow2 import Qcow2Image

DISK = 4 * MiB
L1_OFFSET_FIELD, REFCOUNT_TABLE_FIELD = 40, 48
COPIED = 1 << 63


def u32(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        return int(struct.unpack(">I", f.read(4))[0])


def u64(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        return int(struct.unpack(">Q", f.read(8))[0])


def poke(path: Path, offset: int, fmt: str, value: int | bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.raw"
    path.write_bytes(random.Random(5).randbytes(DISK))
    return path


@pytest.fixture
def overlay(tmp_path: Path, golden: Path) -> Path:
    """A qemu-made overlay with data at the start (L2 table at 0x40000, data at 0x50000)."""
    path = tmp_path / "overlay.qcow2"
    qemu_img_create(path, backing=golden.name, backing_format="raw")
    write_pattern_files(tmp_path)
    qemu_io(
        path, ["write -q -s pat0.bin 0 70000", "write -q -s pat1.bin 3000000 5000"], cwd=tmp_path
    )
    return path


def read_everything(path: Path, *, read_only: bool = False) -> None:
    """Open and read every byte, by read() and by read_plan()."""
    with open_image(path, read_only=read_only) as dev:
        for offset in range(0, dev.size, MiB):
            length = min(MiB, dev.size - offset)
            dev.read(offset, length)
            dev.read_plan(offset, length)


def write_and_flush(path: Path) -> None:
    with Qcow2Image(path) as dev:
        dev.write(DISK // 2 + 123, b"x" * 100_000)
        dev.flush()


def assert_refused(
    path: Path,
    action: Callable[[], object],
    errors: tuple[type[StorageError], ...] = (ImageFormatError,),
) -> str:
    with pytest.raises(errors) as info:
        action()
    message = str(info.value)
    assert path.name in message, f"error does not name {path.name}: {message!r}"
    return message


# --------------------------------------------------------------------------------------------
# Header damage


def test_truncated_header(overlay: Path) -> None:
    data = overlay.read_bytes()
    for keep in (0, 3, 4, 50, 71, 100, 111):
        overlay.write_bytes(data[:keep])
        if keep < 4:  # no magic at all: probing says raw; asking for qcow2 must still refuse
            assert_refused(overlay, lambda: Qcow2Image(overlay))
            assert_refused(overlay, lambda: open_image(overlay, fmt="qcow2"))
        else:
            assert_refused(overlay, lambda: read_everything(overlay))
            assert_refused(overlay, lambda: Qcow2Image(overlay, read_only=True))


def test_magic_followed_by_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.qcow2"
    for seed in range(20):
        path.write_bytes(b"QFI\xfb" + random.Random(seed).randbytes(4096 * (1 + seed % 3)))
        assert_refused(path, lambda: read_everything(path))


def test_not_qcow2_at_all(tmp_path: Path, golden: Path) -> None:
    assert_refused(golden, lambda: Qcow2Image(golden))
    assert_refused(golden, lambda: open_image(golden, fmt="qcow2"))


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_unsupported_version(overlay: Path, version: int) -> None:
    poke(overlay, 4, ">I", version)
    assert_refused(overlay, lambda: read_everything(overlay))


@pytest.mark.parametrize("cluster_bits", [0, 8, 22, 31, 63, 0xFFFFFFFF])
def test_cluster_bits_out_of_range(overlay: Path, cluster_bits: int) -> None:
    poke(overlay, 20, ">I", cluster_bits)
    assert_refused(overlay, lambda: read_everything(overlay))


def test_extended_l2_with_small_clusters(tmp_path: Path) -> None:
    path = tmp_path / "c8k.qcow2"
    qemu_img_create(path, size=DISK, cluster_size=8192)
    poke(path, 72, ">Q", 1 << 4)
    assert_refused(path, lambda: read_everything(path))


@pytest.mark.parametrize("bit", [2, 5, 7, 31, 63], ids=lambda b: f"bit{b}")
def test_unknown_or_unsupported_incompatible_feature(overlay: Path, bit: int) -> None:
    """bit 2 (external data file) is known but unsupported; the others are unknown."""
    poke(overlay, 72, ">Q", 1 << bit)
    assert_refused(overlay, lambda: read_everything(overlay))
    assert_refused(overlay, lambda: read_everything(overlay, read_only=True))


@pytest.mark.parametrize(
    ("field", "fmt", "value"),
    [
        (32, ">I", 1),  # crypt_method AES
        (32, ">I", 2),  # crypt_method LUKS
        (96, ">I", 7),  # refcount_order 7 (128-bit refcounts)
        (100, ">I", 50),  # header_length below 104
        (100, ">I", 105),  # header_length not a multiple of 8
        (100, ">I", 1 << 20),  # header_length beyond cluster 0
    ],
    ids=["aes", "luks", "refcount-order-7", "header-length-50", "header-length-105", "header-1M"],
)
def test_bad_header_field(overlay: Path, field: int, fmt: str, value: int) -> None:
    poke(overlay, field, fmt, value)
    assert_refused(overlay, lambda: read_everything(overlay))


def test_header_extension_overflows_cluster(overlay: Path) -> None:
    """The first extension (backing format, at byte 112) claims to be 1 MiB long."""
    assert u32(overlay, 112) == 0xE2792ACA
    poke(overlay, 116, ">I", 1 << 20)
    assert_refused(overlay, lambda: read_everything(overlay))


def test_corrupt_bit_refuses_writing(overlay: Path) -> None:
    """QEMU sets bit 1 when it finds corruption; the image must not be written."""
    poke(overlay, 72, ">Q", 1 << 1)
    sha = sha256_file(overlay)
    assert_refused(overlay, lambda: write_and_flush(overlay))
    assert sha256_file(overlay) == sha


# --------------------------------------------------------------------------------------------
# Tables pointing nowhere


def test_l1_table_past_eof(overlay: Path) -> None:
    poke(overlay, L1_OFFSET_FIELD, ">Q", 1 << 30)
    assert_refused(overlay, lambda: read_everything(overlay))


def test_l1_table_unaligned(overlay: Path) -> None:
    poke(overlay, L1_OFFSET_FIELD, ">Q", u64(overlay, L1_OFFSET_FIELD) + 512)
    assert_refused(overlay, lambda: read_everything(overlay))


@pytest.mark.parametrize("where", ["past-eof", "far-past-eof", "unaligned", "header-cluster"])
def test_l2_pointer_damaged(overlay: Path, where: str) -> None:
    """Reading the range the bad L1 entry maps must raise, not return zeros or backing data."""
    l1 = u64(overlay, L1_OFFSET_FIELD)
    l2 = u64(overlay, l1) & ~COPIED
    assert l2 == 0x40000
    eof = overlay.stat().st_size
    bad = {
        "past-eof": (eof + 0xFFFF) // 0x10000 * 0x10000 + 16 * 0x10000,
        "far-past-eof": 1 << 50,
        "unaligned": l2 + 512,
        "header-cluster": 0,  # offset 0 with COPIED set: refers to the header itself
    }[where]
    poke(overlay, l1, ">Q", bad | COPIED)
    if where == "header-cluster":
        # QEMU treats an L1 entry with offset 0 as unallocated; reading the backing is fine then,
        # but writing must not overwrite the header.
        with Qcow2Image(overlay) as dev:
            dev.write(0, b"y" * 4096)
            dev.flush()
        assert overlay.read_bytes()[:4] == b"QFI\xfb"
        return

    def read_mapped() -> None:
        with open_image(overlay, read_only=True) as dev:
            dev.read(0, 4096)

    def plan_mapped() -> None:
        with open_image(overlay, read_only=True) as dev:
            dev.read_plan(0, 4096)

    assert_refused(overlay, read_mapped)
    assert_refused(overlay, plan_mapped)
    assert_refused(overlay, lambda: write_and_flush(overlay))


def test_data_cluster_unaligned(overlay: Path) -> None:
    """An L2 entry whose host offset is not cluster aligned (QEMU: "corrupt")."""
    l2 = u64(overlay, u64(overlay, L1_OFFSET_FIELD)) & ~COPIED
    entry = u64(overlay, l2)
    poke(overlay, l2, ">Q", (entry & ~COPIED) + 512 | COPIED)

    def read_mapped() -> None:
        with open_image(overlay, read_only=True) as dev:
            dev.read(0, 4096)

    assert_refused(overlay, read_mapped)


@pytest.mark.parametrize("where", ["past-eof", "unaligned", "too-many-clusters"])
def test_refcount_table_damaged(overlay: Path, where: str) -> None:
    """Reading needs no refcounts, but writing does: a writable open or the first allocating
    write must refuse."""
    if where == "past-eof":
        poke(overlay, REFCOUNT_TABLE_FIELD, ">Q", 1 << 30)
    elif where == "unaligned":
        poke(overlay, REFCOUNT_TABLE_FIELD, ">Q", u64(overlay, REFCOUNT_TABLE_FIELD) + 8)
    else:
        poke(overlay, 56, ">I", 0xFFFFFFFF)
    assert_refused(overlay, lambda: write_and_flush(overlay))


def test_refcount_block_past_eof(overlay: Path) -> None:
    table = u64(overlay, REFCOUNT_TABLE_FIELD)
    poke(overlay, table, ">Q", 1 << 40)
    assert_refused(overlay, lambda: write_and_flush(overlay))


# --------------------------------------------------------------------------------------------
# Backing file problems


def test_backing_file_missing(overlay: Path, golden: Path) -> None:
    golden.unlink()
    message = assert_refused(overlay, lambda: read_everything(overlay), (BackingFileError,))
    assert golden.name in message


def test_backing_file_name_too_long(overlay: Path) -> None:
    poke(overlay, 16, ">I", 1024)
    assert_refused(overlay, lambda: read_everything(overlay), (ImageFormatError, BackingFileError))


def test_backing_file_name_outside_cluster0(overlay: Path) -> None:
    poke(overlay, 8, ">Q", 0x10000 - 4)
    assert_refused(overlay, lambda: read_everything(overlay), (ImageFormatError, BackingFileError))
    poke(overlay, 8, ">Q", 1 << 40)
    assert_refused(overlay, lambda: read_everything(overlay), (ImageFormatError, BackingFileError))


def test_backing_chain_loop(tmp_path: Path) -> None:
    """An overlay that names itself as its backing file."""
    path = tmp_path / "loop.qcow2"
    assert QEMU_IMG
    run_ok([QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b", "loop.qcow2", "-F", "qcow2",
            path, str(DISK)])  # fmt: skip
    assert_refused(path, lambda: read_everything(path), (ImageFormatError, BackingFileError))


def test_backing_format_wrong(tmp_path: Path, golden: Path) -> None:
    """The header says the raw golden is qcow2."""
    path = tmp_path / "wrongfmt.qcow2"
    assert QEMU_IMG
    run_ok([QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b", golden.name, "-F", "qcow2",
            path, str(DISK)])  # fmt: skip
    assert_refused(path, lambda: read_everything(path), (ImageFormatError, BackingFileError))


def test_backing_format_unsupported(tmp_path: Path, golden: Path) -> None:
    path = tmp_path / "vmdkfmt.qcow2"
    assert QEMU_IMG
    run_ok([QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b", golden.name, "-F", "vmdk",
            path, str(DISK)])  # fmt: skip
    assert_refused(path, lambda: read_everything(path), (ImageFormatError, BackingFileError))


# --------------------------------------------------------------------------------------------
# Absurd sizes: must be refused without trying to allocate the memory


HUGE_CASES = {
    "size-2^62-small-l1": [(24, ">Q", 1 << 62)],
    "size-2^64-1": [(24, ">Q", (1 << 64) - 1)],
    "l1-size-2^31": [(36, ">I", 0x7FFFFFFF)],
    "l1-size-2^32-1": [(36, ">I", 0xFFFFFFFF)],
    "size-and-l1-consistent-16EiB": [(24, ">Q", 1 << 62), (36, ">I", 1 << 28)],
    "refcount-table-4G-clusters": [(56, ">I", 0xFFFFFFFF)],
}

_HUGE_PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
from diskless.storage.images import open_image
from diskless.storage.errors import StorageError
path = sys.argv[1]
try:
    for ro in (True, False):
        with open_image(path, read_only=ro) as dev:
            dev.read(0, 4096)
            dev.read(dev.size - 4096, 4096)
            if not ro:
                dev.write(dev.size - 4096, b"z" * 4096)
                dev.flush()
except StorageError as exc:
    print("REFUSED", type(exc).__name__, exc)
else:
    print("ACCEPTED")
"""


def probe_in_child(path: Path) -> str:
    """Open (read-only, then read-write), read and write ``path`` in a child limited to 2 GiB of
    address space and 60 s: a MemoryError, a kill or a timeout means the engine believed the
    damaged metadata. Returns the child's verdict line."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _HUGE_PROBE, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{path.name}: opening took more than {exc.timeout} s") from exc
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr[-3000:]}"
    return proc.stdout.strip()


@pytest.mark.parametrize("case", HUGE_CASES, ids=list(HUGE_CASES))
def test_absurd_sizes_refused_cheaply(overlay: Path, case: str) -> None:
    for field, fmt, value in HUGE_CASES[case]:
        poke(overlay, field, fmt, value)
    out = probe_in_child(overlay)
    assert out.startswith("REFUSED ImageFormatError"), out
    assert overlay.name in out


def test_refcount_table_entry_pointing_into_the_file(overlay: Path) -> None:
    """The last refcount-table entry (index 8191) points at the data cluster at 0x50000, so that
    cluster's bytes read as refcounts of clusters around 8191 x 32768 = 2^28 (16 TiB of file).
    ``qemu-img check`` calls this corruption. A writable open must refuse it (or at least cope in
    bounded memory and time), not build a 2^28-entry free list."""
    table = u64(overlay, REFCOUNT_TABLE_FIELD)
    poke(overlay, table + 8 * 8191, ">Q", 0x50000)
    out = probe_in_child(overlay)
    assert out.startswith(("REFUSED ImageFormatError", "ACCEPTED")), out


# --------------------------------------------------------------------------------------------
# Read-only and out-of-range I/O


def test_read_only_refuses_writes(overlay: Path, golden: Path) -> None:
    sha, golden_sha = sha256_file(overlay), sha256_file(golden)
    with open_image(overlay, read_only=True) as dev:
        assert dev.read_only
        with pytest.raises(ReadOnlyError):
            dev.write(0, b"a" * 512)
        with pytest.raises(ReadOnlyError):
            dev.write(0, b"a", fua=True)
        with pytest.raises(ReadOnlyError):
            dev.write_zeroes(0, 65536)
        with pytest.raises(ReadOnlyError):
            dev.write_zeroes(0, 65536, unmap=False)
        with pytest.raises(ReadOnlyError):
            dev.discard(0, 65536)
        dev.flush()  # nothing to do, but allowed
        assert dev.read(0, 10)
    assert sha256_file(overlay) == sha
    assert sha256_file(golden) == golden_sha


@pytest.mark.parametrize("read_only", [False, True], ids=["rw", "ro"])
def test_out_of_range_io(overlay: Path, read_only: bool) -> None:
    with open_image(overlay, read_only=read_only) as dev:
        size = dev.size
        assert size == DISK
        bad = [(size, 1), (size - 1, 2), (-1, 1), (-512, 512), (0, size + 1), (size + 512, 512)]
        for offset, length in bad:
            with pytest.raises(OutOfRangeError):
                dev.read(offset, length)
            with pytest.raises(OutOfRangeError):
                dev.readinto(offset, bytearray(max(length, 0)))
            with pytest.raises(OutOfRangeError):
                dev.read_plan(offset, length)
            if not read_only:
                with pytest.raises(OutOfRangeError):
                    dev.write(offset, b"q" * length)
                with pytest.raises(OutOfRangeError):
                    dev.write_zeroes(offset, length)
                with pytest.raises(OutOfRangeError):
                    dev.discard(offset, length)
        assert dev.read(size, 0) == b""
        assert dev.read_plan(size, 0) == [] or sum(e.length for e in dev.read_plan(size, 0)) == 0
        assert len(dev.read(size - 1, 1)) == 1


# --------------------------------------------------------------------------------------------
# Fuzzing metadata bytes


@contextmanager
def address_space_limit(extra: int) -> Iterator[None]:
    """Cap this process's address space at its current size + ``extra`` bytes, so that a bogus
    multi-gigabyte allocation fails with MemoryError (and fails the test) instead of thrashing."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * resource.getpagesize()
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (current + extra, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small valid images whose metadata the fuzzer damages: a 64 KiB-cluster overlay, an
    extended-L2 overlay, and a compressed 4 KiB-cluster standalone image."""
    d = tmp_path_factory.mktemp("fuzz")
    golden = d / "golden.raw"
    golden.write_bytes(random.Random(9).randbytes(2 * MiB))
    write_pattern_files(d)
    bases: dict[str, bytes] = {}
    for name, cluster, ext in (("std", 65536, False), ("ext", 32768, True)):
        path = d / f"{name}.qcow2"
        qemu_img_create(
            path, backing="golden.raw", backing_format="raw", cluster_size=cluster, extended_l2=ext
        )
        qemu_io(
            path,
            ["write -q -s pat0.bin 1000 100000", "write -q -z -u 1048576 65536",
             "write -q -c -s pat1.bin 1572864 65536"],
            cwd=d,
        )  # fmt: skip
        bases[name] = path.read_bytes()
    text = (b"the quick brown fox " * 60000)[: 2 * MiB]
    flat = d / "text.raw"
    flat.write_bytes(text)
    comp = d / "comp.qcow2"
    assert QEMU_IMG
    run_ok([QEMU_IMG, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096",
            flat, comp])  # fmt: skip
    bases["compressed"] = comp.read_bytes()
    return bases


@pytest.mark.parametrize("base", ["std", "ext", "compressed"])
def test_fuzzed_metadata_only_raises_storage_errors(
    base: str, fuzz_bases: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    d = tmp_path_factory.mktemp(f"fuzz-{base}")
    (d / "golden.raw").write_bytes(random.Random(9).randbytes(2 * MiB))
    original = fuzz_bases[base]
    path = d / "victim.qcow2"

    @hyp_settings(60)
    @given(
        edits=st.lists(
            st.tuples(
                st.sampled_from(["header", "anywhere", "table-word"]),
                st.integers(0, 1 << 32),
                st.integers(0, 255),
                st.integers(0, 63),
            ),
            min_size=1,
            max_size=4,
        ),
        write=st.booleans(),
    )
    def run(edits: list[tuple[str, int, int, int]], write: bool) -> None:
        data = bytearray(original)
        for region, where, byte, bit in edits:
            if region == "header":
                data[where % 112] ^= 1 << (bit % 8)
            elif region == "anywhere":
                data[where % len(data)] = byte
            else:  # flip one bit of a 64-bit word among the first clusters: L1, L2, refcounts
                word = (where % (min(len(data), 6 * 65536) // 8)) * 8
                value = int.from_bytes(data[word : word + 8], "big") ^ (1 << bit)
                data[word : word + 8] = value.to_bytes(8, "big")
        path.write_bytes(data)
        try:
            with address_space_limit(1 << 30):
                read_everything(path, read_only=True)
                if write:
                    with Qcow2Image(path) as dev:
                        if dev.size >= 2 * 73000:  # a damaged size field may shrink the disk
                            dev.write(3000, b"w" * 70000)
                            dev.write_zeroes(dev.size // 2, 70000)
                        dev.flush()
        except StorageError as exc:
            message = str(exc)
            assert path.name in message or "golden.raw" in message, message

    run()
