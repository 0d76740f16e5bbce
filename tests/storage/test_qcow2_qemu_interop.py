"""Our qcow2 engine and QEMU 7.2 read and write each other's overlays.

* Forward: one random sequence of writes / write-zeroes / discards / flushes goes to an overlay we
  created (through our engine) and to one ``qemu-img create`` made (through one ``qemu-io`` run).
  ``qemu-img check`` must find ours clean and ``qemu-img compare`` must find both identical.
* Reverse: qemu writes (including compressed clusters, zero clusters and its own discard), we read;
  every byte must equal what ``qemu-img convert -O raw`` produces.
* Hand-over: qemu writes, we write on top of its metadata, qemu writes again.

The golden image's sha256 is checked after every example: nothing may ever write to it.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qcow2_oracle import (
    GOLDEN_SIZE,
    LAYOUT_IDS,
    LAYOUTS,
    QEMU_IMG,
    QEMU_MISSING,
    Discard,
    Flush,
    Layout,
    MiB,
    Op,
    Write,
    WriteZeroes,
    apply_to_device,
    apply_to_model,
    assert_check_clean,
    assert_same,
    build_qcow2_golden,
    compressible,
    extents,
    golden,
    hyp_settings,
    ops_strategy,
    qemu_img_check,
    qemu_img_compare,
    qemu_img_create,
    qemu_read_all,
    run_ok,
    run_qemu_ops,
    sha256_file,
    write_raw_sparse,
)

if QEMU_MISSING is not None:
    pytest.skip(QEMU_MISSING, allow_module_level=True)

from diskless.storage.blockdev import fill_from_plan
from diskless.storage.errors import ImageFormatError, StorageError
from diskless.storage.images import open_image
from diskless.storage.qcow2 import Qcow2Image, create_qcow2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


class Example:
    """A scratch directory for one Hypothesis example, removed afterwards (disk stays small)."""

    def __init__(self, parent: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ex-", dir=parent))

    def __enter__(self) -> Path:
        return self.dir

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def assert_goldens_unchanged(layout: Layout) -> None:
    if layout.backing is not None:
        g = golden(layout.backing)
        assert sha256_file(g.path) == g.sha256, f"golden {g.path} was modified"
        if g.fmt == "qcow2":  # its own backing chain ends in the raw golden
            raw = golden("raw")
            assert sha256_file(raw.path) == raw.sha256


def explain_mismatch(ours: Path, qemus: Path, model: bytearray) -> str:
    """Which of the two overlays deviates from the model, and where."""
    lines = []
    for label, path in (("ours", ours), ("qemu's", qemus)):
        try:
            content = qemu_read_all(path)
        except AssertionError as exc:
            lines.append(f"{label}: unreadable by qemu: {exc}")
            continue
        problem = None if content == model else assert_problem(content, model)
        lines.append(f"{label}: {problem or 'matches the model'}")
    return "\n".join(lines)


def assert_problem(content: bytes, model: bytearray) -> str:
    try:
        assert_same(content, model, "content vs model")
    except AssertionError as exc:
        return str(exc)
    return "matches"


# --------------------------------------------------------------------------------------------
# Forward: we write, qemu judges


def forward(layout: Layout, ops: list[Op], parent: Path) -> None:
    with Example(parent) as d:
        ours, qemus = d / "ours.qcow2", d / "qemu.qcow2"
        create_qcow2(ours, **layout.create_args())
        qemu_img_create(qemus, **layout.create_args())
        with Qcow2Image(ours) as dev:
            assert dev.size == layout.disk_size()
            apply_to_device(dev, ops)
        run_qemu_ops(qemus, ops, cluster_size=layout.cluster_size)
        assert_check_clean(qemus)  # sanity of the oracle itself
        assert_check_clean(ours)
        compared = qemu_img_compare(ours, qemus)
        if compared.returncode != 0:
            model = bytearray(layout.initial_content())
            apply_to_model(model, ops)
            raise AssertionError(
                f"qemu-img compare ours vs qemu's: {compared.describe()}\n"
                f"{explain_mismatch(ours, qemus, model)}\nops: {ops!r}"
            )
        assert_goldens_unchanged(layout)


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_our_writes_equal_qemus(layout: Layout, workdir: Path) -> None:
    @hyp_settings(25)
    @given(ops=ops_strategy(layout.disk_size(), layout.cluster_size))
    def run(ops: list[Op]) -> None:
        forward(layout, ops, workdir)

    run()


METADATA_GROWTH = [
    # 512-byte clusters: one refcount block covers 128 KiB of file and one refcount-table cluster
    # 8 MiB, so 12 MiB of data makes the table grow (and move).
    Layout("c512-standalone", 512, False, None),
    # 4 KiB clusters: one refcount block covers 8 MiB of file.
    Layout("c4k-raw", 4096, False, "raw"),
    Layout("ext16k-raw", 16384, True, "raw"),
]


@pytest.mark.parametrize("layout", METADATA_GROWTH, ids=[m.name for m in METADATA_GROWTH])
def test_metadata_growth_equals_qemus(layout: Layout, workdir: Path) -> None:
    """Enough scattered data that L2 tables, refcount blocks and the refcount table must grow."""
    rng = random.Random(layout.name)
    size = layout.disk_size()
    ops: list[Op] = []
    for i in range(48):
        length = 256 * 1024 - rng.randrange(0, 2) * rng.randrange(1, 4096)
        offset = (i * 7919 * 4096 + rng.randrange(0, 4096)) % (size - length)
        ops.append(Write(offset, length, i % 4))
        if i % 16 == 15:
            ops.append(Flush())
    ops.append(Discard(size // 3, 2 * MiB + 3))
    ops.append(Write(size // 3 + 5, 100_000, 1))
    forward(layout, ops, workdir)


# --------------------------------------------------------------------------------------------
# Reverse: qemu writes, we read


def assert_reads_match(path: Path, expected: bytes, probes: list[tuple[int, int]]) -> None:
    """Every way of reading through our engine gives qemu's bytes."""
    with open_image(path, read_only=True) as dev:
        assert dev.size == len(expected)
        assert_same(dev.read(0, dev.size), expected, f"read() of {path.name}")
        buf = bytearray(dev.size)
        fill_from_plan(dev.read_plan(0, dev.size), memoryview(buf))
        assert_same(buf, expected, f"read_plan() of {path.name}")
        for offset, length in probes:
            want = expected[offset : offset + length]
            assert_same(dev.read(offset, length), want, f"read({offset}, {length})")
            big = bytearray(length + 10)
            dev.readinto(offset, memoryview(big)[5 : 5 + length])
            assert_same(big[5 : 5 + length], want, f"readinto({offset}, {length})")
            assert big[:5] == bytes(5), f"readinto({offset}, {length}) wrote before its buffer"
            assert big[-5:] == bytes(5), f"readinto({offset}, {length}) wrote past its buffer"
            plan = dev.read_plan(offset, length)
            assert sum(e.length for e in plan) == length
            got = bytearray(length)
            fill_from_plan(plan, memoryview(got))
            assert_same(got, want, f"read_plan({offset}, {length})")


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_we_read_qemus_writes(layout: Layout, workdir: Path) -> None:
    size = layout.disk_size()

    @hyp_settings(15)
    @given(
        ops=ops_strategy(size, layout.cluster_size, compressed=True),
        qemu_discard=st.booleans(),
        probes=st.lists(extents(size, layout.cluster_size), min_size=1, max_size=8),
    )
    def run(ops: list[Op], qemu_discard: bool, probes: list[tuple[int, int]]) -> None:
        with Example(workdir) as d:
            overlay = d / "qemu.qcow2"
            qemu_img_create(overlay, **layout.create_args())
            run_qemu_ops(overlay, ops, cluster_size=layout.cluster_size, qemu_discard=qemu_discard)
            expected = qemu_read_all(overlay)
            if not qemu_discard:  # the oracle agrees with the model
                model = bytearray(layout.initial_content())
                apply_to_model(model, ops)
                assert_same(expected, model, "qemu vs model (oracle sanity)")
            assert_reads_match(overlay, expected, probes)
            assert_check_clean(overlay)  # a read-only open changes nothing
            assert_goldens_unchanged(layout)

    run()


