"""iSCSI target benchmark: our asyncio target against Debian's tgtd, with libiscsi and qemu clients.

    .venv/bin/python bench/iscsi.py [--size-mib 1024] [--runtime 5] [--runs 3]
                                    [--sessions 1,8,32,64] [--no-profile]
                                    [--keep-profiles DIR] [--write-docs]

One run starts, side by side on 127.0.0.1 (free ports):

* ours: ``diskless export SCRATCH`` (the product CLI, LUN 0) for the single-session rows, and for
  the storm rows this script in ``--serve-storm`` mode: one ``IscsiPortal`` with one target per
  session, each a qcow2 overlay (the product's default layout: 128 KiB clusters, extended L2) over
  one shared golden raw image;
* tgt: ``tgtd -f`` with target ``...:scratch`` (LUN 1 = the same scratch raw file) and
  ``...:storm1..N`` (LUN 1 = the golden raw file itself, ``readonly=1``). tgt has no
  copy-on-write, so its storm reads skip the overlay lookup ours does: this favours tgt.

Both files live in a tmpfs (/dev/shm) when it has room, so the comparison is of the targets, not
of a disk. Workloads (clients are C: libiscsi's ``iscsi-perf``, QEMU's ``qemu-img bench``):

* sequential 1 MiB reads: ``iscsi-perf -b 2048 -m 1`` (and ``-m 8``);
* sequential 1 MiB writes: ``qemu-img bench -w -s 1M -d 1`` (and ``-d 8``), a fixed count;
* 4 KiB random reads: ``iscsi-perf -r -b 8 -m 1`` and ``-m 32``;
* boot storm: N ``iscsi-perf -b 128 -m 4`` processes at once (sequential 64 KiB reads, 4 in
  flight: iPXE's loader reads 63.5 KiB blocks and the OS phase keeps ~4 in flight), each logged
  in to its own target with its own initiator name; aggregate = the sum of their averages;
* a control storm at the largest N where our targets export the golden raw file itself
  (read-only, as tgt's do), so the gap to the overlay row is what the overlays cost.

Every ``iscsi-perf`` runs ``--runtime`` seconds and reports ``iops average N``; its "MB/s" is
MiB/s, so MB/s here is recomputed as IOPS x request size / 10^6. Runs are interleaved (ours,
tgt, then tgt, ours, ...) after one unrecorded warm-up pass; cells are the median (min-max) of
``--runs``. Server CPU is utime+stime from /proc/<pid>/stat summed over the server's process tree
over each measured interval; "other" is the machine's busy CPU minus the server's, the clients'
and this script's own, i.e. load from anyone else on the machine (the load average would count
our own clients). Unless ``--no-profile``, py-spy (not a project dependency: ``uv pip install
--python .venv/bin/python py-spy``) then samples our target under the 4 KiB QD32, 1 MiB
sequential and largest storm loads and the hottest functions are listed (``--keep-profiles``
keeps its collapsed stacks). Nothing else is written outside the temporary work directory except,
with ``--write-docs``, the ``iSCSI target`` section of docs/benchmarks.md (between
``<!-- BEGIN iscsi -->`` and ``<!-- END iscsi -->``; the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchdocs import write_section

KiB = 1024
MiB = 1024 * KiB
ROOT = Path(__file__).resolve().parent.parent
IQN = "iqn.2026-11.org.diskless.bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ISCSI_PERF = shutil.which("iscsi-perf")
QEMU_IMG = shutil.which("qemu-img")
TGTD = shutil.which("tgtd")
TGTADM = shutil.which("tgtadm")
_AVERAGE = re.compile(r"iops average (\d+) \((\d+) MB/s\)")
_COMPLETED = re.compile(r"Run completed in ([0-9.]+) seconds")


# --------------------------------------------------------------------------------------------
# Workloads and samples


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    unit: str  # "MB/s" or "IOPS"
    role: str  # "scratch" (one target, one session) or "storm" (one target per session)
    tool: str  # "perf", "qemu-read", "qemu-write" or "storm"
    request: int  # bytes per command
    depth: int
    random: bool = False
    sessions: int = 1
    goal: float | None = None
    raw: bool = False  # storm without overlays: ours exports the golden raw file read-only too

    def target(self, label: str, session: int) -> str:
        if self.role == "scratch":
            return "scratch"
        return f"raw{session}" if self.raw and label == "ours" else f"storm{session}"


@dataclass
class Sample:
    value: float
    commands: float
    wall: float
    server_cpu: float  # CPU-seconds of the server's process tree over the wall time
    client_cpu: float
    other_cpu: float  # everyone else's busy CPU-seconds over the wall time
    load1: float
    errors: int = 0

    @property
    def server_pct(self) -> float:
        return 100 * self.server_cpu / self.wall

    @property
    def client_pct(self) -> float:
        return 100 * self.client_cpu / self.wall

    @property
    def other_pct(self) -> float:
        return 100 * self.other_cpu / self.wall

    @property
    def us_per_command(self) -> float:
        return 1e6 * self.server_cpu / self.commands if self.commands else float("nan")


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)

    def med(self, attr: str = "value") -> float:
        return float(statistics.median(getattr(s, attr) for s in self.samples))

    def spread(self, attr: str = "value") -> tuple[float, float]:
        values = [getattr(s, attr) for s in self.samples]
        return min(values), max(values)


def workloads(sessions: list[int]) -> list[Workload]:
    rows = [
        Workload(
            "seq-read-1m-qd1",
            "sequential read 1 MiB, QD1, iscsi-perf",
            "MB/s",
            "scratch",
            "perf",
            MiB,
            1,
            goal=1.2,
        ),
        Workload(
            "seq-read-1m-qd8",
            "sequential read 1 MiB, QD8, iscsi-perf",
            "MB/s",
            "scratch",
            "perf",
            MiB,
            8,
            goal=1.2,
        ),
        Workload(
            "seq-read-1m-qd1-qemu",
            "sequential read 1 MiB, QD1, qemu-img",
            "MB/s",
            "scratch",
            "qemu-read",
            MiB,
            1,
            goal=1.2,
        ),
        Workload(
            "seq-read-1m-qd8-qemu",
            "sequential read 1 MiB, QD8, qemu-img",
            "MB/s",
            "scratch",
            "qemu-read",
            MiB,
            8,
            goal=1.2,
        ),
        Workload(
            "seq-write-1m-qd1",
            "sequential write 1 MiB, QD1, qemu-img",
            "MB/s",
            "scratch",
            "qemu-write",
            MiB,
            1,
        ),
        Workload(
            "seq-write-1m-qd8",
            "sequential write 1 MiB, QD8, qemu-img",
            "MB/s",
            "scratch",
            "qemu-write",
            MiB,
            8,
        ),
        Workload(
            "rand-read-4k-qd1",
            "random read 4 KiB, QD1",
            "IOPS",
            "scratch",
            "perf",
            4 * KiB,
            1,
            random=True,
        ),
        Workload(
            "rand-read-4k-qd32",
            "random read 4 KiB, QD32",
            "IOPS",
            "scratch",
            "perf",
            4 * KiB,
            32,
            random=True,
            goal=1.0,
        ),
    ]
    top = max(sessions)
    for n in sessions:
        rows.append(
            Workload(
                f"storm-{n}",
                f"storm: {n} session{'s' * (n != 1)}, seq read 64 KiB QD4 each",
                "MB/s",
                "storm",
                "storm",
                64 * KiB,
                4,
                sessions=n,
                goal=1.2 if n == top and n >= 64 else None,
            )
        )
    rows.append(
        Workload(
            f"storm-{top}-raw",
            f"storm: {top} sessions, ours without overlays (control)",
            "MB/s",
            "storm",
            "storm",
            64 * KiB,
            4,
            sessions=top,
            raw=True,
        )
    )
    return rows


# --------------------------------------------------------------------------------------------
# CPU accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def tree_cpu(root: int) -> float:
    """utime+stime (seconds) of ``root`` and its live descendants (threads are included)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        # fields[0] is state (field 3); ppid is field 4, utime 14, stime 15
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total = 0.0
    for pid, seconds in times.items():
        walk = pid
        for _ in range(64):
            if walk == root:
                total += seconds
                break
            walk = parents.get(walk, 0)
            if walk <= 1:
                break
    return total


