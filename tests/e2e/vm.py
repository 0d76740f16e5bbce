"""Run one network-booting QEMU client on a tap device and judge its serial console.

:func:`boot` starts ``qemu-system-x86_64`` inside a network namespace (``nsenter --net``, so the VM
finds the tap there and shares files with the test), captures COM1 into ``serial.log`` with host
timestamps, and returns a :class:`BootResult` once the guest reached a verdict and powered off, or
the time limit ran out. QEMU is always stopped and the FIFO removed, however the call ends.

Firmware modes (:class:`Firmware`):

* ``bios``: SeaBIOS, QEMU's iPXE ROM on virtio-net (``-boot n``). SeaBIOS mirrors all VGA text to
  COM1 (``etc/sercon-port``), so SeaBIOS, iPXE and extlinux are in the log despite ``-vga none``.
* ``legacy-pxe``: SeaBIOS, no NIC ROM, ``-kernel ipxe.lkrn`` posing as a plain PXE ROM: DHCP with
  user class ``LegacyPXE``, then TFTP ``${filename}`` (the server should answer ``undionly.kpxe``,
  which DHCPs again as ``iPXE``).
* ``uefi``: OVMF's own PXE client (no NIC ROM): DHCP with option 93 = 7, TFTP ``ipxe.efi``.
* ``uefi-ipxe``: OVMF with iPXE's EFI NIC ROM: iPXE DHCPs itself and goes straight to HTTP.

Everything runs under TCG (nested KVM does not work on the CI machines); set
``DISKLESS_E2E_ACCEL=kvm`` to opt in to KVM elsewhere.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

QEMU = "qemu-system-x86_64"
OVMF = Path("/usr/share/ovmf/OVMF.fd")
IPXE_LKRN = Path("/usr/lib/ipxe/ipxe.lkrn")
DEFAULT_MAC = "52:54:00:18:00:10"

# The one-line iPXE script that makes ipxe.lkrn behave like a legacy PXE ROM. `clear user-class`
# matters: undionly.kpxe reuses the cached DHCP packets, which would still carry LegacyPXE.
LEGACY_PXE_SCRIPT = (
    "set user-class LegacyPXE && dhcp && clear user-class && "
    "chain tftp://${next-server}/${filename}"
)

# After LAB-WROTE or LAB-FAIL the guest powers off by itself; it gets this long to do so.
POWER_OFF_GRACE = 30.0
# Other verdicts (iPXE failed, no bootable device, panic) leave firmware or kernel running: keep
# a few seconds of trailing output, then stop QEMU.
TRAILING_OUTPUT = 3.0


class Firmware(enum.StrEnum):
    BIOS = "bios"
    LEGACY_PXE = "legacy-pxe"
    UEFI = "uefi"
    UEFI_IPXE = "uefi-ipxe"

    @property
    def time_limit(self) -> float:
        return 420.0 if self in (Firmware.UEFI, Firmware.UEFI_IPXE) else 300.0


class Verdict(enum.StrEnum):
    WROTE = "LAB-WROTE"
    FAIL = "LAB-FAIL"
    IPXE_FAIL = "LAB-IPXE-FAIL"
    PANIC = "Kernel panic"
    NO_BOOT = "No bootable device"
    LOADER_FAIL = "boot loader failed"
    TIMEOUT = "timeout"
    EXITED = "qemu exited without a verdict"


# First match on a serial line wins; the guest's own markers before the generic failures.
_VERDICTS: tuple[tuple[str, Verdict], ...] = (
    ("LAB-WROTE:", Verdict.WROTE),
    ("LAB-FAIL:", Verdict.FAIL),
    ("LAB-IPXE-FAIL", Verdict.IPXE_FAIL),
    ("Kernel panic", Verdict.PANIC),
    ("No bootable device", Verdict.NO_BOOT),
    ("No bootable option or device", Verdict.NO_BOOT),
)
# extlinux: "Loading /boot/vmlinuz... failed: I/O error", then it sits at its "boot:" prompt.
_LOADER_FAILED = re.compile(r"^Loading \S+\.\.\. failed|^Could not find kernel image")


@dataclass(frozen=True)
class VmConfig:
    firmware: Firmware = Firmware.BIOS
    mac: str = DEFAULT_MAC
    memory_mib: int = 512
    uuid: str | None = None  # option 97; QEMU sends all zeros without it
    time_limit: float | None = None  # default: 300 s BIOS, 420 s UEFI
    accel: str = field(default_factory=lambda: os.environ.get("DISKLESS_E2E_ACCEL", "tcg"))
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class SerialLine:
    """One console line: host epoch times of its first byte and of its newline."""

    start: float
    end: float
    text: str


_ANSI = re.compile(rb"\x1b(\[[0-9;=?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[@-Z\\-_c])")
_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


class SerialCapture:
    """Reads the FIFO QEMU writes COM1 into; stamps, cleans and logs lines; spots the verdict.

    The reader opens the FIFO (non-blocking) before QEMU starts, and holds a write end of its own
    so that reads never see end-of-file before QEMU opens it or after QEMU closes it.
    """

    def __init__(self, fifo: Path, log: Path) -> None:
        self.lines: list[SerialLine] = []
        self.verdict: tuple[Verdict, str] | None = None
        self.decided = threading.Event()
        self._log = log.open("w", buffering=1)
        self._fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._keep_open = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        self._pending = b""
        self._pending_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serial", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if ready:
                self._drain()
        self._drain()
        if self._pending:
            self._emit(time.time())

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            now = time.time()
            for chunk in data.splitlines(keepends=True):
                if not self._pending:
                    self._pending_start = now
                self._pending += chunk
                if chunk.endswith(b"\n"):
                    self._emit(now)

    def _emit(self, now: float) -> None:
        raw, self._pending = self._pending, b""
        text = _CONTROL.sub(b"", _ANSI.sub(b"", raw)).decode(errors="replace").rstrip()
        if not text.strip():
            return
        line = SerialLine(self._pending_start, now, text)
        self.lines.append(line)
        self._log.write(f"{line.start:.3f} {line.end:.3f} {text}\n")
        if self.verdict is None:
            for needle, verdict in _VERDICTS:
                if needle in text:
                    self.verdict = (verdict, text)
                    break
            else:
                if _LOADER_FAILED.search(text):
                    self.verdict = (Verdict.LOADER_FAIL, text)
            if self.verdict is not None:
                self.decided.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for fd in (self._fd, self._keep_open):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()


@dataclass(frozen=True)
class BootTimings:
    """Phase marks in seconds since QEMU started (None: not seen), from the serial log.

    ``dhcp_start`` is the first byte of iPXE's first ``Configuring (net…)`` line, ``dhcp_done``
    the end (the ``ok``) of its last one before the script (the legacy chain DHCPs twice, with
    the TFTP transfer between); ``script`` is the script's first echo; ``kernel`` is the
    kernel's first output (its real-mode ``Probing EDD`` or the EFI stub) and ``kernel_console``
    the end of its ``Linux version`` line, when its console came up (after decompression).
    ``guest`` holds the guest's own ``LAB-T`` uptimes.
    """

    firmware: float | None = None
    pxe: float | None = None
    ipxe: float | None = None
    dhcp_start: float | None = None
    dhcp_done: float | None = None
    script: float | None = None
    sanboot: float | None = None
    loader: float | None = None
    kernel: float | None = None
    kernel_console: float | None = None
    init: float | None = None
    iscsi_login: float | None = None
    wrote: float | None = None
    exited: float | None = None
    guest: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_lines(
        cls, lines: Sequence[SerialLine], started: float, exited: float | None
    ) -> BootTimings:
        def first(*needles: str, end: bool = False) -> float | None:
            for line in lines:
                if any(needle in line.text for needle in needles):
                    return (line.end if end else line.start) - started
            return None

        # The reference script's echo marks, or the first line of a diskless script.
        script = first("LAB-IPXE-SCRIPT", "diskless: ")
        dhcp_done = None
        for line in lines:
            if script is not None and line.start - started >= script:
                break
            if "Configuring (net" in line.text or "DHCP (net" in line.text:
                dhcp_done = line.end - started
        guest: dict[str, float] = {}
        for line in lines:
            match = re.search(r"LAB-T (\S+) ([0-9.]+)", line.text)
            if match:
                guest.setdefault(match.group(1), float(match.group(2)))
        return cls(
            firmware=lines[0].start - started if lines else None,
            pxe=first(">>Start PXE"),
            ipxe=first("iPXE initialising", "iPXE (http", "iPXE (https"),
            dhcp_start=first("Configuring (net", "DHCP (net"),
            dhcp_done=dhcp_done,
            script=script,
            sanboot=first("LAB-IPXE-SANBOOT", "boots its iSCSI disk"),
            loader=first("LAB-EXTLINUX", "LAB-GRUB-EFI"),
            kernel=first("Probing EDD", "EFI stub:", "Linux version"),
            kernel_console=first("Linux version", end=True),
            init=first("LAB-T init-start"),
            iscsi_login=first("LAB-T iscsi-login"),
            wrote=first("LAB-WROTE:"),
            exited=None if exited is None else exited - started,
            guest=guest,
        )

    def phases(self) -> dict[str, float | None]:
        """Durations between consecutive marks (None when either end is missing)."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 2)

        return {
            "qemu→firmware": self.firmware,
            "firmware→dhcp": span(self.firmware, self.dhcp_start),
            "dhcp": span(self.dhcp_start, self.dhcp_done),
            "dhcp→script": span(self.dhcp_done, self.script),
            "script→kernel": span(self.script, self.kernel),
            "kernel→init": span(self.kernel, self.init),
            "init→iscsi-login": span(self.init, self.iscsi_login),
            "iscsi-login→wrote": span(self.iscsi_login, self.wrote),
            "total (qemu→wrote)": self.wrote,
        }

    def format(self) -> str:
        parts = [
            f"{name} {'-' if value is None else f'{value:.2f}s'}"
            for name, value in self.phases().items()
        ]
        return " | ".join(parts)