GOLDEN_CLUSTERS = [512, 4096, 65536, 2 * MiB]


@pytest.mark.parametrize("cluster_size", GOLDEN_CLUSTERS)
def test_we_read_qemu_compressed_golden(cluster_size: int, tmp_path: Path) -> None:
    """A golden image from ``qemu-img convert -c`` plus ``write -z`` zero clusters, read directly
    and as the backing file of a fresh overlay."""
    raw = tmp_path / "golden.raw"
    write_raw_sparse(raw, golden("raw").content)
    path = build_qcow2_golden(tmp_path, raw, cluster_size=cluster_size)
    expected = qemu_read_all(path)
    check = qemu_img_check(path)
    assert "compressed" in check.output, check.output
    sha = sha256_file(path)
    rng = random.Random(cluster_size)
    probes = [(rng.randrange(GOLDEN_SIZE - 70000), rng.randrange(1, 70000)) for _ in range(40)]
    assert_reads_match(path, expected, probes)
    overlay = tmp_path / "overlay.qcow2"
    create_qcow2(
        overlay, backing=path.name, backing_format="qcow2", cluster_size=131072, extended_l2=True
    )
    assert_reads_match(overlay, expected, probes)
    assert sha256_file(path) == sha


def test_zstd_compressed_golden_is_read_or_refused(tmp_path: Path) -> None:
    """compression_type=zstd: either read exactly or refused with ImageFormatError naming the
    file at open. (Debian's qemu-img 7.2 writes zstd when asked.)"""
    raw = tmp_path / "golden.raw"
    write_raw_sparse(raw, golden("raw").content)
    path = tmp_path / "zstd.qcow2"
    assert QEMU_IMG
    run_ok([QEMU_IMG, "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, path])
    expected = qemu_read_all(path)
    try:
        dev = open_image(path, read_only=True)
    except ImageFormatError as exc:
        message = str(exc)
        assert path.name in message
        return
    with dev:
        assert_same(dev.read(0, dev.size), expected, "zstd golden")


# --------------------------------------------------------------------------------------------
# Hand-over: qemu, then us, then qemu again on the same overlay


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_handover_qemu_us_qemu(layout: Layout, workdir: Path) -> None:
    size, cluster = layout.disk_size(), layout.cluster_size

    @hyp_settings(12)
    @given(
        first=ops_strategy(size, cluster, compressed=True, max_ops=12),
        second=ops_strategy(size, cluster, max_ops=12),
        third=ops_strategy(size, cluster, compressed=True, max_ops=8),
    )
    def run(first: list[Op], second: list[Op], third: list[Op]) -> None:
        with Example(workdir) as d:
            overlay = d / "overlay.qcow2"
            qemu_img_create(overlay, **layout.create_args())
            model = bytearray(layout.initial_content())
            touched: set[int] = set()
            run_qemu_ops(overlay, first, cluster_size=cluster, touched=touched)
            apply_to_model(model, first)
            with Qcow2Image(overlay) as dev:
                apply_to_device(dev, second)
            apply_to_model(model, second)
            compressible(second, cluster, touched)  # only marks the clusters we touched
            assert_check_clean(overlay)
            assert_same(qemu_read_all(overlay), model, "after our writes on qemu's overlay")
            run_qemu_ops(overlay, third, cluster_size=cluster, touched=touched)
            apply_to_model(model, third)
            assert_check_clean(overlay)
            with open_image(overlay, read_only=True) as dev:
                assert_same(dev.read(0, size), model, "our read after qemu wrote on ours")
            assert_goldens_unchanged(layout)

    run()


# --------------------------------------------------------------------------------------------
# Images qemu makes but create_qcow2 never does: we must read them, and write them or refuse


def random_ops(rng: random.Random, size: int, cluster: int, count: int) -> list[Op]:
    ops: list[Op] = []
    for _ in range(count):
        offset = rng.randrange(size - 1)
        length = min(size - offset, rng.choice([512, 4096, cluster, rng.randrange(1, 300_000)]))
        roll = rng.random()
        if roll < 0.7:
            ops.append(Write(offset, length, rng.randrange(4)))
        elif roll < 0.8:
            ops.append(WriteZeroes(offset, length, rng.random() < 0.5))
        elif roll < 0.9:
            ops.append(Discard(offset, length))
        else:
            ops.append(Flush())
    return ops


VARIANTS = {
    # id: (qemu-img create -o options, backed by the raw golden?, may refuse writing?)
    "v2-compat-0.10": ("compat=0.10", True, False),
    "lazy-refcounts": ("lazy_refcounts=on", True, False),
    "refcount-bits-1": ("refcount_bits=1", True, True),
    "refcount-bits-8": ("refcount_bits=8", True, False),
    "refcount-bits-64": ("refcount_bits=64", True, False),
    "cluster-2M": ("cluster_size=2M", True, False),
    "cluster-1k": ("cluster_size=1024", True, False),
    "prealloc-metadata": ("preallocation=metadata", False, False),
    "prealloc-falloc": ("preallocation=falloc", False, False),
    "ext-prealloc-metadata": (
        "extended_l2=on,cluster_size=64k,preallocation=metadata",
        True,
        False,
    ),
}


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_qemu_variants(variant: str, tmp_path: Path) -> None:
    options, backed, may_refuse = VARIANTS[variant]
    raw = golden("raw")
    path = tmp_path / "variant.qcow2"
    assert QEMU_IMG
    args: list[str | Path] = [QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", options]
    if backed:
        args += ["-b", str(raw.path), "-F", "raw", path]
    else:
        args += [path, str(GOLDEN_SIZE)]
    run_ok(args)
    rng = random.Random(variant)
    cluster = 65536
    run_qemu_ops(path, random_ops(rng, GOLDEN_SIZE, cluster, 25), cluster_size=cluster)
    expected = qemu_read_all(path)
    probes = [(rng.randrange(GOLDEN_SIZE - 9000), rng.randrange(1, 9000)) for _ in range(20)]
    assert_reads_match(path, expected, probes)
    try:
        dev = Qcow2Image(path)
    except StorageError as exc:
        message = str(exc)
        assert may_refuse, f"{variant}: refused to open for writing: {message}"
        assert path.name in message
        return
    model = bytearray(expected)
    ops = random_ops(rng, GOLDEN_SIZE, cluster, 40)
    with dev:
        apply_to_device(dev, ops)
    apply_to_model(model, ops)
    assert_check_clean(path)
    assert_same(qemu_read_all(path), model, f"{variant}: qemu's view after our writes")
    assert sha256_file(raw.path) == raw.sha256


def test_snapshot_image_read_only(tmp_path: Path) -> None:
    """Internal snapshots: we read the active layer; writing is refused or correct."""
    raw = golden("raw")
    path = tmp_path / "snap.qcow2"
    qemu_img_create(path, backing=str(raw.path), backing_format="raw")
    rng = random.Random(7)
    run_qemu_ops(path, random_ops(rng, GOLDEN_SIZE, 65536, 15), cluster_size=65536)
    assert QEMU_IMG
    run_ok([QEMU_IMG, "snapshot", "-c", "before", path])
    run_qemu_ops(path, random_ops(rng, GOLDEN_SIZE, 65536, 15), cluster_size=65536)
    expected = qemu_read_all(path)
    assert_reads_match(path, expected, [(0, 100_000), (GOLDEN_SIZE - 5000, 5000)])
    try:
        dev = Qcow2Image(path)
    except ImageFormatError as exc:
        message = str(exc)
        assert path.name in message
        return
    model = bytearray(expected)
    ops = random_ops(rng, GOLDEN_SIZE, 65536, 30)
    with dev:
        apply_to_device(dev, ops)
    apply_to_model(model, ops)
    assert_check_clean(path)
    assert_same(qemu_read_all(path), model, "snapshot image after our writes")


def test_three_level_chain(tmp_path: Path) -> None:
    """raw golden <- qcow2 middle layer (qemu-written) <- our overlay, smaller than the chain."""
    raw = golden("raw")
    middle = tmp_path / "middle.qcow2"
    qemu_img_create(middle, backing=str(raw.path), backing_format="raw", cluster_size=4096)
    rng = random.Random(3)
    run_qemu_ops(middle, random_ops(rng, GOLDEN_SIZE, 4096, 30), cluster_size=4096)
    size = GOLDEN_SIZE - MiB - 512
    top = tmp_path / "top.qcow2"
    create_qcow2(
        top, size=size, backing="middle.qcow2", backing_format="qcow2",
        cluster_size=131072, extended_l2=True,
    )  # fmt: skip
    model = bytearray(qemu_read_all(middle)[:size])
    ops = random_ops(rng, size, 131072, 40)
    with Qcow2Image(top) as dev:
        assert dev.size == size
        apply_to_device(dev, ops)
    apply_to_model(model, ops)
    assert_check_clean(top)
    assert_same(qemu_read_all(top), model, "three-level chain")
    assert_reads_match(top, bytes(model), [(size - 70000, 70000), (1, 300_000)])
    assert_check_clean(middle)
    assert sha256_file(raw.path) == raw.sha256
