"""Storage-engine benchmark: our qcow2 overlays against raw preadv and against qemu-img bench.

    uv run python bench/storage.py [--size-mib 1024] [--seconds 1.0] [--reps 3] [--write-docs]

One run builds a golden raw image (non-zero data, written once, so it is in the page cache), two
empty overlays on it (64 KiB clusters with standard L2 entries = qemu's default; 128 KiB clusters
with extended L2 entries = ours), and measures at queue depth 1, all from one thread:

* reads through the empty overlays (every byte comes from the golden image): sequential 1 MiB and
  strided 4 KiB, via ``read()``, ``readinto()``, ``read_plan()`` + preadv (``fill_from_plan``) and
  ``read_plan()`` + ``os.sendfile`` to /dev/null (the zero-copy path the iSCSI target uses);
  baselines: ``os.preadv`` / ``os.sendfile`` straight from the raw golden file;
* 4 KiB first writes (each one allocates a cluster and copies the rest of it, or with extended L2
  only the 4 KiB subcluster, from the golden image), the flush after them, and 4 KiB rewrites;
* the same workloads with ``qemu-img bench -d 1`` on the same files (``-t writeback`` uses the page
  cache like we do; ``-t none`` is O_DIRECT), as the reference;
* how long recreating an overlay (disk reset) takes.

"4 KiB random" offsets are ``k * STEP mod size`` with a large odd STEP, the pattern ``qemu-img
bench -S STEP`` produces, so both engines touch the same blocks in the same order. Every figure is
the median of ``--reps`` repetitions, interleaved so that drift hits every row alike; each
repetition stops after ``--seconds`` or its operation count, whichever comes first; one unrecorded
warm-up pass of the reads comes first. Reads are
warm-cache unless the row says cold (``posix_fadvise(DONTNEED)`` on the golden image first).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from diskless.storage.blockdev import (
    BlockDevice,
    BufferExtent,
    FileExtent,
    ZeroExtent,
    fill_from_plan,
)
from diskless.storage.qcow2 import Qcow2Image, create_qcow2

KiB = 1024
MiB = 1024 * KiB
READ_STEP = 4096 * 500_009  # odd multiple of 4 KiB (< 2^31, qemu-img's limit): visits every block
WRITE_STEP = 128 * KiB * 4099  # odd multiple of 128 KiB: every write lands in a fresh cluster
DOCS_BEGIN = "<!-- BEGIN storage-engine"
DOCS_END = "<!-- END storage-engine -->"


@dataclass(frozen=True)
class Layout:
    name: str
    cluster_size: int
    extended_l2: bool


LAYOUTS = [Layout("std64k", 65536, False), Layout("ext128k", 131072, True)]


@dataclass
class Sample:
    """One repetition: operations, bytes and seconds, plus per-operation latencies."""

    ops: int
    nbytes: int
    seconds: float
    latencies: list[float] = field(default_factory=list)


@dataclass
class Row:
    workload: str
    backend: str
    unit: str  # "MB/s", "IOPS" or "ms"
    samples: list[Sample] = field(default_factory=list)
    baseline: Row | None = None
    note: str = ""

    def value(self, sample: Sample) -> float:
        if self.unit == "MB/s":
            return sample.nbytes / sample.seconds / 1e6
        if self.unit == "IOPS":
            return sample.ops / sample.seconds
        return sample.seconds * 1000

    def median(self) -> float:
        return statistics.median(self.value(s) for s in self.samples)

    def spread(self) -> tuple[float, float]:
        values = [self.value(s) for s in self.samples]
        return min(values), max(values)

    def latency(self) -> str:
        pooled = sorted(x for s in self.samples for x in s.latencies)
        if not pooled:
            return "—"
        p50 = pooled[len(pooled) // 2]
        p99 = pooled[min(len(pooled) - 1, int(len(pooled) * 0.99))]
        return f"{p50 * 1e6:,.0f} / {p99 * 1e6:,.0f} µs"

    def ratio(self) -> str:
        if self.baseline is None or not self.baseline.samples:
            return "—"
        return f"{self.median() / self.baseline.median():.2f}"


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


# --------------------------------------------------------------------------------------------
# Files


def make_golden(path: Path, size: int) -> None:
    """Non-zero, non-repeating-looking data; written with pwrite in 1 MiB pieces and synced."""
    block = random.Random(42).randbytes(4 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(size // MiB):
            piece = bytearray(block[(i % 4) * MiB : (i % 4 + 1) * MiB])
            piece[:8] = i.to_bytes(8, "little")
            os.pwrite(fd, piece, i * MiB)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def new_overlay(path: Path, golden: Path, layout: Layout) -> None:
    path.unlink(missing_ok=True)
    create_qcow2(
        path,
        backing=str(golden),
        backing_format="raw",
        cluster_size=layout.cluster_size,
        extended_l2=layout.extended_l2,
    )


# --------------------------------------------------------------------------------------------
# Our loops


def offsets(kind: str, size: int, io_size: int, count: int) -> list[int]:
    if kind == "seq":
        return [i * io_size for i in range(min(count, size // io_size))]
    step = READ_STEP if kind == "rand" else WRITE_STEP
    return [(k * step) % size for k in range(count)]


def timed(op: Callable[[int], None], where: list[int], io_size: int, budget: float) -> Sample:
    clock = time.perf_counter
    latencies = []
    start = clock()
    deadline = start + budget
    for offset in where:
        t0 = clock()
        op(offset)
        t1 = clock()
        latencies.append(t1 - t0)
        if t1 > deadline:
            break
    seconds = clock() - start
    return Sample(len(latencies), len(latencies) * io_size, seconds, latencies)


def read_ops(dev: BlockDevice, io_size: int, devnull: int) -> dict[str, Callable[[int], None]]:
    buf = bytearray(io_size)
    view = memoryview(buf)
    zeros = bytes(io_size)

    def via_read(offset: int) -> None:
        dev.read(offset, io_size)

    def via_readinto(offset: int) -> None:
        dev.readinto(offset, view)

    def via_plan_preadv(offset: int) -> None:
        fill_from_plan(dev.read_plan(offset, io_size), view)

    def via_plan_sendfile(offset: int) -> None:
        for extent in dev.read_plan(offset, io_size):
            if isinstance(extent, FileExtent):
                sent, pos, left = 0, extent.offset, extent.length
                while left:
                    sent = os.sendfile(devnull, extent.fd, pos, left)
                    pos, left = pos + sent, left - sent
            elif isinstance(extent, ZeroExtent):
                os.write(devnull, zeros[: extent.length])
            elif isinstance(extent, BufferExtent):
                os.write(devnull, extent.data)

    return {
        "read()": via_read,
        "readinto()": via_readinto,
        "read_plan + preadv": via_plan_preadv,
        "read_plan + sendfile": via_plan_sendfile,
    }


def writer(dev: BlockDevice, data: bytes, offset: int) -> None:
    dev.write(offset, data)


def raw_ops(fd: int, io_size: int, devnull: int) -> dict[str, Callable[[int], None]]:
    view = memoryview(bytearray(io_size))

    def preadv(offset: int) -> None:
        os.preadv(fd, [view], offset)

    def sendfile(offset: int) -> None:
        left, pos = io_size, offset
        while left:
            sent = os.sendfile(devnull, fd, pos, left)
            pos, left = pos + sent, left - sent

    return {"preadv": preadv, "sendfile": sendfile}


# --------------------------------------------------------------------------------------------
# qemu-img bench


def qemu_bench(args: list[str]) -> float:
    """Seconds ``qemu-img bench`` reports for its run."""
    proc = subprocess.run(
        ["qemu-img", "bench", *args], capture_output=True, text=True, check=True, timeout=600
    )
    match = re.search(r"Run completed in ([0-9.]+) seconds", proc.stdout)
    if match is None:
        raise RuntimeError(f"unexpected qemu-img bench output: {proc.stdout}{proc.stderr}")
    return float(match.group(1))


def qemu_sample(args: list[str], count: int, io_size: int) -> Sample:
    seconds = qemu_bench(args)
    return Sample(count, count * io_size, max(seconds, 1e-6))


# --------------------------------------------------------------------------------------------
# The run


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.dir = workdir
        self.size = args.size_mib * MiB
        self.golden = workdir / "golden.raw"
        self.rows: dict[str, Row] = {}
        self.order: list[str] = []

    def row(self, key: str, workload: str, backend: str, unit: str, baseline: str = "") -> Row:
        if key not in self.rows:
            base = self.rows.get(baseline) if baseline else None
            self.rows[key] = Row(workload, backend, unit, baseline=base)
            self.order.append(key)
        return self.rows[key]

    def run(self) -> None:
        t0 = time.monotonic()
        print(f"building {self.args.size_mib} MiB golden image in {self.dir} ...", flush=True)
        make_golden(self.golden, self.size)
        print(f"  {time.monotonic() - t0:.1f} s", flush=True)
        self.warm_up()
        for rep in range(self.args.reps):
            print(f"repetition {rep + 1}/{self.args.reps}", flush=True)
            self.reads(cold=False)
            if self.args.cold:
                self.reads(cold=True)
            self.writes()
            self.reset()
            if shutil.which("qemu-img") and not self.args.no_qemu:
                self.qemu_reads()
                self.qemu_writes()

    def warm_up(self) -> None:
        """One unrecorded pass of the read workloads: page cache, overlays, CPU caches."""
        saved = self.rows, self.order
        self.rows, self.order = {}, []
        try:
            self.reads(cold=False)
        finally:
            self.rows, self.order = saved

    # -- ours ----------------------------------------------------------------------------------

    def reads(self, *, cold: bool) -> None:
        budget = self.args.seconds
        devnull = os.open(os.devnull, os.O_WRONLY)
        workloads = [("seq", MiB, self.size // MiB, "MB/s")]
        if not cold:
            workloads.append(("rand", 4 * KiB, self.args.read_count, "IOPS"))
        try:
            for kind, io_size, count, unit in workloads:
                label = ("sequential read 1 MiB" if kind == "seq" else "random read 4 KiB") + (
                    " (cold)" if cold else ""
                )
                where = offsets(kind, self.size, io_size, count)
                fd = os.open(self.golden, os.O_RDONLY)
                try:
                    for name, op in raw_ops(fd, io_size, devnull).items():
                        if cold:
                            drop_cache(self.golden)
                        key = f"{label}|raw {name}"
                        row = self.row(key, label, f"raw file, {name}", unit)
                        row.note = "baseline"
                        row.samples.append(timed(op, where, io_size, budget))
                finally:
                    os.close(fd)
                for layout in LAYOUTS:
                    overlay = self.dir / f"empty-{layout.name}.qcow2"
                    if not overlay.exists():
                        new_overlay(overlay, self.golden, layout)
                    with Qcow2Image(overlay, read_only=True) as dev:
                        for name, op in read_ops(dev, io_size, devnull).items():
                            if cold and name not in ("readinto()", "read_plan + sendfile"):
                                continue
                            if cold:
                                drop_cache(self.golden)
                            base = "sendfile" if "sendfile" in name else "preadv"
                            row = self.row(
                                f"{label}|{layout.name} {name}",
                                label,
                                f"empty overlay {layout.name}, {name}",
                                unit,
                                baseline=f"{label}|raw {base}",
                            )
                            row.samples.append(timed(op, where, io_size, budget))
        finally:
            os.close(devnull)

    def writes(self) -> None:
        count = self.args.write_count
        io_size = 4 * KiB
        where = offsets("write", self.size, io_size, count)
        budget = max(self.args.seconds, 5.0)  # first writes must all complete for the flush row
        for layout in LAYOUTS:
            overlay = self.dir / f"write-{layout.name}.qcow2"
            new_overlay(overlay, self.golden, layout)
            data = bytes([0xA5]) * io_size
            again = bytes([0x5A]) * io_size
            with Qcow2Image(overlay) as dev:
                first = self.row(
                    f"first|{layout.name}",
                    "first write 4 KiB (allocating, copy-on-write)",
                    f"overlay {layout.name}",
                    "IOPS",
                )
                write_first = functools.partial(writer, dev, data)
                first.samples.append(timed(write_first, where, io_size, budget))
                t0 = time.perf_counter()
                dev.flush()
                flush = self.row(
                    f"flush|{layout.name}",
                    f"flush after {count:,} first writes",
                    f"overlay {layout.name}",
                    "ms",
                )
                flush.samples.append(Sample(1, 0, time.perf_counter() - t0))
                rewrite = self.row(
                    f"rewrite|{layout.name}",
                    "rewrite 4 KiB (allocated)",
                    f"overlay {layout.name}",
                    "IOPS",
                )
                rewrite.samples.append(
                    timed(functools.partial(writer, dev, again), where, io_size, self.args.seconds)
                )
            first.note = f"{len(where):,} writes, no flush in between"

    def reset(self) -> None:
        layout = LAYOUTS[1]
        overlay = self.dir / "reset.qcow2"
        row = self.row("reset", "disk reset (recreate an empty overlay)", "create_qcow2", "ms")
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            create_qcow2(
                overlay,
                backing=str(self.golden),
                backing_format="raw",
                cluster_size=layout.cluster_size,
                extended_l2=True,
            )
            times.append(time.perf_counter() - t0)
        row.samples.append(Sample(1, 0, statistics.median(times)))
        row.note = "atomic replace of the file, median of 10"

    # -- qemu-img bench ------------------------------------------------------------------------

    def qemu_reads(self) -> None:
        for cache in ("writeback", "none"):
            for kind, io_size, count, unit in (
                ("seq", MiB, self.size // MiB, "MB/s"),
                ("rand", 4 * KiB, self.args.read_count, "IOPS"),
            ):
                label = "sequential read 1 MiB" if kind == "seq" else "random read 4 KiB"
                step = [] if kind == "seq" else ["-S", str(READ_STEP)]
                common = ["-d", "1", "-t", cache, "-c", str(count), "-s", str(io_size), *step]
                raw = self.row(
                    f"{label}|qemu raw {cache}", label, f"qemu-img bench raw -t {cache}", unit
                )
                raw.samples.append(
                    qemu_sample([*common, "-f", "raw", str(self.golden)], count, io_size)
                )
                raw.note = "baseline for the qemu rows below"
                for layout in LAYOUTS:
                    overlay = self.dir / f"empty-{layout.name}.qcow2"
                    row = self.row(
                        f"{label}|qemu {layout.name} {cache}",
                        label,
                        f"qemu-img bench empty overlay {layout.name} -t {cache}",
                        unit,
                        baseline=f"{label}|qemu raw {cache}",
                    )
                    row.samples.append(
                        qemu_sample([*common, "-f", "qcow2", str(overlay)], count, io_size)
                    )

    def qemu_writes(self) -> None:
        count = self.args.write_count
        io_size = 4 * KiB
        for layout in LAYOUTS:
            overlay = self.dir / f"qwrite-{layout.name}.qcow2"
            new_overlay(overlay, self.golden, layout)
            args = ["-w", "-d", "1", "-t", "writeback", "-c", str(count), "-s", str(io_size),
                    "-S", str(WRITE_STEP), "-f", "qcow2"]  # fmt: skip
            first = self.row(
                f"first|qemu {layout.name}",
                "first write 4 KiB (allocating, copy-on-write)",
                f"qemu-img bench overlay {layout.name} -t writeback",
                "IOPS",
            )
            first.samples.append(
                qemu_sample([*args, "--pattern=165", str(overlay)], count, io_size)
            )
            rewrite = self.row(
                f"rewrite|qemu {layout.name}",
                "rewrite 4 KiB (allocated)",
                f"qemu-img bench overlay {layout.name} -t writeback",
                "IOPS",
            )
            rewrite.samples.append(
                qemu_sample([*args, "--pattern=90", str(overlay)], count, io_size)
            )
        for layout in LAYOUTS:  # our write rows are compared with qemu's
            for what in ("first", "rewrite"):
                ours = self.rows.get(f"{what}|{layout.name}")
                if ours is not None:
                    ours.baseline = self.rows[f"{what}|qemu {layout.name}"]

    # -- output --------------------------------------------------------------------------------

    def summary(self) -> str:
        """The headline ratios, one line each."""
        lines = []
        for label, goal in (("sequential read 1 MiB", 0.9), ("random read 4 KiB", 0.9)):
            for layout in LAYOUTS:
                parts = []
                for name in ("readinto()", "read_plan + preadv", "read_plan + sendfile"):
                    row = self.rows.get(f"{label}|{layout.name} {name}")
                    if row is not None:
                        parts.append(f"{name} {row.ratio()}")
                if parts:
                    verdict = all(
                        float(p.rsplit(" ", 1)[1]) >= goal for p in parts if p[-1].isdigit()
                    )
                    lines.append(
                        f"- {label}, empty {layout.name} overlay / raw file: {', '.join(parts)} "
                        f"(goal >= {goal}: {'met' if verdict else 'NOT met'})"
                    )
        for what, label in (("first", "first writes"), ("rewrite", "rewrites")):
            for layout in LAYOUTS:
                row = self.rows.get(f"{what}|{layout.name}")
                if row is not None and row.baseline is not None:
                    lines.append(
                        f"- 4 KiB {label}, {layout.name}: ours / qemu-img bench = {row.ratio()}"
                    )
        return "\n".join(lines)

    def table(self) -> str:
        lines = [
            "| Workload | Backend | Median (min-max) | Latency p50 / p99 | Ratio | Notes |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for key in self.order:
            row = self.rows[key]
            lo, hi = row.spread()
            value = f"{fmt(row.median())} {row.unit} ({fmt(lo)}-{fmt(hi)})"
            lines.append(
                f"| {row.workload} | {row.backend} | {value} | {row.latency()} | "
                f"{row.ratio()} | {row.note} |"
            )
        return "\n".join(lines)


def machine_notes(args: argparse.Namespace, workdir: Path) -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    fs = subprocess.run(
        ["df", "--output=fstype,source", str(workdir)], capture_output=True, text=True, check=False
    ).stdout.split("\n")[1:2]
    qemu = subprocess.run(
        ["qemu-img", "--version"], capture_output=True, text=True, check=False
    ).stdout.split("\n")[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return (
        f"{datetime.date.today().isoformat()}, commit {commit or '?'} (plus uncommitted work), "
        f"{os.cpu_count()} vCPU {cpu}, {mem:.0f} GiB RAM, files on {' '.join(fs).strip()} "
        f"(under {workdir.parent}), Python {platform.python_version()}, {qemu}"
    )


def write_docs(text: str) -> Path:
    docs = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    content = docs.read_text()
    begin = content.index(DOCS_BEGIN)
    begin = content.index("\n", begin) + 1
    end = content.index(DOCS_END)
    docs.write_text(content[:begin] + text + content[end:])
    return docs


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="golden image size")
    parser.add_argument("--seconds", type=float, default=1.0, help="cap per measurement")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    parser.add_argument("--read-count", type=int, default=20000, help="4 KiB reads per rep")
    parser.add_argument("--write-count", type=int, default=4000, help="4 KiB writes per rep")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /tmp)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="also measure sequential reads after posix_fadvise(DONTNEED) on the golden image "
        "(guest-cold only: the host may still cache the virtual disk, so these are noisy)",
    )
    parser.add_argument("--no-qemu", action="store_true", help="skip qemu-img bench rows")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.size_mib * MiB < WRITE_STEP // 4099 * args.write_count:
        parser.error("--write-count too large: writes must land in distinct 128 KiB slots")
    return args


@contextlib.contextmanager
def workdir(base: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="diskless-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    with workdir(args.dir) as d:
        bench = Bench(args, d)
        bench.run()
        notes = machine_notes(args, d)
    command = "uv run python bench/storage.py " + " ".join(argv)
    table = bench.table()
    summary = bench.summary()
    print()
    print(table)
    print()
    print(summary)
    elapsed = time.monotonic() - started
    print(f"\n{notes}\ntotal {elapsed:.0f} s")
    if args.write_docs:
        text = render_docs(command.strip(), notes, table, summary, args=args, elapsed=elapsed)
        print(f"updated {write_docs(text)}")


def render_docs(
    command: str,
    notes: str,
    table: str,
    summary: str,
    *,
    args: argparse.Namespace,
    elapsed: float,
) -> str:
    return f"""## Storage engine