def machine_busy() -> float:
    """Busy CPU-seconds of the whole machine since boot (all but idle and iowait)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    guest = sum(parts[8:10]) if len(parts) > 9 else 0  # already inside user/nice
    return (sum(parts) - idle - guest) / CLK_TCK


def own_cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Meter:
    """CPU of one server, of our clients, and of everything else over one interval."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.load = load1()
        self.server0 = tree_cpu(server_pid)
        self.self0, self.kids0 = own_cpu()
        self.busy0 = machine_busy()
        self.t0 = time.monotonic()

    def stop(self) -> tuple[float, float, float, float]:
        """(wall, server CPU, client CPU, other CPU), after every client was reaped."""
        wall = time.monotonic() - self.t0
        busy = machine_busy() - self.busy0
        server = tree_cpu(self.server_pid) - self.server0
        me, kids = own_cpu()
        clients = kids - self.kids0
        other = max(0.0, busy - server - clients - (me - self.self0))
        return wall, server, clients, other


# --------------------------------------------------------------------------------------------
# Files


def fill(path: Path, size: int, seed: int) -> None:
    """Non-zero data (no holes for either target to shortcut), stamped per MiB."""
    block = random.Random(seed).randbytes(4 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(size // MiB):
            piece = bytearray(block[(i % 4) * MiB : (i % 4 + 1) * MiB])
            piece[:8] = i.to_bytes(8, "little")
            os.pwrite(fd, piece, i * MiB)
    finally:
        os.close(fd)


def make_overlays(directory: Path, golden: Path, count: int) -> list[Path]:
    from diskless.config import StorageSettings
    from diskless.storage.qcow2 import create_qcow2

    defaults = StorageSettings()
    directory.mkdir(exist_ok=True)
    paths = []
    for i in range(1, count + 1):
        path = directory / f"storm{i}.qcow2"
        create_qcow2(
            path,
            backing=str(golden),
            backing_format="raw",
            cluster_size=defaults.overlay_cluster_size,
            extended_l2=defaults.overlay_extended_l2,
        )
        paths.append(path)
    return paths


@contextlib.contextmanager
def workdir(size: int, forced: Path | None) -> Iterator[Path]:
    base = forced
    if base is None:
        shm = Path("/dev/shm")
        with contextlib.suppress(OSError):
            stat = os.statvfs(shm)
            if stat.f_bavail * stat.f_frsize > 2 * size + 512 * MiB:
                base = shm
    path = Path(tempfile.mkdtemp(prefix="diskless-bench-iscsi-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}) before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@dataclass
class Endpoint:
    """Where one server serves one role: its process (for CPU) and the LUN URL of a target."""

    label: str
    pid: int
    port: int
    lun: int
    workers: int = 1

    def url(self, target: str) -> str:
        from diskless.boot.policy import iscsi_shard

        port = self.port + iscsi_shard(f"{IQN}:{target}", self.workers)
        return f"iscsi://127.0.0.1:{port}/{IQN}:{target}/{self.lun}"


@contextlib.contextmanager
def ours_export(scratch: Path, log: Path) -> Iterator[Endpoint]:
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "diskless"),
                "export",
                str(scratch),
                "--listen",
                f"127.0.0.1:{port}",
                "--target-name",
                f"{IQN}:scratch",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_for_port(port, process)
        yield Endpoint("ours", process.pid, port, 0)
    finally:
        stop_process(process)


@contextlib.contextmanager
def ours_storm(overlays: Path, count: int, log: Path, workers: int) -> Iterator[Endpoint]:
    port = free_port_run(workers)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-storm",
                str(overlays),
                "--port",
                str(port),
                "--count",
                str(count),
                "--iscsi-workers",
                str(workers),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        for shard in range(workers):
            wait_for_port(port + shard, process)
        yield Endpoint("ours", process.pid, port, 0, workers)
    finally:
        stop_process(process)


def free_port_run(count: int) -> int:
    """A port such that ``count`` consecutive ports from it are free."""
    for _ in range(100):
        first = free_port()
        if all(_port_free(first + offset) for offset in range(1, count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tgt_control() -> str:
    """A control number whose socket nobody uses (tgtd's -C is a small integer)."""
    for _ in range(200):
        control = str(random.randint(1000, 9999))
        if not Path(f"/var/run/tgtd/socket.{control}").exists():
            return control
    raise RuntimeError("no free tgtd control number")


@contextlib.contextmanager
def tgt(scratch: Path, golden: Path, storms: int, log: Path) -> Iterator[tuple[Endpoint, str]]:
    assert TGTD is not None
    assert TGTADM is not None
    port = free_port()
    control = _tgt_control()
    tids = [1, *range(2, storms + 2)]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [TGTD, "-f", "-C", control, "--iscsi", f"portal=127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    adm = [TGTADM, "-C", control, "--lld", "iscsi"]
    try:
        wait_for_port(port, process)
        for tid in tids:
            name = "scratch" if tid == 1 else f"storm{tid - 1}"
            backing = scratch if tid == 1 else golden
            commands = [
                ["--op", "new", "--mode", "target", "--tid", str(tid), "-T", f"{IQN}:{name}"],
                [
                    "--op",
                    "new",
                    "--mode",
                    "logicalunit",
                    "--tid",
                    str(tid),
                    "--lun",
                    "1",
                    "-b",
                    str(backing),
                ],
            ]
            if tid != 1:
                commands.append(
                    [
                        "--op",
                        "update",
                        "--mode",
                        "logicalunit",
                        "--tid",
                        str(tid),
                        "--lun",
                        "1",
                        "--params",
                        "readonly=1",
                    ]
                )
            commands.append(["--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL"])
            for args in commands:
                subprocess.run([*adm, *args], check=True, capture_output=True)
        yield Endpoint("tgt", process.pid, port, 1), control
    finally:
        # tgtd ignores SIGTERM while targets exist: offline, delete each target, then the system.
        for tid in tids:
            subprocess.run(
                [
                    *adm,
                    "--op",
                    "update",
                    "--mode",
                    "target",
                    "--tid",
                    str(tid),
                    "-n",
                    "state",
                    "-v",
                    "offline",
                ],
                check=False,
                capture_output=True,
            )
        for tid in tids:
            subprocess.run(
                [*adm, "--op", "delete", "--mode", "target", "--tid", str(tid), "--force"],
                check=False,
                capture_output=True,
            )
        subprocess.run(
            [TGTADM, "-C", control, "--op", "delete", "--mode", "system"],
            check=False,
            capture_output=True,
        )
        stop_process(process)


def serve_storm(overlays: Path, port: int, count: int, workers: int = 1) -> None:
    """``--serve-storm``: ``count`` targets ``IQN:stormN`` (each its own overlay) and ``rawN``.

    With ``workers > 1`` the targets are split over that many processes exactly as
    ``diskless serve`` splits machine disks (``iscsi.workers``): worker k on ``port + k``.
    """
    if workers <= 1:
        serve_storm_shard(overlays, port, count, 0, 1)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    shards = [
        context.Process(target=serve_storm_shard, args=(overlays, port + k, count, k, workers))
        for k in range(workers)
    ]
    for shard in shards:
        shard.start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set() and all(shard.is_alive() for shard in shards):
        stop.wait(0.2)
    for shard in shards:
        if shard.pid is not None and shard.is_alive():
            os.kill(shard.pid, signal.SIGTERM)
    for shard in shards:
        shard.join(15)


def serve_storm_shard(overlays: Path, port: int, count: int, index: int, workers: int) -> None:
    from diskless.boot.policy import iscsi_shard
    from diskless.cli.export import serve_targets
    from diskless.iscsi.discovery import TargetAccess
    from diskless.iscsi.target import TargetRegistry, disk_target
    from diskless.storage.images import open_image

    def mine(name: str) -> bool:
        return iscsi_shard(f"{IQN}:{name}", workers) == index

    storm = [i for i in range(1, count + 1) if mine(f"storm{i}")]
    devices = [open_image(overlays / f"storm{i}.qcow2") for i in storm]
    targets = [
        disk_target(device, TargetAccess(name=f"{IQN}:storm{i}"), identity_seed=f"storm{i}")
        for i, device in zip(storm, devices, strict=True)
    ]
    # The control targets rawN: the golden file itself, read-only, one open per target as tgt.
    golden = overlays.parent / "golden.raw"
    raw = [i for i in range(1, count + 1) if mine(f"raw{i}")]
    raws = [open_image(golden, read_only=True, fmt="raw") for _ in raw]
    targets += [
        disk_target(
            device, TargetAccess(name=f"{IQN}:raw{i}"), identity_seed=f"raw{i}", read_only=True
        )
        for i, device in zip(raw, raws, strict=True)
    ]
    devices += raws
    registry = TargetRegistry(targets)

    try:
        asyncio.run(serve_targets(registry, "127.0.0.1", port))
    finally:
        for device in devices:
            device.close()


# --------------------------------------------------------------------------------------------
# Clients


def perf_command(url: str, work: Workload, runtime: float, initiator: str) -> list[str]:
    assert ISCSI_PERF is not None
    command = [
        ISCSI_PERF,
        "-i",
        initiator,
        "-b",
        str(work.request // 512),
        "-m",
        str(work.depth),
        "-t",
        str(max(1, round(runtime))),
    ]
    if work.random:
        command.append("-r")
    return [*command, url]


def parse_perf(output: str) -> int | None:
    found = _AVERAGE.findall(output)
    return int(found[-1][0]) if found else None


def run_perf(endpoint: Endpoint, work: Workload, runtime: float) -> Sample:
    runtime = max(1, round(runtime))
    url = endpoint.url("scratch")
    meter = Meter(endpoint.pid)
    done = subprocess.run(
        perf_command(url, work, runtime, f"{IQN}:client-single"),
        capture_output=True,
        text=True,
        timeout=runtime + 60,
        check=False,
    )
    wall, server, clients, other = meter.stop()
    iops = parse_perf(done.stdout + done.stderr)
    errors = 0 if iops is not None and done.returncode == 0 else 1
    iops = iops or 0
    value = iops if work.unit == "IOPS" else iops * work.request / 1e6
    return Sample(value, iops * runtime, wall, server, clients, other, meter.load, errors)


def run_qemu(endpoint: Endpoint, work: Workload, count: int) -> Sample:
    """``count`` sequential requests by ``qemu-img bench`` (QEMU's own libiscsi block driver)."""
    assert QEMU_IMG is not None
    url = endpoint.url("scratch")
    direction = ["-w", "--pattern=0xa5"] if work.tool == "qemu-write" else []
    meter = Meter(endpoint.pid)
    done = subprocess.run(
        [
            QEMU_IMG,
            "bench",
            "-f",
            "raw",
            "-c",
            str(count),
            "-s",
            str(work.request),
            "-d",
            str(work.depth),
            *direction,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    wall, server, clients, other = meter.stop()
    found = _COMPLETED.search(done.stdout)
    if found is None or done.returncode != 0:
        print(f"  qemu-img bench failed: {done.stdout[-300:]} {done.stderr[-300:]}", flush=True)
        return Sample(0.0, 0, wall, server, clients, other, meter.load, 1)
    seconds = float(found.group(1))
    value = count * work.request / seconds / 1e6
    return Sample(value, count, wall, server, clients, other, meter.load)


def run_storm(endpoint: Endpoint, work: Workload, runtime: float) -> Sample:
    runtime = max(1, round(runtime))
    errors = 0
    total_iops = 0
    with contextlib.ExitStack() as files:
        outputs = [files.enter_context(tempfile.TemporaryFile()) for _ in range(work.sessions)]
        meter = Meter(endpoint.pid)
        processes = [
            subprocess.Popen(
                perf_command(
                    endpoint.url(work.target(endpoint.label, i)), work, runtime, f"{IQN}:client{i}"
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            for i, out in enumerate(outputs, 1)
        ]
        deadline = time.monotonic() + runtime + 120
        for process in processes:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        wall, server, clients, other = meter.stop()
        for process, out in zip(processes, outputs, strict=True):
            out.seek(0)
            iops = parse_perf(out.read().decode(errors="replace"))
            if iops is None or process.returncode != 0:
                errors += 1
            total_iops += iops or 0
    value = total_iops * work.request / 1e6
    return Sample(value, total_iops * runtime, wall, server, clients, other, meter.load, errors)


def measure(
    endpoints: dict[str, Endpoint], work: Workload, runtime: float, counts: dict[str, int]
) -> Sample:
    """One sample of ``work``; ``counts`` gives the request count of the counted (qemu) tools."""
    endpoint = endpoints[work.role]
    if work.tool == "perf":
        return run_perf(endpoint, work, runtime)
    if work.tool in counts:
        return run_qemu(endpoint, work, counts[work.tool])
    return run_storm(endpoint, work, runtime)


# --------------------------------------------------------------------------------------------
# Profiling (py-spy)


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def profile_under(endpoint: Endpoint, work: Workload, runtime: float, out: Path) -> Path | None:
    spy = py_spy()
    if spy is None:
        return None
    runtime = max(3, round(runtime))
    load: list[subprocess.Popen[bytes]] = []
    for i in range(1, work.sessions + 1):
        target = work.target(endpoint.label, i)
        load.append(
            subprocess.Popen(
                perf_command(endpoint.url(target), work, runtime, f"{IQN}:profile{i}"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(1.0)  # past the logins
    subprocess.run(
        [
            spy,
            "record",
            # Worker processes (--iscsi-workers) are children: sample them, not only the parent.
            "--subprocesses",
            "-p",
            str(endpoint.pid),
            "-d",
            str(runtime - 2),
            "-r",
            "100",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        capture_output=True,
        timeout=runtime + 60,
        check=False,
    )
    for process in load:
        try:
            process.wait(timeout=runtime + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return out if out.exists() else None


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for prefix in ("diskless/", "asyncio/"):
        if prefix in path:
            path = path[path.index(prefix) :]
            break
    return f"{match.group('func')} ({path})"


@dataclass
class Profile:
    title: str
    samples: int  # all samples
    idle: int  # samples waiting in epoll (the event loop had nothing to do)
    own: list[tuple[str, float]]  # % of busy samples
    inclusive: list[tuple[str, float]]


def hotspots(raw: Path, title: str, top: int = 15) -> Profile:
    """Self and inclusive % of the busy samples, by function, from py-spy's raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if frames[-1].startswith(("EpollSelector.select (", "select (")):
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return Profile(title, idle, idle, [], [])
    own_top = [(name, 100 * n / total) for name, n in own.most_common(top)]
    # Inclusive: leave out the frames every sample has (the event loop and the CLI around it).
    skip = (
        "asyncio/runners.py",
        "asyncio/base_events.py",
        "typer/",
        "click/",
        "<module>",
        "cli/",
        "(iscsi.py)",
        "asyncio/events.py",
    )
    incl_top = [
        (name, 100 * n / total)
        for name, n in inclusive.most_common()
        if not any(s in name for s in skip)
    ][:top]
    return Profile(title, total + idle, idle, own_top, incl_top)


# --------------------------------------------------------------------------------------------
# The run


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rows = workloads(args.sessions)
        self.cells: dict[tuple[str, str], Cell] = {}
        self.loads: list[float] = []
        self.others: list[float] = []
        self.profiles: list[Profile] = []
        self.profile_note = ""
        self.alignment: dict[int, float] = {}
        self.write_count = max(64, int(args.runtime * 300))
        self.read_count = max(64, int(args.runtime * 1000))
        self.counts = {"qemu-write": self.write_count, "qemu-read": self.read_count}
        self.start_load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        before = machine_busy()
        time.sleep(2)
        self.idle_other = 100 * (machine_busy() - before) / 2

    def run(self) -> None:
        args = self.args
        size = args.size_mib * MiB
        golden = self.work / "golden.raw"
        scratch = self.work / "scratch.raw"
        print(
            f"work directory {self.work}; writing {args.size_mib} MiB golden + scratch", flush=True
        )
        fill(golden, size, 1)
        fill(scratch, size, 2)
        top = max(args.sessions)
        make_overlays(self.work / "overlays", golden, top)
        logs = self.work / "logs"
        logs.mkdir()
        with contextlib.ExitStack() as stack:
            ours = {
                "scratch": stack.enter_context(ours_export(scratch, logs / "ours-export.log")),
                "storm": stack.enter_context(
                    ours_storm(
                        self.work / "overlays",
                        top,
                        logs / "ours-storm.log",
                        args.iscsi_workers,
                    )
                ),
            }
            tgt_endpoint, _ = stack.enter_context(tgt(scratch, golden, top, logs / "tgtd.log"))
            servers = {"ours": ours, "tgt": {"scratch": tgt_endpoint, "storm": tgt_endpoint}}
            self.loads.append(load1())
            print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
            print("warm-up pass (unrecorded)", flush=True)
            for work in self.rows:
                for label in ("ours", "tgt"):
                    measure(servers[label], work, 1, dict.fromkeys(self.counts, 64))
            for run in range(args.runs):
                order = ("ours", "tgt") if run % 2 == 0 else ("tgt", "ours")
                for work in self.rows:
                    for label in order:
                        sample = measure(servers[label], work, args.runtime, self.counts)
                        self.cells.setdefault((work.key, label), Cell()).samples.append(sample)
                        self.loads.append(sample.load1)
                        self.others.append(sample.other_pct)
                        print(
                            f"run {run + 1}/{args.runs} {work.title:<46} {label:<4} "
                            f"{fmt(sample.value):>9} {work.unit:<4} "
                            f"server {sample.server_pct:5.0f}% "
                            f"other {sample.other_pct:4.0f}% load1 {sample.load1:.2f}"
                            + (f" ERRORS {sample.errors}" if sample.errors else ""),
                            flush=True,
                        )
            self.loads.append(load1())
            if args.profile:
                self.profile(ours)
        self.alignment = copy_alignment(self.work)
        print(copy_alignment_text(self.alignment), flush=True)

    def profile(self, ours: dict[str, Endpoint]) -> None:
        if py_spy() is None:
            self.profile_note = (
                "py-spy not installed (uv pip install --python .venv/bin/python py-spy): no profile"
            )
            print(self.profile_note, flush=True)
            return
        by_key = {w.key: w for w in self.rows}
        picks = ["rand-read-4k-qd32", "seq-read-1m-qd1", f"storm-{max(self.args.sessions)}"]
        for key in picks:
            work = by_key[key]
            raw = profile_under(
                ours[work.role], work, max(self.args.runtime, 6), self.work / f"{key}.spy"
            )
            if raw is None:
                continue
            if self.args.keep_profiles is not None:
                self.args.keep_profiles.mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, self.args.keep_profiles / f"{key}.txt")
            found = hotspots(raw, work.title)
            self.profiles.append(found)
            print(f"\n{profile_text(found)}", flush=True)

    # -- output --------------------------------------------------------------------------------

    def ratio(self, key: str) -> float:
        return self.cells[(key, "ours")].med() / self.cells[(key, "tgt")].med()

    def paired(self, key: str) -> tuple[float, float]:
        pairs = [
            a.value / b.value
            for a, b in zip(
                self.cells[(key, "ours")].samples, self.cells[(key, "tgt")].samples, strict=True
            )
            if b.value
        ]
        return (min(pairs), max(pairs)) if pairs else (float("nan"), float("nan"))

    def table(self) -> str:
        lines = [
            "| workload | unit | ours | tgt | ours/tgt (per-run range) | goal | "
            "server CPU %core ours / tgt | server CPU µs per command ours / tgt | "
            "client CPU %core with ours / tgt | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for work in self.rows:
            ours = self.cells[(work.key, "ours")]
            ref = self.cells[(work.key, "tgt")]
            ratio = self.ratio(work.key)
            lo, hi = self.paired(work.key)
            goal = (
                ""
                if work.goal is None
                else (f"≥ {work.goal:.1f}: {'met' if ratio >= work.goal else '**not met**'}")
            )
            errors = sum(s.errors for s in ours.samples + ref.samples)
            lines.append(
                f"| {work.title} | {work.unit} | {cell(ours)} | {cell(ref)} | "
                f"**{ratio:.2f}** ({lo:.2f}-{hi:.2f}) | {goal} | "
                f"{ours.med('server_pct'):.0f} / {ref.med('server_pct'):.0f} | "
                f"{fmt(ours.med('us_per_command'))} / {fmt(ref.med('us_per_command'))} | "
                f"{ours.med('client_pct'):.0f} / {ref.med('client_pct'):.0f} | "
                f"{errors} |"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        lines = []
        for work in self.rows:
            if work.goal is not None:
                ratio = self.ratio(work.key)
                verdict = "met" if ratio >= work.goal else "NOT met"
                lo, hi = self.paired(work.key)
                caveat = (
                    f"; per-run ratios {lo:.2f}-{hi:.2f} straddle the goal, so the verdict is "
                    "not robust"
                    if lo < work.goal <= hi
                    else ""
                )
                lines.append(
                    f"- {work.title}: ours/tgt = {ratio:.2f} "
                    f"(goal ≥ {work.goal}: {verdict}{caveat})"
                )
        return "\n".join(lines)

    def load_note(self) -> str:
        loads = sorted(self.loads)
        others = sorted(self.others)
        busy = statistics.median(others) >= 10 or max(others) >= 50 or self.idle_other >= 20
        verdict = (
            "**busy: other processes competed for the 2 CPUs, treat the figures as noisy**"
            if busy
            else "quiet: nothing else competed for the CPUs"
        )
        return (
            f"Load: before anything started, {self.start_load} (1/5/15-min load average) and "
            f"{self.idle_other:.0f}% of a core busy over 2 s; during the measured intervals, "
            f"processes other than the server, its clients and this script used a median "
            f"{statistics.median(others):.0f}% of one core (max {max(others):.0f}%); the 1-min "
            f"load average, which counts our own servers and up to {max(self.args.sessions)} "
            f"client processes, read median {statistics.median(loads):.2f}, max "
            f"{max(loads):.2f}. Machine {verdict}"
        )

    def profile_text(self) -> str:
        if not self.profiles:
            return self.profile_note or "not profiled (run with --profile)"
        return "\n\n".join(profile_text(p) for p in self.profiles)


def profile_text(profile: Profile) -> str:
    busy = profile.samples - profile.idle
    head = (
        f"Under **{profile.title}**: {profile.samples} samples at 100 Hz, "
        f"{100 * profile.idle / max(1, profile.samples):.0f}% idle in epoll; % below are of the "
        f"{busy} busy samples (self = the function itself was running; inclusive = it was on the "
        "stack)."
    )
    lines = [
        head,
        "",
        "| # | self: function | % | inclusive: function | % |",
        "| --- | --- | --- | --- | --- |",
    ]
    own, incl = profile.own, profile.inclusive
    for i in range(max(len(own), len(incl))):
        a = own[i] if i < len(own) else ("", 0.0)
        b = incl[i] if i < len(incl) else ("", 0.0)
        lines.append(f"| {i + 1} | `{a[0]}` | {a[1]:.1f} | `{b[0]}` | {b[1]:.1f} |")
    return "\n".join(lines)


def cell(c: Cell) -> str:
    lo, hi = c.spread()
    return f"{fmt(c.med())} ({fmt(lo)}-{fmt(hi)})"


def fmt(value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def copy_alignment(work: Path) -> dict[int, float]:
    """µs per MiB of the kernel's ``rep movsb`` page copy, by destination offset from a page.

    Built from bench/copy_alignment.c with the machine's C compiler; empty without one.
    """
    program = work / "copy_alignment"
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return {}
    built = subprocess.run(
        [compiler, "-O2", "-o", str(program), str(Path(__file__).with_name("copy_alignment.c"))],
        capture_output=True,
        check=False,
    )
    if built.returncode != 0:
        return {}
    done = subprocess.run([str(program)], capture_output=True, text=True, check=False)
    found: dict[int, float] = {}
    for line in done.stdout.splitlines():
        word, offset, micros = line.split()
        if word == "offset":
            found[int(offset)] = float(micros)
    return found


def copy_alignment_text(found: dict[int, float]) -> str:
    if not found:
        return "(no C compiler here: the copy-alignment probe did not run)"
    cells = ", ".join(f"{offset} bytes past: {micros:,.0f} µs" for offset, micros in found.items())
    return f"On this machine a MiB of page copies with the destination {cells}."


def machine_notes(work: Path) -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    fs = subprocess.run(
        ["df", "--output=fstype", str(work)], capture_output=True, text=True, check=False
    ).stdout.split("\n")[1:2]

    def version(*command: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    tgt_version = version("dpkg-query", "-W", "-f", "${Version}", "tgt")
    libiscsi = version("dpkg-query", "-W", "-f", "${Version}", "libiscsi-bin")
    qemu = version("qemu-img", "--version").split("\n")[0]
    commit = version("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = version("git", "-C", str(ROOT), "status", "--porcelain", "src")
    return (
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, commit {commit or '?'}"
        f"{' plus uncommitted changes in src/' if dirty else ''}, {os.cpu_count()} vCPU {cpu}, "
        f"{mem:.0f} GiB RAM, images on {' '.join(fs).strip() or '?'} ({work.parent}), "
        f"Python {platform.python_version()}, tgt {tgt_version}, libiscsi-bin {libiscsi} "
        f"(iscsi-perf), {qemu}"
    )


def _workers_text(workers: int) -> str:
    if workers <= 1:
        return "one `IscsiPortal` in one process"
    return (
        f"{workers} worker processes, each an `IscsiPortal` on its own port serving the targets "
        "`iscsi_shard` gives it, exactly as `diskless serve` with `iscsi.workers = "
        f"{workers}`"
    )


def render_docs(bench: Bench, command: str, notes: str, elapsed: float) -> str:
    args = bench.args
    return f"""## iSCSI target

Measured {notes}. Command: `{command}` ({elapsed / 60:.0f} min).

Our target (`diskless export` for the single-session rows; one target per overlay, started by
`bench/iscsi.py --serve-storm`, for the storm rows: {_workers_text(args.iscsi_workers)}) against
Debian's tgtd (`tgtd -f`, default settings), both on 127.0.0.1 and serving the same files from a
tmpfs: a {args.size_mib} MiB scratch raw file (our LUN 0, tgt's LUN 1) and, for the storm, a
{args.size_mib} MiB golden raw file that each of our storm targets reads through its own empty
qcow2 overlay (128 KiB clusters, extended L2: the product's default), while each tgt storm target
exports the golden file itself (`readonly=1`; tgt has no copy-on-write, which favours tgt). The
clients are C: libiscsi's `iscsi-perf` ({args.runtime:g} s per run; its "MB" is MiB, so MB/s here
is IOPS x request size / 10^6) and `qemu-img bench`, QEMU's own iSCSI block driver (what a VM
booting from iSCSI uses), for 1 MiB sequential reads ({bench.read_count} per run) and writes
({bench.write_count} pattern writes, no flush). Storm rows: N `iscsi-perf -b 128 -m 4` processes
at once, each with its own initiator name and target, reading sequentially 64 KiB at a time with
4 in flight (iPXE's loader reads 63.5 KiB blocks one at a time; the OS phase keeps ~4 in flight:
research/boot-storm.md §1.1, §5.2), all from LBA 0 so they share the golden image's hot set; the
aggregate is the sum of the N averages. The "without overlays" control row serves the storm from
`rawN` targets that export the golden file itself read-only, as tgt does, so its gap to the row
above it is what the overlays cost. Cells: median (min-max) of {args.runs} runs, interleaved
ours/tgt (the order alternates each run) after one unrecorded warm-up pass. The ratio divides the
medians; the range in parentheses is over the per-run ratios. Server CPU: utime+stime of the
server's process tree over the measured interval (logins included) as % of one core, and per
command; client CPU: the same for the client processes (iscsi-perf, qemu-img) of the row, against
each server. Clients and servers share the machine's 2 vCPUs, so every figure is for the pair
(a single-threaded client near 100% is the limit of its row, whichever the server); "other" CPU
is the machine's busy time minus the servers', the clients' and the script's own.

{bench.load_note()}.

{bench.summary()}

{bench.table()}

### Why iscsi-perf and qemu-img disagree on 1 MiB reads

Our target sends a file extent of 64 KiB or more with `sendfile`, so on loopback the client's
`recv` copies straight out of the page cache pages of the image, each starting on a page
boundary. iscsi-perf receives every 256 KiB data segment with one `readv` into a buffer 16 bytes
past a page boundary (seen with gdb: `iov_base % 4096 == 0x10`). The kernel copies with
`rep movsb`, and on this AMD EPYC that instruction runs several times slower when the
destination is 1 to 31 bytes past the source modulo 4096 (`bench/copy_alignment.c`, run by
this script). {copy_alignment_text(bench.alignment)} So with iscsi-perf the single-threaded
client, not our target, is the limit of the 1 MiB rows (see its CPU column). tgt copies each
block through its own buffer, so the client copies from socket buffers at other offsets.
QEMU receives into page-aligned buffers, as the Linux initiator (page cache pages) does, and
there the same target and the same files give the qemu-img rows. Over a real NIC the pages
leave by DMA and the client's copy is its own business; our target keeps `sendfile`. Copying
each extent through a page-aligned buffer instead, as tgt does, was measured once (an
experimental patch, same machine): 2,505 MB/s at QD1 and 2,828 MB/s at QD8 with iscsi-perf, our
target then the limit at 100% of a core, but 33% less on 64 KiB reads at QD4 and a copy per byte
that a NIC never needs.

### Where our target spends its time (py-spy)

Sampled after the measured runs with `py-spy record -r 100 -f raw` (blocking mode, which slows
the target a little) attached to our server under the same loads; function names carry their
module.

{bench.profile_text()}

<!-- Reproduce: {command} -->
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="scratch and golden size")
    parser.add_argument("--runtime", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (median reported)")
    parser.add_argument(
        "--sessions",
        type=lambda text: sorted({int(x) for x in text.split(",") if x}),
        default=[1, 8, 32, 64],
        help="storm session counts, comma-separated",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample our target with py-spy afterwards (default on)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /dev/shm)")
    parser.add_argument(
        "--keep-profiles",
        type=Path,
        default=None,
        help="copy py-spy's raw (collapsed-stack) output into this directory",
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    # internal: the storm server
    parser.add_argument("--serve-storm", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--iscsi-workers",
        type=int,
        default=1,
        help="worker processes of our storm target (as iscsi.workers in diskless serve)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.serve_storm is not None:
        serve_storm(args.serve_storm, args.port, args.count, args.iscsi_workers)
        return
    missing = [
        n
        for n, p in (
            ("iscsi-perf", ISCSI_PERF),
            ("qemu-img", QEMU_IMG),
            ("tgtd", TGTD),
            ("tgtadm", TGTADM),
        )
        if p is None
    ]
    if missing:
        sys.exit(
            f"missing tools: {', '.join(missing)} (apt-get install tgt libiscsi-bin qemu-utils "
            "qemu-block-extra)"
        )
    started = time.monotonic()
    with workdir(args.size_mib * MiB, args.dir) as work:
        notes = machine_notes(work)  # before the servers start: the code they run
        bench = Bench(args, work)
        bench.run()
    elapsed = time.monotonic() - started
    command = ".venv/bin/python bench/iscsi.py " + " ".join(argv)
    print()
    print(bench.table())
    print()
    print(bench.summary())
    print()
    print(bench.load_note())
    print(f"\n{notes}\ntotal {elapsed:.0f} s")
    if args.write_docs:
        text = render_docs(bench, command.strip(), notes, elapsed)
        print(f"updated {write_section('iscsi', text)}")


if __name__ == "__main__":
    main(sys.argv[1:])
