"""A writer killed at a random moment leaves a usable overlay holding every flushed write.

QEMU's rule for qcow2 (iscsi-and-cow.md §5.4): a crash may leak clusters (``qemu-img check`` exit
3) but never corrupt the image (exit 2), and every write acknowledged before the last completed
``flush()`` — or written with ``fua=True`` — survives. A subprocess (qcow2_crash_writer.py) writes
a deterministic stream and reports each completed flush; we SIGKILL it, check the image with qemu,
compare its contents with the model, reopen it with our engine, write more, and start the next
writer on the same, crashed, overlay.

What SIGKILL does and does not test: the kernel keeps every ``pwrite`` that returned, so this
catches metadata held only in our process (L2 tables, refcounts not yet written) and on-disk
ordering within the process — not a power cut, where unsynced page-cache data is lost too.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from qcow2_crash_writer import FLUSH_EVERY, CrashOp, crash_ops
from qcow2_oracle import (
    LAYOUTS,
    QEMU_MISSING,
    Layout,
    assert_same,
    golden,
    qemu_img_check,
    qemu_read_all,
    sha256_file,
)

if QEMU_MISSING is not None:
    pytest.skip(QEMU_MISSING, allow_module_level=True)

from diskless.storage.qcow2 import Qcow2Image, create_qcow2

pytestmark = pytest.mark.slow

WRITER = Path(__file__).with_name("qcow2_crash_writer.py")
BUDGET = float(os.environ.get("QCOW2_CRASH_SECONDS", "10"))  # per parametrized case
MIN_ROUNDS, MAX_ROUNDS = 6, 40


class Writer:
    """The writer subprocess and a thread draining its stdout (it must never block on a pipe)."""

    def __init__(self, path: Path, seed: int, mode: str, cluster_size: int) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(seed), mode, str(cluster_size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("READY"):
                self.ready.set()
        self.ready.set()  # EOF: the writer died on its own

    def kill_after(self, delay: float) -> None:
        if not self.ready.wait(timeout=60):
            self.proc.kill()
            raise AssertionError("writer never became ready")
        time.sleep(delay)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=60)
        assert self.proc.stderr is not None
        stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        if self.proc.returncode != -signal.SIGKILL:
            raise AssertionError(
                f"writer exited by itself with {self.proc.returncode} before the kill:\n{stderr}"
            )

    def acknowledged(self) -> int:
        """Operations durable by the writer's own account (last FLUSHED/ACKED line)."""
        count = 0
        for line in self.lines:
            word, _, n = line.partition(" ")
            if word in ("FLUSHED", "ACKED"):
                count = int(n)
        return count


def apply(model: bytearray, op: CrashOp) -> None:
    model[op.offset : op.offset + op.length] = op.data()


def run_crash_rounds(layout: Layout, mode: str, tmp_path: Path) -> int:
    path = tmp_path / "overlay.qcow2"
    create_qcow2(path, **layout.create_args())
    size = layout.disk_size()
    base = bytearray(layout.initial_content())  # the contents when the round's writer starts
    window = 1 if mode == "fua" else FLUSH_EVERY  # ops that may have run after the last ack
    rng = random.Random(f"{layout.name}-{mode}")
    started = time.monotonic()
    rounds = 0
    leaks_seen = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.monotonic() - started < BUDGET):
        rounds += 1
        seed = rng.randrange(1 << 30)
        writer = Writer(path, seed, mode, layout.cluster_size)
        roll = rng.random()  # kill early (maybe before the first flush), soon, or later
        writer.kill_after(0.0 if roll < 0.1 else rng.uniform(0.001, 0.4 if roll > 0.4 else 0.04))
        acked = writer.acknowledged()
        where = f"round {rounds} (seed {seed}, {acked} ops acknowledged, mode {mode})"

        check = qemu_img_check(path)
        if check.returncode not in (0, 3):
            raise AssertionError(f"{where}: crashed overlay is corrupt: {check.describe()}")
        leaks_seen += check.returncode == 3

        ops = list(itertools.islice(crash_ops(seed, size, layout.cluster_size), acked + window))
        expected = bytearray(base)
        for op in ops[:acked]:
            apply(expected, op)
        actual = qemu_read_all(path)
        for op in ops[acked:]:  # may or may not have reached the disk: take what is there
            expected[op.offset : op.offset + op.length] = actual[op.offset : op.offset + op.length]
        assert_same(actual, expected, f"{where}: acknowledged writes after the crash")

        # Our engine reopens the crashed overlay, reads what qemu reads, and keeps writing.
        with Qcow2Image(path) as dev:
            assert_same(dev.read(0, size), actual, f"{where}: our read of the crashed overlay")
            model = bytearray(actual)
            for op in itertools.islice(crash_ops(seed + 1, size, layout.cluster_size), 5):
                dev.write(op.offset, op.data())
                apply(model, op)
            dev.flush()
        check = qemu_img_check(path)
        if check.returncode not in (0, 3):
            raise AssertionError(
                f"{where}: writes after reopening corrupted it: {check.describe()}"
            )
        assert_same(qemu_read_all(path), model, f"{where}: writes after reopening")
        base = model
    if layout.backing is not None:
        g = golden(layout.backing)
        assert sha256_file(g.path) == g.sha256, "golden modified"
    return leaks_seen


CRASH_LAYOUTS = [LAYOUTS[0], LAYOUTS[1], LAYOUTS[2], LAYOUTS[3]]


@pytest.mark.parametrize("layout", CRASH_LAYOUTS, ids=[layout.name for layout in CRASH_LAYOUTS])
def test_sigkill_after_flush(layout: Layout, tmp_path: Path) -> None:
    run_crash_rounds(layout, "flush", tmp_path)


@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1]], ids=["std64k-raw", "ext128k-raw"])
def test_sigkill_with_fua_writes(layout: Layout, tmp_path: Path) -> None:
    run_crash_rounds(layout, "fua", tmp_path)