Measured {notes}. Command: `{command}` ({elapsed:.0f} s).

Queue depth 1, one thread. Cells: median (min-max) of {args.reps} interleaved repetitions, each
capped at {args.seconds:g} s or its operation count, after one unrecorded warm-up pass; latency
percentiles pooled over all repetitions. **Warm cache**: the {args.size_mib} MiB golden image was
just written and fits in RAM, so reads come from the page cache, except rows marked *cold*
(`posix_fadvise(DONTNEED)` on the golden image before each repetition; the files are on the VM's
virtio disk, which the host may cache too). "Ratio" divides by the row named baseline: our reads
by the raw file read the same way (`preadv` or `sendfile` to /dev/null), qemu's overlay reads by
`qemu-img bench` of the raw file, our writes by `qemu-img bench` on an identical overlay. Random
4 KiB offsets are `k * {READ_STEP} mod size` (reads) and `k * {WRITE_STEP} mod size` (writes, one
per fresh 128 KiB slot), exactly what `qemu-img bench -S` visits. `qemu-img bench` hands each
request to its own thread pool, which costs more per 4 KiB request than a direct `preadv` from
Python; `-t none` is O_DIRECT (no page cache) and shown for reference only. This is a shared
2-vCPU VM: medians move by up to ±30% between runs (research/baselines.md), so compare ratios
from one run, not absolute figures across runs.

{summary}

{table}

<!-- Reproduce: {command} -->
"""


if __name__ == "__main__":
    main(sys.argv[1:])
