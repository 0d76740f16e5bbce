"""End-to-end: a real QEMU client boots Linux diskless through ``diskless serve`` alone.

Each scenario of issue 6: BIOS iPXE ROM (persistent disk, then a second boot reading the first
boot's marker), reset-on-boot, the legacy PXE chain over our TFTP, UEFI PXE, proxyDHCP beside a
foreign dnsmasq, two machines at once, and image versions. Every scenario also checks the boot
timeline the server recorded for the MAC.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bootlab import boot_lab, require_e2e
from diskless_stack import DisklessStack, LabMachine
from golden import golden_image
from vm import DEFAULT_MAC, BootResult, Firmware, VmConfig, boot

pytestmark = pytest.mark.e2e

SEAT = LabMachine(mac=DEFAULT_MAC, hostname="seat-01", ip="198.18.0.170")


def _report(name: str, result: BootResult) -> None:
    print(f"{name}: {result.verdict} in {result.ended - result.started:.1f} s")
    print(f"  {result.timings.format()}")


def _marker(result: BootResult) -> dict[str, str]:
    assert result.ok, result.describe()
    assert result.wrote is not None
    return dict(word.split("=", 1) for word in result.wrote.split())


def _assert_timeline(stages: list[str]) -> None:
    """DHCP, then the script, then iSCSI logins (iPXE's, then Linux's) and a first write."""
    assert "dhcp-ack" in stages, stages
    order = [stages.index(stage) for stage in ("dhcp-ack", "http-script", "iscsi-login")]
    assert order == sorted(order), stages
    assert stages.count("iscsi-login") >= 2, stages
    assert "iscsi-first-write" in stages, stages


@pytest.mark.timeout(900)
def test_bios_persistent_disk_survives_a_reboot(tmp_path: Path) -> None:
    require_e2e()
    with boot_lab(tmp_path) as lab, DisklessStack(lab, golden_image(), [SEAT]) as stack:
        first = boot(lab.lan, lab.tap, tmp_path / "boot1", VmConfig(Firmware.BIOS))
        _report("boot 1", first)
        words = _marker(first)
        assert words["boot-count"] == "1"
        assert words["writer"] == SEAT.initiator
        assert words["ip"] == SEAT.ip
        _assert_timeline(stack.timeline(SEAT.mac))

        second = boot(lab.lan, lab.tap, tmp_path / "boot2", VmConfig(Firmware.BIOS))
        _report("boot 2", second)
        assert _marker(second)["boot-count"] == "2"
        assert second.read == first.wrote, second.describe()
        stack.stop()
        assert stack.read_disk_file("seat-01", "/marker").strip() == second.wrote
