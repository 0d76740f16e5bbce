"""Our qcow2 overlay behaves like a plain byte array (golden contents + the guest's writes).

A Hypothesis state machine mixes writes (byte-granular, ``fua`` or not, from bytes, bytearray and
memoryview), write-zeroes with and without unmap, discards, flushes, every read path (``read``,
``readinto`` into a slice of a larger buffer, ``read_plan`` + ``fill_from_plan``) and closing and
reopening (read-write, read-only, through ``open_image``) against an in-memory model. At the end of
every run ``qemu-img check`` must find the overlay clean, qemu must read exactly the model, and the
golden image must be untouched.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from qcow2_oracle import (
    LAYOUTS,
    QEMU_MISSING,
    KiB,
    Layout,
    MiB,
    assert_check_clean,
    assert_same,
    extents,
    golden,
    hyp_settings,
    qemu_read_all,
    sha256_file,
)

if QEMU_MISSING is not None:
    pytest.skip(QEMU_MISSING, allow_module_level=True)

from diskless.storage.blockdev import BlockDevice, fill_from_plan
from diskless.storage.images import open_image
from diskless.storage.qcow2 import Qcow2Image, create_qcow2

MAX_IO = 256 * KiB


class OverlayMachine(RuleBasedStateMachine):
    layout: ClassVar[Layout]

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="qcow2-model-"))
        self.path = self.dir / "overlay.qcow2"
        create_qcow2(self.path, **self.layout.create_args())
        self.size = self.layout.disk_size()
        self.model = bytearray(self.layout.initial_content())
        self.dev: BlockDevice = Qcow2Image(self.path)
        self.writable = True

    # -- writes ----------------------------------------------------------------------------------

    @precondition(lambda self: self.writable)
    @rule(
        where=st.data(),
        seed=st.integers(0, 2**32 - 1),
        fua=st.booleans(),
        kind=st.sampled_from(["bytes", "bytearray", "memoryview"]),
    )
    def write(self, where: st.DataObject, seed: int, fua: bool, kind: str) -> None:
        offset, length = where.draw(self.extent())
        data = random.Random(seed).randbytes(length)
        payload: bytes | bytearray | memoryview = data
        if kind == "bytearray":
            payload = bytearray(data)
        elif kind == "memoryview":  # a slice of a bigger buffer, as the network layer passes
            payload = memoryview(b"\xee" * 7 + data + b"\xee")[7 : 7 + length]
        self.dev.write(offset, payload, fua=fua)
        self.model[offset : offset + length] = data

    @precondition(lambda self: self.writable)
    @rule(where=st.data(), unmap=st.booleans(), fua=st.booleans())
    def write_zeroes(self, where: st.DataObject, unmap: bool, fua: bool) -> None:
        offset, length = where.draw(self.extent(big=True))
        self.dev.write_zeroes(offset, length, unmap=unmap, fua=fua)
        self.model[offset : offset + length] = bytes(length)

    @precondition(lambda self: self.writable)
    @rule(where=st.data())
    def discard(self, where: st.DataObject) -> None:
        offset, length = where.draw(self.extent(big=True))
        self.dev.discard(offset, length)
        self.model[offset : offset + length] = bytes(length)

    @precondition(lambda self: self.writable)
    @rule(where=st.integers(0, 10**12))
    def empty_write(self, where: int) -> None:
        offset = where % (self.size + 1)
        self.dev.write(offset, b"")
        self.dev.write_zeroes(offset, 0)

    @rule()
    def flush(self) -> None:
        self.dev.flush()

    # -- reads -----------------------------------------------------------------------------------

    @rule(where=st.data())
    def read(self, where: st.DataObject) -> None:
        offset, length = where.draw(self.extent())
        want = bytes(self.model[offset : offset + length])
        assert_same(self.dev.read(offset, length), want, f"read({offset}, {length})")

    @rule(where=st.data(), pad=st.integers(0, 9))
    def readinto(self, where: st.DataObject, pad: int) -> None:
        offset, length = where.draw(self.extent())
        buf = bytearray(b"\x5a" * (length + 2 * pad))
        self.dev.readinto(offset, memoryview(buf)[pad : pad + length])
        want = bytes(self.model[offset : offset + length])
        assert_same(buf[pad : pad + length], want, f"readinto({offset}, {length})")
        assert buf[:pad] == b"\x5a" * pad, "readinto wrote before its buffer"
        assert buf[pad + length :] == b"\x5a" * pad, "readinto wrote past its buffer"

    @rule(where=st.data())
    def read_plan(self, where: st.DataObject) -> None:
        offset, length = where.draw(self.extent(big=True))
        plan = self.dev.read_plan(offset, length)
        assert sum(extent.length for extent in plan) == length, plan
        got = bytearray(length)
        fill_from_plan(plan, memoryview(got))
        want = bytes(self.model[offset : offset + length])
        assert_same(got, want, f"read_plan({offset}, {length})")

    # -- lifecycle -------------------------------------------------------------------------------

    @rule(how=st.sampled_from(["Qcow2Image", "open_image", "read_only"]))
    def reopen(self, how: str) -> None:
        self.dev.close()
        self.dev.close()  # closing twice is harmless
        if how == "Qcow2Image":
            self.dev = Qcow2Image(self.path)
        elif how == "open_image":
            self.dev = open_image(self.path)
        else:
            self.dev = open_image(self.path, read_only=True)
        self.writable = how != "read_only"
        assert self.dev.size == self.size
        assert self.dev.read_only is not self.writable

    def teardown(self) -> None:
        try:
            assert_same(self.dev.read(0, self.size), self.model, "whole disk")
            assert self.dev.allocated_bytes() >= 0
            self.dev.close()
            assert_check_clean(self.path)
            assert_same(qemu_read_all(self.path), self.model, "qemu's view of our overlay")
            if self.layout.backing is not None:
                g = golden(self.layout.backing)
                assert sha256_file(g.path) == g.sha256, "golden modified"
        finally:
            self.dev.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def extent(self, *, big: bool = False) -> st.SearchStrategy[tuple[int, int]]:
        return extents(self.size, self.layout.cluster_size, 4 * MiB if big else MAX_IO)


def _machine(layout: Layout) -> type[OverlayMachine]:
    return type(f"Overlay_{layout.name}", (OverlayMachine,), {"layout": layout})


_MACHINES = {layout.name: _machine(layout) for layout in LAYOUTS}
for _machine_class in _MACHINES.values():
    _machine_class.TestCase.settings = hyp_settings(20, stateful_step_count=30)

TestStd64kRaw = _MACHINES["std64k-raw"].TestCase
TestExt128kRaw = _MACHINES["ext128k-raw"].TestCase
TestC4kQcow2 = _MACHINES["c4k-qcow2"].TestCase
TestC512RawBigger = _MACHINES["c512-raw-bigger"].TestCase
TestExt16kQcow2 = _MACHINES["ext16k-qcow2"].TestCase
TestStandalone = _machine(Layout("ext128k-standalone", 131072, True, None)).TestCase
TestStandalone.settings = hyp_settings(10, stateful_step_count=30)


@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1]], ids=["std64k", "ext128k"])
def test_threads_sharing_clusters(tmp_path: Path, layout: Layout) -> None:
    """Four writer threads own interleaved 4 KiB blocks, so they allocate and copy-on-write the
    same clusters concurrently; a fifth flushes; two readers keep re-reading blocks whose owner
    has finished with them (a "stable" block must read as its final contents at every instant,
    whatever the neighbours in its cluster are doing). The GIL switch interval is shortened to
    make the threads interleave often."""
    path = tmp_path / "overlay.qcow2"
    create_qcow2(path, **layout.create_args())
    model = bytearray(layout.initial_content())
    size = layout.disk_size()
    block = 4 * KiB
    blocks = size // block
    errors: list[BaseException] = []
    stable: list[int] = []  # blocks no writer touches again; list.append is atomic
    reads: list[int] = []
    writers_done = threading.Event()
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with Qcow2Image(path) as dev:

            def writer(t: int) -> None:
                rng = random.Random(t)
                mine = list(range(t, blocks, 4))
                rng.shuffle(mine)
                try:
                    for index in mine[:250]:
                        for _ in range(rng.randint(1, 3)):
                            skip = rng.choice([0, 0, 512, 1000])
                            length = rng.choice([block - skip, 512, 77])
                            offset = index * block + skip
                            data = rng.randbytes(length)
                            dev.write(offset, data)
                            model[offset : offset + length] = data  # the owner's block only
                        stable.append(index)
                except BaseException as exc:
                    errors.append(exc)

            def flusher() -> None:
                try:
                    while not writers_done.is_set():
                        dev.flush()
                        time.sleep(0.001)
                except BaseException as exc:
                    errors.append(exc)

            def reader(seed: int) -> None:
                rng = random.Random(seed)
                try:
                    while not writers_done.is_set():
                        if not stable:
                            time.sleep(0.001)
                            continue
                        index = rng.choice(stable)
                        want = bytes(model[index * block : (index + 1) * block])
                        got = dev.read(index * block, block)
                        if got != want:
                            raise AssertionError(f"stable block {index} read wrong contents")
                        reads.append(index)
                except BaseException as exc:
                    errors.append(exc)

            writers = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
            others = [threading.Thread(target=flusher)]
            others += [threading.Thread(target=reader, args=(seed,)) for seed in (1, 2)]
            for thread in writers + others:
                thread.start()
            for thread in writers:
                thread.join(timeout=300)
            writers_done.set()
            for thread in others:
                thread.join(timeout=300)
            assert not errors, errors
            assert len(reads) > 100, "the readers hardly ran"
            assert_same(dev.read(0, size), model, "after concurrent writes")
    finally:
        sys.setswitchinterval(old_interval)
    assert_check_clean(path)
    assert_same(qemu_read_all(path), model, "qemu's view after concurrent writes")


@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1]], ids=["std64k", "ext128k"])
def test_discard_releases_space(tmp_path: Path, layout: Layout) -> None:
    """discard() "releases the range": the host file's allocation drops, and the freed clusters
    are reused by later writes instead of growing the file."""
    path = tmp_path / "overlay.qcow2"
    create_qcow2(path, **layout.create_args())
    data = random.Random(1).randbytes(8 * MiB)
    with Qcow2Image(path) as dev:
        dev.write(MiB, data)
        dev.flush()
        written = dev.allocated_bytes()
        assert written >= 8 * MiB
        dev.discard(MiB, 8 * MiB)
        dev.flush()
        released = dev.allocated_bytes()
        assert released <= written - 6 * MiB, (written, released)
        assert dev.read(MiB, 8 * MiB) == bytes(8 * MiB)
        file_size = path.stat().st_size
        dev.write(12 * MiB, data[: 4 * MiB])
        dev.flush()
        assert path.stat().st_size <= file_size + 2 * layout.cluster_size, "freed space not reused"
    assert_check_clean(path)
