"""The QEMU runner's serial capture, verdicts, timings and command lines (no VM, no root)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import vm
from vm import BootTimings, Firmware, SerialCapture, SerialLine, Verdict, VmConfig


def _capture(tmp_path: Path, chunks: list[bytes], pause: float = 0.0) -> SerialCapture:
    """Feed ``chunks`` through a FIFO the way QEMU's file chardev writes it."""
    fifo = tmp_path / "serial.fifo"
    os.mkfifo(fifo)
    capture = SerialCapture(fifo, tmp_path / "serial.log")
    writer = os.open(fifo, os.O_WRONLY)
    try:
        for chunk in chunks:
            os.write(writer, chunk)
            time.sleep(pause)
    finally:
        os.close(writer)
    deadline = time.monotonic() + 1.5
    while not capture.decided.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    capture.close()
    return capture


def test_lines_are_cleaned_stamped_and_logged(tmp_path: Path) -> None:
    capture = _capture(
        tmp_path,
        [
            b"\x1bcSeaBIOS (version 1.16.2)\r\n",
            b"\x1b[=3h\x1b[0;37;40mConfiguring (net0 52:54:00:18:00:10)...",
            b" ok\r\n\r\n",
            b"LAB-READ: boot-count=0 writer=build\r\nLAB-WROTE: boot-count=1 writer=x\r\n",
            b"after the verdict\r\n",
        ],
        pause=0.1,
    )
    texts = [line.text for line in capture.lines]
    assert texts == [
        "SeaBIOS (version 1.16.2)",
        "Configuring (net0 52:54:00:18:00:10)... ok",
        "LAB-READ: boot-count=0 writer=build",
        "LAB-WROTE: boot-count=1 writer=x",
        "after the verdict",
    ]
    configuring = capture.lines[1]
    assert configuring.end - configuring.start >= 0.08  # first byte vs newline
    assert capture.verdict == (Verdict.WROTE, "LAB-WROTE: boot-count=1 writer=x")
    logged = (tmp_path / "serial.log").read_text().splitlines()
    assert len(logged) == 5
    start, end, text = logged[1].split(" ", 2)
    assert float(start) == pytest.approx(configuring.start, abs=0.001)
    assert float(end) == pytest.approx(configuring.end, abs=0.001)
    assert text == configuring.text


@pytest.mark.parametrize(
    ("line", "verdict"),
    [
        (b"LAB-FAIL: iscsistart -b (login to t as i)", Verdict.FAIL),
        (b"LAB-IPXE-FAIL sanboot errno=0x1d704039", Verdict.IPXE_FAIL),
        (b"[    3.1] Kernel panic - not syncing: Attempted to kill init!", Verdict.PANIC),
        (b"No bootable device.  Retrying in 60 seconds.", Verdict.NO_BOOT),
        (b"Loading /boot/vmlinuz... failed: I/O error", Verdict.LOADER_FAIL),
    ],
)
def test_the_first_verdict_line_decides(tmp_path: Path, line: bytes, verdict: Verdict) -> None:
    capture = _capture(tmp_path, [b"iPXE initialising devices...ok\r\n", line + b"\r\n",
                                  b"LAB-WROTE: too late\r\n"])  # fmt: skip
    assert capture.verdict is not None
    assert capture.verdict[0] is verdict
    assert capture.verdict[1] == line.decode()


def test_no_verdict_without_a_marker(tmp_path: Path) -> None:
    capture = _capture(tmp_path, [b"LAB-T init-start 2.5\r\n", b"Loading /boot/vmlinuz... ok\r\n"])
    assert capture.verdict is None
    assert not capture.decided.is_set()