@dataclass(frozen=True)
class BootResult:
    verdict: Verdict
    detail: str  # the serial line that decided, or why there was none
    serial_log: Path
    qemu_log: Path
    lines: tuple[SerialLine, ...]
    started: float
    ended: float
    returncode: int | None
    timings: BootTimings

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.WROTE

    def _marker(self, prefix: str) -> str | None:
        for line in self.lines:
            index = line.text.find(prefix)
            if index >= 0:
                return line.text[index + len(prefix) :].strip()
        return None

    @property
    def read(self) -> str | None:
        """What the guest found in ``/marker`` (``<none>`` if nothing)."""
        return self._marker("LAB-READ:")

    @property
    def wrote(self) -> str | None:
        return self._marker("LAB-WROTE:")

    def describe(self, tail: int = 80) -> str:
        """Verdict, timings and the end of both logs, for assertion messages."""
        text = "\n".join(line.text for line in self.lines[-tail:])
        qemu = self.qemu_log.read_text(errors="replace")[-2000:] if self.qemu_log.exists() else ""
        return (
            f"verdict: {self.verdict} ({self.detail}); qemu exit {self.returncode}\n"
            f"timings: {self.timings.format()}\n"
            f"--- serial ({self.serial_log}) ---\n{text}\n--- qemu ---\n{qemu}"
        )


