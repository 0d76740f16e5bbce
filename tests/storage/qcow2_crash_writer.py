"""Writer process for test_qcow2_crash.py: random guest writes until it is SIGKILLed.

Usage: ``python qcow2_crash_writer.py OVERLAY SEED MODE CLUSTER_SIZE``, where MODE is ``flush``
(plain writes, ``flush()`` every FLUSH_EVERY operations, then ``FLUSHED <n>`` on stdout) or
``fua`` (every write with ``fua=True``, then ``ACKED <n>``). ``n`` counts the operations applied
so far. The operations are a pure function of (SEED, disk size, CLUSTER_SIZE), see
:func:`crash_ops`, so the parent recomputes exactly what was written.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

FLUSH_EVERY = 6
MAX_LEN = 200 * 1024


@dataclass(frozen=True)
class CrashOp:
    kind: str  # "write", "zero" (write_zeroes, unmap), "discard"
    offset: int
    length: int
    seed: int

    def data(self) -> bytes:
        if self.kind != "write":
            return bytes(self.length)
        return random.Random(self.seed).randbytes(self.length)


def crash_ops(seed: int, disk_size: int, cluster_size: int) -> Iterator[CrashOp]:
    """An endless deterministic stream: mostly writes, some cluster-aligned and many not, spread
    over the whole disk so that new L2 tables and refcount blocks keep being needed."""
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        roll = rng.random()
        if roll < 0.5:
            offset = rng.randrange(disk_size)
            length = rng.randint(1, MAX_LEN)
        elif roll < 0.85:
            offset = rng.randrange(disk_size // cluster_size) * cluster_size
            length = rng.choice([512, 4096, cluster_size, 2 * cluster_size + 512])
        else:
            offset = rng.randrange(disk_size // 512) * 512
            length = rng.randint(1, 64) * 512
        length = max(1, min(length, disk_size - offset))
        kind = "write" if roll < 0.9 else ("zero" if roll < 0.95 else "discard")
        yield CrashOp(kind, offset, length, seed * 1_000_003 + n)


def main(argv: list[str]) -> None:
    from diskless.storage.qcow2 import Qcow2Image

    path, seed, mode, cluster_size = argv[0], int(argv[1]), argv[2], int(argv[3])
    out = sys.stdout
    dev = Qcow2Image(path)
    out.write("READY\n")
    out.flush()
    fua = mode == "fua"
    for n, op in enumerate(crash_ops(seed, dev.size, cluster_size), start=1):
        if op.kind == "write":
            dev.write(op.offset, op.data(), fua=fua)
        elif op.kind == "zero":
            dev.write_zeroes(op.offset, op.length, unmap=True, fua=fua)
        else:
            dev.discard(op.offset, op.length)
            if fua:
                dev.flush()  # discard has no FUA flag: a flush makes it durable
        if fua:
            out.write(f"ACKED {n}\n")
            out.flush()
        elif n % FLUSH_EVERY == 0:
            dev.flush()
            out.write(f"FLUSHED {n}\n")
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