def test_timings_follow_the_boot_phases() -> None:
    t0 = 1000.0

    def at(start: float, text: str, end: float | None = None) -> SerialLine:
        return SerialLine(t0 + start, t0 + (start if end is None else end), text)

    lines = [
        at(0.1, "SeaBIOS (version 1.16.2)"),
        at(0.5, "iPXE initialising devices...ok"),
        at(1.0, "Configuring (net0 52:54:00:18:00:10)... ok", 1.5),  # ipxe.lkrn
        at(2.0, "Configuring (net0 52:54:00:18:00:10)... ok", 2.2),  # undionly.kpxe
        at(2.3, "LAB-IPXE-SCRIPT platform=pcbios"),
        at(2.4, "LAB-IPXE-SANBOOT iqn iscsi:198.18.0.1:::1:iqn"),
        at(2.6, "LAB-EXTLINUX: booting /boot/vmlinuz"),
        at(3.0, "Probing EDD (edd=off to disable)... ok[    0.000000] Linux version 6.1", 5.0),
        at(7.0, "LAB-T init-start 2.61"),
        at(8.0, "LAB-T iscsi-login 3.61"),
        at(8.5, "LAB-WROTE: boot-count=1"),
        at(9.0, "Configuring (net0 after the script) ok", 9.5),
    ]
    timings = BootTimings.from_lines(lines, t0, t0 + 10.0)
    assert timings.firmware == pytest.approx(0.1)
    assert timings.ipxe == pytest.approx(0.5)
    assert timings.dhcp_start == pytest.approx(1.0)
    assert timings.dhcp_done == pytest.approx(2.2)
    assert timings.script == pytest.approx(2.3)
    assert timings.loader == pytest.approx(2.6)
    assert timings.kernel == pytest.approx(3.0)
    assert timings.kernel_console == pytest.approx(5.0)
    assert timings.iscsi_login == pytest.approx(8.0)
    assert timings.wrote == pytest.approx(8.5)
    assert timings.exited == pytest.approx(10.0)
    assert timings.guest == {"init-start": 2.61, "iscsi-login": 3.61}
    phases = timings.phases()
    assert phases["dhcp"] == pytest.approx(1.2)
    assert phases["script→kernel"] == pytest.approx(0.7)
    assert phases["total (qemu→wrote)"] == pytest.approx(8.5)
    assert "dhcp 1.20s" in timings.format()
    empty = BootTimings.from_lines([], t0, None)
    assert empty.wrote is None
    assert empty.phases()["dhcp"] is None
    assert "dhcp -" in empty.format()


@pytest.fixture
def fake_firmware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("vm.shutil.which", lambda name: f"/usr/bin/{name}")
    for name in ("IPXE_LKRN", "OVMF"):
        path = tmp_path / name
        path.write_bytes(b"")
        monkeypatch.setattr(vm, name, path)
    return tmp_path


def _device(argv: list[str]) -> str:
    return argv[argv.index("-device") + 1]


def test_bios_command_line_uses_the_nic_rom_and_sercon(fake_firmware: Path) -> None:
    argv = vm.qemu_argv(VmConfig(Firmware.BIOS, accel="tcg"), "tap0", Path("/f"), fake_firmware)
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-no-reboot" in argv
    assert "-enable-kvm" not in argv
    assert argv[argv.index("-boot") + 1] == "n"
    assert _device(argv) == "virtio-net-pci,netdev=n0,mac=52:54:00:18:00:10"
    assert "tap,id=n0,ifname=tap0,script=no,downscript=no" in argv
    assert "file,id=ser0,path=/f" in argv
    assert (fake_firmware / "sercon-port").read_bytes() == b"\xf8\x03"
    assert "-kernel" not in argv


def test_legacy_pxe_command_line_chains_through_ipxe_lkrn(fake_firmware: Path) -> None:
    argv = vm.qemu_argv(VmConfig(Firmware.LEGACY_PXE), "tap0", Path("/f"), fake_firmware)
    assert _device(argv).endswith(",romfile=")
    assert argv[argv.index("-kernel") + 1] == str(fake_firmware / "IPXE_LKRN")
    script = argv[argv.index("-append") + 1]
    assert "set user-class LegacyPXE && dhcp && clear user-class" in script


def test_uefi_command_lines(fake_firmware: Path) -> None:
    pxe = vm.qemu_argv(VmConfig(Firmware.UEFI, uuid="u-1"), "t", Path("/f"), fake_firmware)
    assert pxe[pxe.index("-machine") + 1] == "q35"
    assert pxe[pxe.index("-bios") + 1] == str(fake_firmware / "OVMF")
    assert _device(pxe).endswith(",romfile=,bootindex=1")
    assert pxe[pxe.index("-uuid") + 1] == "u-1"
    rom = vm.qemu_argv(VmConfig(Firmware.UEFI_IPXE), "t", Path("/f"), fake_firmware)
    assert "romfile" not in _device(rom)
    assert Firmware.UEFI.time_limit == 420
    assert Firmware.BIOS.time_limit == 300


def test_a_missing_qemu_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vm.shutil.which", lambda name: None)
    with pytest.raises(vm.VmError, match="qemu-system-x86"):
        vm.qemu_argv(VmConfig(), "tap0", Path("/f"), tmp_path)


def test_capture_survives_a_writer_that_never_comes(tmp_path: Path) -> None:
    """QEMU may die before it opens the FIFO: the reader must not block."""
    fifo = tmp_path / "serial.fifo"
    os.mkfifo(fifo)
    done = threading.Event()

    def run() -> None:
        SerialCapture(fifo, tmp_path / "serial.log").close()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout=5)