class VmError(RuntimeError):
    """QEMU or its firmware is missing."""


def qemu_argv(config: VmConfig, tap: str, fifo: Path, workdir: Path) -> list[str]:
    """The QEMU command line for one boot (without the nsenter prefix)."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise VmError(f"{QEMU} is missing (Debian package qemu-system-x86)")
    nic = f"virtio-net-pci,netdev=n0,mac={config.mac}"
    argv = [
        qemu,
        "-name",
        "diskless-e2e",
        "-m",
        str(config.memory_mib),
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-no-reboot",
        "-accel",
        config.accel,
        "-chardev",
        f"file,id=ser0,path={fifo}",
        "-serial",
        "chardev:ser0",
        "-netdev",
        f"tap,id=n0,ifname={tap},script=no,downscript=no",
    ]
    if config.uuid is not None:
        argv += ["-uuid", config.uuid]
    if config.firmware in (Firmware.BIOS, Firmware.LEGACY_PXE):
        sercon = workdir / "sercon-port"
        sercon.write_bytes(b"\xf8\x03")  # COM1 = 0x3f8, little-endian
        argv += ["-machine", "pc", "-fw_cfg", f"name=etc/sercon-port,file={sercon}"]
        if config.firmware is Firmware.BIOS:
            argv += ["-boot", "n", "-device", nic]
        else:
            if not IPXE_LKRN.exists():
                raise VmError(f"{IPXE_LKRN} is missing (Debian package ipxe)")
            argv += ["-device", f"{nic},romfile="]
            argv += ["-kernel", str(IPXE_LKRN), "-append", LEGACY_PXE_SCRIPT]
    else:
        if not OVMF.exists():
            raise VmError(f"{OVMF} is missing (Debian package ovmf)")
        argv += ["-machine", "q35", "-bios", str(OVMF)]
        rom = ",romfile=" if config.firmware is Firmware.UEFI else ""
        argv += ["-device", f"{nic}{rom},bootindex=1"]
    return [*argv, *config.extra_args]


def boot(netns: str, tap: str, workdir: Path, config: VmConfig | None = None) -> BootResult:
    """Boot one VM on ``tap`` in namespace ``netns``; logs and scratch files go to ``workdir``."""
    config = config or VmConfig()
    workdir.mkdir(parents=True, exist_ok=True)
    fifo = workdir / "serial.fifo"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo, 0o600)
    serial_log = workdir / "serial.log"
    qemu_log = workdir / "qemu.log"
    time_limit = config.time_limit or config.firmware.time_limit
    argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *qemu_argv(config, tap, fifo, workdir)]
    (workdir / "qemu.cmdline").write_text(" ".join(argv) + "\n")

    capture = SerialCapture(fifo, serial_log)
    process: subprocess.Popen[bytes] | None = None
    started = time.time()
    verdict: Verdict | None = None
    detail = ""
    exited: float | None = None  # when QEMU was seen gone (within 0.2 s)
    try:
        with qemu_log.open("wb") as out:
            # nsenter execs QEMU, so this PID is QEMU's; it stays ours until we reap it.
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + time_limit
        while time.monotonic() < deadline and process.poll() is None:
            if capture.decided.wait(timeout=0.2):
                break
        if capture.verdict is not None:
            powers_off = capture.verdict[0] in (Verdict.WROTE, Verdict.FAIL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=POWER_OFF_GRACE if powers_off else TRAILING_OUTPUT)
        if process.poll() is not None:
            exited = time.time()
            time.sleep(0.3)  # let the reader take the last bytes QEMU wrote
        if capture.verdict is None:
            if exited is None:
                verdict, detail = Verdict.TIMEOUT, f"no verdict within {time_limit:.0f} s"
            else:
                verdict, detail = Verdict.EXITED, f"exit status {process.returncode}"
    finally:
        if process is not None:
            _stop(process)
        ended = time.time()
        capture.close()
        fifo.unlink(missing_ok=True)
    if capture.verdict is not None:
        verdict, detail = capture.verdict
    assert verdict is not None
    lines = tuple(capture.lines)
    return BootResult(
        verdict=verdict,
        detail=detail,
        serial_log=serial_log,
        qemu_log=qemu_log,
        lines=lines,
        started=started,
        ended=ended,
        returncode=None if process is None else process.returncode,
        timings=BootTimings.from_lines(lines, started, exited),
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 5 s, SIGKILL: only ever our own, not yet reaped child."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
