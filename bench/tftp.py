"""TFTP server benchmark: our server against Debian's tftpd-hpa, with curl and atftp.

    .venv/bin/python bench/tftp.py [--runs 3] [--concurrent 32] [--write-docs]

One run starts, side by side on 127.0.0.1 (free ports), serving the same random files (1 MiB and
32 MiB, in /dev/shm when it has room):

* ours: this script in ``--serve`` mode, one process running :class:`diskless.tftp.TftpService`
  with default settings (logging at warning);
* tftpd-hpa: ``/usr/sbin/in.tftpd -L -a 127.0.0.1:PORT -u nobody -s ROOT`` (foreground; it forks
  one child per transfer). It is stopped by its PID only.

Workloads (the clients are C programs):

* curl ``--tftp-blksize 1468`` and ``512``, 1 MiB and 32 MiB; the time is curl's own
  ``time_total``. curl has no windowsize option: these are lock-step transfers;
* atftp ``--option "blksize 1468"``, with and without ``--option "windowsize 8"``, 1 MiB and
  32 MiB; the time is the wall time of the atftp process (its start-up, ~3-5 ms, is included);
  tftpd-hpa ignores windowsize, so its ws8 rows are lock-step;
* N concurrent curl clients (``--concurrent``, 32) each fetching the 1 MiB file at blksize 1468;
  aggregate MB/s = N MiB / the wall time until the last one finished.

Unless ``--no-probes``, three minimal Python servers run beside them as ceilings (``--probe``):
every file prepared in memory as DATA packets, no timers, no retransmission, no checks, one
``recv`` and one ``send`` (or one GSO ``sendmsg`` per window) per ACK; ``py-blocking`` on a
blocking socket, one transfer at a time, ``py-epoll`` on a ``select.epoll`` loop as our server's
thread is, and ``py-asyncio`` on ``loop.add_reader`` (our server before its data path moved to a
thread). The gaps between them are what each kind of loop costs per packet; the gap from
``py-epoll`` to ours is what our own code costs. Server CPU per DATA packet comes from a cpuacct
cgroup per server when cgroup v1 is mounted (tftpd-hpa's forked children included).

MB = 10^6 bytes. Every client runs with a timeout (``--client-timeout``) and a failed or wrong
transfer (checked by size, and by SHA-256 once per server and file in the unrecorded warm-up pass)
counts as an error. Runs are interleaved: each workload runs on both servers in turn, the order
alternating every run. A 1 MiB measurement is the median of 15 transfers in a row (one takes
~20 ms, within scheduling noise); a 32 MiB one is a single transfer. Cells are median (min-max)
over ``--runs``; the ratio is ours/tftpd-hpa of the medians. Nothing is written outside the
temporary work directory except, with ``--write-docs``, the ``TFTP server`` section of
docs/benchmarks.md (between
``<!-- BEGIN tftp -->`` and ``<!-- END tftp -->``; the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchdocs import write_section

KiB = 1024
MiB = 1024 * KiB
ROOT = Path(__file__).resolve().parent.parent
CURL = shutil.which("curl")
ATFTP = shutil.which("atftp")
IN_TFTPD = "/usr/sbin/in.tftpd"
FILES = {"f1m": MiB, "f32m": 32 * MiB}
# A 1 MiB transfer takes ~20 ms, within the scheduler's noise (which core each side lands on):
# one measurement of it is the median of this many transfers in a row.
SMALL_FILE_REPEATS = 15
LABELS = ("ours", "tftpd-hpa")
PROBES = {"py-blocking": "blocking", "py-epoll": "epoll", "py-asyncio": "asyncio"}  # label -> kind


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    tool: str  # "curl", "atftp" or "concurrent"
    file: str
    block_size: int
    window_size: int | None = None
    goal: float | None = None  # ours/tftpd-hpa at least this

    @property
    def repeats(self) -> int:
        """Transfers in one measurement (its value is their median)."""
        return 1 if self.tool == "concurrent" or FILES[self.file] > MiB else SMALL_FILE_REPEATS

    def packets(self, concurrent: int) -> int:
        """DATA packets one measurement sends (each client's file ends with a short block)."""
        per_file = FILES[self.file] // self.block_size + 1
        return per_file * (concurrent if self.tool == "concurrent" else self.repeats)


def workloads(concurrent: int) -> list[Workload]:
    return [
        Workload("curl-1m-1468", "curl 1 MiB, blksize 1468", "curl", "f1m", 1468, goal=1.0),
        Workload("curl-1m-512", "curl 1 MiB, blksize 512", "curl", "f1m", 512, goal=1.0),
        Workload("curl-32m-1468", "curl 32 MiB, blksize 1468", "curl", "f32m", 1468, goal=1.0),
        Workload("curl-32m-512", "curl 32 MiB, blksize 512", "curl", "f32m", 512, goal=1.0),
        Workload("atftp-1m", "atftp 1 MiB, blksize 1468", "atftp", "f1m", 1468, goal=1.0),
        Workload(
            "atftp-1m-ws8", "atftp 1 MiB, blksize 1468, windowsize 8", "atftp", "f1m", 1468, 8, 3.0
        ),
        Workload("atftp-32m", "atftp 32 MiB, blksize 1468", "atftp", "f32m", 1468, goal=1.0),
        Workload(
            "atftp-32m-ws8",
            "atftp 32 MiB, blksize 1468, windowsize 8",
            "atftp",
            "f32m",
            1468,
            8,
            3.0,
        ),
        Workload(
            f"concurrent-{concurrent}",
            f"{concurrent} concurrent curl, 1 MiB each, blksize 1468 (aggregate)",
            "concurrent",
            "f1m",
            1468,
            goal=1.0,
        ),
    ]


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    cpu_per_packet: list[float] = field(default_factory=list)  # server CPU µs per DATA packet
    errors: int = 0

    def cpu_text(self) -> str:
        if not self.cpu_per_packet:
            return "-"
        return f"{statistics.median(self.cpu_per_packet):.1f}"

    def median(self) -> float:
        return float(statistics.median(self.values)) if self.values else float("nan")

    def text(self) -> str:
        if not self.values:
            return "failed"
        low, high = min(self.values), max(self.values)
        note = f", {self.errors} errors" if self.errors else ""
        return f"{fmt(self.median())} ({fmt(low)}-{fmt(high)}){note}"


def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# --------------------------------------------------------------------------------------------
# Files and servers


@contextlib.contextmanager
def workdir(forced: Path | None) -> Iterator[Path]:
    base = forced
    if base is None:
        with contextlib.suppress(OSError):
            stat = os.statvfs("/dev/shm")
            if stat.f_bavail * stat.f_frsize > 256 * MiB:
                base = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix="diskless-bench-tftp-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_files(root: Path) -> dict[str, str]:
    """The served files (random, readable by tftpd-hpa's ``nobody``); returns their SHA-256."""
    root.mkdir()
    root.chmod(0o755)
    root.parent.chmod(0o755)
    digests = {}
    for name, size in FILES.items():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        (root / name).chmod(0o644)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_tftp(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until the server answers an RRQ for a missing file with an ERROR packet."""
    request = b"\x00\x01no-such-file\x00octet\x00"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited ({process.returncode}) before serving {port}")
            probe.sendto(request, ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                reply = probe.recv(1024)
                if reply[:2] == b"\x00\x05":
                    return
    raise TimeoutError(f"no TFTP server answers on 127.0.0.1:{port} after {timeout} s")


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


class CpuAccount:
    """CPU time of a server and every process it forks, from a cgroup-v1 cpuacct group.

    tftpd-hpa forks a child per transfer and ignores SIGCHLD, so the children's CPU never reaches
    the parent's counters; a cgroup catches it. ``None`` readings where cgroups are unavailable.
    """

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, label: str, pid: int) -> None:
        self.group: Path | None = self.ROOT / f"diskless-bench-tftp-{os.getpid()}-{label}"
        try:
            self.group.mkdir()
            (self.group / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            with contextlib.suppress(OSError):
                self.group.rmdir()
            self.group = None

    def seconds(self) -> float | None:
        if self.group is None:
            return None
        return int((self.group / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        """Once the server is stopped: the group must be empty to go."""
        if self.group is not None:
            with contextlib.suppress(OSError):
                self.group.rmdir()


@dataclass
class Server:
    label: str
    port: int
    cpu: CpuAccount


@contextlib.contextmanager
def start_server(label: str, root: Path, log: Path, workers: int = 1) -> Iterator[Server]:
    port = free_udp_port()
    if label == "ours":
        command = [
            sys.executable,
            __file__,
            "--serve",
            str(root),
            "--port",
            str(port),
            "--tftp-workers",
            str(workers),
        ]
    elif label in PROBES:
        kind = PROBES[label]
        command = [
            sys.executable,
            __file__,
            "--probe",
            kind,
            "--serve",
            str(root),
            "--port",
            str(port),
        ]
    else:
        command = [IN_TFTPD, "-L", "-a", f"127.0.0.1:{port}", "-u", "nobody", "-s", str(root)]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    cpu = CpuAccount(label, process.pid)
    try:
        wait_for_tftp(port, process)
        yield Server(label, port, cpu)
    finally:
        stop_process(process)
        cpu.remove()


def serve(root: Path, port: int, workers: int = 1) -> None:
    """``--serve``: run our TFTP service on 127.0.0.1:port until SIGTERM."""
    import asyncio

    sys.path.insert(0, str(ROOT / "src"))
    from diskless.config import BootSettings, LoggingSettings, TftpSettings
    from diskless.observe.log import configure_logging
    from diskless.tftp import TftpService

    configure_logging(LoggingSettings(level="warning"))

    async def run() -> None:
        settings = TftpSettings(host="127.0.0.1", port=port, workers=workers)
        service = TftpService(settings, BootSettings(), root)
        task = asyncio.create_task(service.run())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


# --------------------------------------------------------------------------------------------
# Ceiling probes: the least a Python server can do per packet


def _probe_packets(root: Path) -> dict[tuple[bytes, int], tuple[memoryview, int]]:
    """Every file as DATA packets laid end to end, per block size: (packets, block count)."""
    prepared = {}
    for name in FILES:
        data = (root / name).read_bytes()
        for block_size in (512, 1468):
            segment = block_size + 4
            count = len(data) // block_size + 1
            buffer = bytearray(count * segment)
            for block in range(1, count + 1):
                chunk = data[(block - 1) * block_size : block * block_size]
                at = (block - 1) * segment
                buffer[at : at + 4] = struct.pack("!HH", 3, block & 0xFFFF)
                buffer[at + 4 : at + 4 + len(chunk)] = chunk
            end = (count - 1) * segment + 4 + len(data) - (count - 1) * block_size
            prepared[(name.encode(), block_size)] = (memoryview(buffer)[:end], count)
    return prepared


class _ProbeTransfer:
    """A transfer of the probe servers: no timers, no retransmission, no jail, no checks."""

    def __init__(
        self,
        request: bytes,
        client: tuple[str, int],
        prepared: dict[tuple[bytes, int], tuple[memoryview, int]],
    ) -> None:
        fields = request[2:].split(b"\0")
        options = dict(zip(fields[2::2], fields[3::2], strict=False))
        self.block_size = int(options.get(b"blksize", b"512"))
        self.window = int(options.get(b"windowsize", b"1"))
        self.packets, self.count = prepared[(fields[0], self.block_size)]
        self.segment = self.block_size + 4
        self.gso = [(socket.SOL_UDP, 103, struct.pack("=H", self.segment))]  # UDP_SEGMENT
        self.acked = -1  # the OACK is not acknowledged yet
        self.ack = bytearray(16)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(client)
        granted = {b"blksize": self.block_size, b"windowsize": self.window}
        self.sock.send(
            b"\x00\x06"
            + b"".join(
                k + b"\0" + str(v).encode() + b"\0" for k, v in granted.items() if k in options
            )
        )

    def on_ack(self) -> bool:
        """Read one ACK and send the next window; False once the transfer is done."""
        self.sock.recv_into(self.ack)
        block = (self.ack[2] << 8) | self.ack[3]
        self.acked = 0 if self.acked < 0 else self.acked + ((block - self.acked) & 0xFFFF)
        if self.acked >= self.count:
            self.sock.close()
            return False
        end = min(self.acked + self.window, self.count) * self.segment
        burst = self.packets[self.acked * self.segment : end]
        if len(burst) > self.segment:
            self.sock.sendmsg([burst], self.gso)
        else:
            self.sock.send(burst)
        return True


def serve_probe(kind: str, root: Path, port: int) -> None:
    """``--probe``: a minimal server, blocking (one transfer at a time), on epoll or on asyncio."""
    import asyncio

    prepared = _probe_packets(root)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def accept() -> _ProbeTransfer | None:
        request, client = listener.recvfrom(600)
        if request[:2] != b"\x00\x01":
            return None
        try:
            return _ProbeTransfer(request, client, prepared)
        except KeyError:
            listener.sendto(b"\x00\x05\x00\x01not found\x00", client)
            return None

    if kind == "blocking":
        while True:
            transfer = accept()
            while transfer is not None and transfer.on_ack():
                pass
        return

    if kind == "epoll":
        import select

        poller = select.epoll()
        listener_fd = listener.fileno()
        poller.register(listener_fd, select.EPOLLIN)
        transfers: dict[int, _ProbeTransfer] = {}
        while True:
            for fd, _ in poller.poll():
                if fd == listener_fd:
                    transfer = accept()
                    if transfer is not None:
                        transfer.sock.setblocking(False)
                        transfers[transfer.sock.fileno()] = transfer
                        poller.register(transfer.sock.fileno(), select.EPOLLIN)
                elif not transfers[fd].on_ack():
                    del transfers[fd]  # closed, which took it out of the epoll set

    async def run() -> None:
        loop = asyncio.get_running_loop()

        def on_request() -> None:
            transfer = accept()
            if transfer is not None:
                transfer.sock.setblocking(False)
                loop.add_reader(transfer.sock.fileno(), on_readable, transfer)

        def on_readable(transfer: _ProbeTransfer) -> None:
            fd = transfer.sock.fileno()
            if not transfer.on_ack():
                loop.remove_reader(fd)

        listener.setblocking(False)
        loop.add_reader(listener.fileno(), on_request)
        await loop.create_future()

    asyncio.run(run())


# --------------------------------------------------------------------------------------------
# Clients


def curl_command(port: int, work: Workload, out: str) -> list[str]:
    assert CURL is not None
    return [
        CURL,
        "-sS",
        f"tftp://127.0.0.1:{port}/{work.file}",
        "--tftp-blksize",
        str(work.block_size),
        "-o",
        out,
        "-w",
        "%{time_total} %{size_download}\n",
    ]


def atftp_command(port: int, work: Workload, out: str) -> list[str]:
    assert ATFTP is not None
    options = ["--option", f"blksize {work.block_size}"]
    if work.window_size is not None:
        options += ["--option", f"windowsize {work.window_size}"]
    return [ATFTP, "--get", "-r", work.file, "-l", out, *options, "127.0.0.1", str(port)]


def run_once(port: int, work: Workload, out: Path, timeout: float) -> float | None:
    """MB/s of one measurement (the median of ``work.repeats`` transfers), None if one failed."""
    if work.tool == "concurrent":
        return run_concurrent(port, work, out, timeout)
    values = [run_transfer(port, work, out, timeout) for _ in range(work.repeats)]
    if any(value is None for value in values):
        return None
    return statistics.median(value for value in values if value is not None)


def run_transfer(port: int, work: Workload, out: Path, timeout: float) -> float | None:
    """MB/s of one transfer by one client, or None if it failed."""
    size = FILES[work.file]
    command = (curl_command if work.tool == "curl" else atftp_command)(port, work, str(out))
    started = time.monotonic()
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    wall = time.monotonic() - started
    if result.returncode != 0 or out.stat().st_size != size:
        return None
    seconds = float(result.stdout.split()[0]) if work.tool == "curl" else wall
    return size / seconds / 1e6


def run_concurrent(port: int, work: Workload, out: Path, timeout: float) -> float | None:
    count = int(work.key.rsplit("-", 1)[1])
    outs = [out.with_name(f"{out.name}.{i}") for i in range(count)]
    started = time.monotonic()
    clients = [
        subprocess.Popen(
            curl_command(port, work, str(path)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for path in outs
    ]
    failed = False
    for client in clients:
        try:
            failed |= client.wait(timeout=max(1.0, started + timeout - time.monotonic())) != 0
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
            failed = True
    wall = time.monotonic() - started
    size = FILES[work.file]
    failed |= any(path.stat().st_size != size for path in outs if path.exists())
    for path in outs:
        path.unlink(missing_ok=True)
    return None if failed else count * size / wall / 1e6


def check_files(port: int, label: str, work_dir: Path, digests: dict[str, str]) -> None:
    """Warm-up: every file arrives intact through both clients, or the benchmark stops."""
    for name in FILES:
        for tool in ("curl", "atftp"):
            out = work_dir / f"check-{label}-{tool}-{name}"
            work = Workload("check", "check", tool, name, 1468, 8 if tool == "atftp" else None)
            command = (curl_command if tool == "curl" else atftp_command)(port, work, str(out))
            subprocess.run(command, capture_output=True, timeout=120, check=True)
            digest = hashlib.sha256(out.read_bytes()).hexdigest()
            if digest != digests[name]:
                raise RuntimeError(f"{label}: {name} via {tool} arrived corrupted")
            out.unlink()


# --------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work = work_dir
        self.rows = [
            row for row in workloads(args.concurrent) if not args.rows or row.key in args.rows
        ]
        self.labels = LABELS + (tuple(PROBES) if args.probes else ())
        self.cells: dict[tuple[str, str], Cell] = {
            (row.key, label): Cell() for row in self.rows for label in self.labels
        }

    def measured(self, row: Workload, label: str) -> bool:
        # The probes serve one file per block size, and the blocking one one client at a time.
        return label in LABELS or row.tool != "concurrent"

    def run(self) -> None:
        root = self.work / "root"
        digests = make_files(root)
        out = self.work / "out"
        with contextlib.ExitStack() as stack:
            servers = {
                label: stack.enter_context(
                    start_server(label, root, self.work / f"{label}.log", self.args.tftp_workers)
                )
                for label in self.labels
            }
            for label in LABELS:
                check_files(servers[label].port, label, self.work, digests)
            for row in self.rows:  # unrecorded warm-up pass
                for label in self.labels:
                    if self.measured(row, label):
                        run_once(servers[label].port, row, out, self.args.client_timeout)
            for run in range(self.args.runs):
                order = self.labels if run % 2 == 0 else self.labels[::-1]
                for row in self.rows:
                    for label in order:
                        if self.measured(row, label):
                            self.measure(servers[label], row, out, run)

    def measure(self, server: Server, row: Workload, out: Path, run: int) -> None:
        cpu_before = server.cpu.seconds()
        value = run_once(server.port, row, out, self.args.client_timeout)
        cpu_after = server.cpu.seconds()
        cell = self.cells[(row.key, server.label)]
        if value is None:
            cell.errors += 1
        else:
            cell.values.append(value)
            if cpu_before is not None and cpu_after is not None:
                packets = row.packets(self.args.concurrent)
                cell.cpu_per_packet.append(1e6 * (cpu_after - cpu_before) / packets)
        shown = "FAILED" if value is None else f"{value:8.1f} MB/s"
        print(f"run {run + 1} {row.key:18} {server.label:11} {shown}", flush=True)

    def summary(self) -> str:
        """Per row: ours and each probe against tftpd-hpa, and ours against the asyncio probe."""
        lines = []
        for row in self.rows:
            baseline = self.cells[(row.key, "tftpd-hpa")].median()
            parts = [f"ours {self.ratio(row.key):.2f}"]
            for label in self.labels:
                if label in PROBES and self.measured(row, label):
                    value = self.cells[(row.key, label)].median()
                    parts.append(f"{label} {value / baseline:.2f}")
            if "py-epoll" in self.labels and self.measured(row, "py-epoll"):
                probe = self.cells[(row.key, "py-epoll")].median()
                parts.append(
                    f"(ours / py-epoll {self.cells[(row.key, 'ours')].median() / probe:.2f})"
                )
            lines.append(f"- {row.title}, against tftpd-hpa: " + ", ".join(parts))
        return "\n".join(lines)

    def ratio(self, key: str) -> float:
        return self.cells[(key, "ours")].median() / self.cells[(key, "tftpd-hpa")].median()

    def table(self) -> str:
        probes = [label for label in self.labels if label in PROBES]
        lines = [
            "| Workload | ours MB/s | tftpd-hpa MB/s | ours / tftpd-hpa | goal "
            "| server CPU µs/packet, ours / tftpd-hpa |"
            + "".join(f" {label} MB/s |" for label in probes),
            "| --- | --- | --- | --- | --- | --- |" + " --- |" * len(probes),
        ]
        for row in self.rows:
            ratio = self.ratio(row.key)
            goal = (
                ""
                if row.goal is None
                else f">= {row.goal:g}: " + ("met" if ratio >= row.goal else "NOT met")
            )
            ours, theirs = self.cells[(row.key, "ours")], self.cells[(row.key, "tftpd-hpa")]
            extra = "".join(
                f" {self.cells[(row.key, label)].text() if self.measured(row, label) else '-'} |"
                for label in probes
            )
            lines.append(
                f"| {row.title} | {ours.text()} | {theirs.text()} | {ratio:.2f} | {goal} "
                f"| {ours.cpu_text()} / {theirs.cpu_text()} |{extra}"
            )
        return "\n".join(lines)


def machine_notes() -> str:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    packages = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}, ", "tftpd-hpa", "atftp", "curl"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip(", ")
    with open("/proc/meminfo") as meminfo:
        mem = int(meminfo.readline().split()[1]) / (1 << 20)
    return (
        f"{datetime.date.today().isoformat()}, commit {commit or '?'}"
        f"{' (plus uncommitted work)' if dirty else ''}, {os.cpu_count()} vCPU, {mem:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {packages}"
    )


def render_docs(bench: Bench, command: str, notes: str, elapsed: float) -> str:
    args = bench.args
    return f"""## TFTP server

Measured {notes}. Command: `{command}` ({elapsed:.0f} s).

Our TFTP service (`diskless.tftp.TftpService`, default settings but `tftp.workers =
{args.tftp_workers}`, its own process{"es" if args.tftp_workers > 1 else ""}) against Debian's
tftpd-hpa (`in.tftpd -L -a 127.0.0.1:PORT -u nobody -s ROOT`, one forked child per transfer),
side by side on 127.0.0.1, serving the same random files from a tmpfs. Clients are C: curl
(lock-step, no windowsize option; time = curl's `time_total`) and atftp (`--option "blksize 1468"`,
with and without `--option "windowsize 8"`; time = the atftp process's wall time, start-up
included). tftpd-hpa ignores windowsize, so its windowsize rows are lock-step. The concurrent row
starts {args.concurrent} curl clients at once, each fetching the 1 MiB file at blksize 1468, and
divides the {args.concurrent} MiB by the time until the last one finished. MB = 10^6 bytes.
A 1 MiB measurement is the median of {SMALL_FILE_REPEATS} transfers in a row (one takes ~20 ms,
within the scheduler's noise); a 32 MiB one is one transfer. Cells: median (min-max) of
{args.runs} runs, interleaved (the server order alternates each run) after one unrecorded warm-up
pass that also checks every file's SHA-256 through both clients. The
ratio divides the medians. The clients and both servers share the machine's 2 vCPUs; lock-step
TFTP is bound by round trips between two processes (research/baselines.md §1: about 35,000 per
second between two Python processes), so those rows measure latency per packet, not bandwidth.

Our service runs its data path in a thread of its own on a `select.epoll` loop (the asyncio loop
only starts and stops it); while one transfer runs alone, the thread waits for its next ACK in a
blocking receive (at most 1 ms, 64 ACKs in a row) rather than in `epoll_wait`. Server CPU is
the cpuacct time of each server's cgroup (tftpd-hpa's forked children included) over each measured
run, divided by the DATA packets sent. The last
three columns are ceilings, not competitors: minimal Python servers that serve the same files from
memory with no timers, no retransmission and no checks, one on a blocking socket (one transfer at
a time), one on a `select.epoll` loop as ours is, and one on asyncio `loop.add_reader`
(`bench/tftp.py --probe`); they skip the concurrent row.

{bench.summary()}

{bench.table()}

<!-- Reproduce: {command} -->
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (median reported)")
    parser.add_argument("--concurrent", type=int, default=32, help="clients of the concurrent row")
    parser.add_argument(
        "--client-timeout", type=float, default=60.0, help="seconds before a client is killed"
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /dev/shm)")
    parser.add_argument(
        "--rows",
        type=lambda text: {key for key in text.split(",") if key},
        default=set(),
        help="only these workload keys, comma-separated (e.g. atftp-32m,atftp-32m-ws8)",
    )
    parser.add_argument(
        "--probes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure three minimal Python servers (blocking, epoll, asyncio): the ceilings",
    )
    parser.add_argument(
        "--tftp-workers",
        type=int,
        default=1,
        help="processes of our server (as tftp.workers in diskless serve)",
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    # internal: our server
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe", choices=sorted(PROBES.values()), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.serve is not None:
        if args.probe is not None:
            serve_probe(args.probe, args.serve, args.port)
        else:
            serve(args.serve, args.port, args.tftp_workers)
        return
    missing = [
        name
        for name, found in (("curl", CURL), ("atftp", ATFTP), ("in.tftpd", IN_TFTPD))
        if found is None or not Path(found).exists()
    ]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (apt-get install curl atftp tftpd-hpa)")
    started = time.monotonic()
    notes = machine_notes()
    with workdir(args.dir) as work_dir:
        bench = Bench(args, work_dir)
        bench.run()
    elapsed = time.monotonic() - started
    command = ".venv/bin/python bench/tftp.py " + " ".join(argv)
    print()
    print(bench.table())
    print()
    print(bench.summary())
    print(f"\n{notes}\ntotal {elapsed:.0f} s")
    if args.write_docs:
        text = render_docs(bench, command.strip(), notes, elapsed)
        print(f"updated {write_section('tftp', text)}")


if __name__ == "__main__":
    main(sys.argv[1:])
