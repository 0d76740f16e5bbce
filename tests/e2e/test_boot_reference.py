"""End-to-end: a real QEMU client boots the golden disk diskless through the reference servers.

BIOS iPXE ROM → DHCP (dnsmasq) → HTTP script (busybox httpd) → sanboot from tgt → extlinux →
Linux, whose initramfs logs in again from the iBFT, reads /marker and writes the next one. The
second boot must read exactly what the first wrote. This proves the golden disk and the harness;
the same scenario against ``diskless serve`` only swaps the servers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bootlab import boot_lab, require_e2e
from golden import golden_image, read_root_file
from reference_stack import DHCP_POOL, ReferenceStack, initiator_iqn
from vm import DEFAULT_MAC, BootResult, Firmware, Verdict, VmConfig, boot

pytestmark = pytest.mark.e2e


def _report(name: str, result: BootResult) -> None:
    print(f"{name}: {result.verdict} in {result.ended - result.started:.1f} s")
    print(f"  {result.timings.format()}")
    print(f"  guest uptimes: {result.timings.guest}")


def _assert_marker(result: BootResult, count: int) -> None:
    assert result.ok, result.describe()
    assert result.wrote is not None
    words = dict(word.split("=", 1) for word in result.wrote.split())
    assert words["boot-count"] == str(count), result.describe()
    assert words["writer"] == initiator_iqn(DEFAULT_MAC), result.describe()
    assert words["ip"].startswith("198.18.0."), result.describe()
    low, high = (int(address.rsplit(".", 1)[1]) for address in DHCP_POOL)
    assert low <= int(words["ip"].rsplit(".", 1)[1]) <= high


@pytest.mark.timeout(900)  # two boots, each bounded by 300 s + 35 s
def test_bios_ipxe_boots_twice_and_the_second_boot_reads_the_first(tmp_path: Path) -> None:
    require_e2e("tgtd", "tgtadm", "busybox")
    golden = golden_image()
    with boot_lab(tmp_path) as lab, ReferenceStack(lab, golden) as stack:
        first = boot(lab.lan, lab.tap, tmp_path / "boot1", VmConfig(Firmware.BIOS))
        _report("boot 1", first)
        _assert_marker(first, 1)
        assert first.read is not None
        assert first.read.startswith("boot-count=0 writer=build"), first.describe()
        assert read_root_file(stack.disk, "/marker").strip() == first.wrote

        second = boot(lab.lan, lab.tap, tmp_path / "boot2", VmConfig(Firmware.BIOS))
        _report("boot 2", second)
        _assert_marker(second, 2)
        assert second.read == first.wrote, second.describe()
        history = read_root_file(stack.disk, "/boot-history.log").splitlines()
        assert history[1:] == [first.wrote, second.wrote]

        timings = second.timings
        for mark in ("dhcp_start", "script", "kernel", "init", "iscsi_login", "wrote"):
            assert getattr(timings, mark) is not None, f"{mark} missing: {second.describe()}"
        assert timings.wrote is not None
        assert timings.wrote < 120, f"boot took {timings.wrote:.1f} s: {timings.format()}"
    # The cached golden image is never handed to a target.
    assert read_root_file(golden, "/marker").startswith("boot-count=0 writer=build")


@pytest.mark.parametrize(
    ("firmware", "platform", "tftp_file"),
    [
        pytest.param(Firmware.LEGACY_PXE, "pcbios", "undionly.kpxe", id="legacy-pxe"),
        pytest.param(Firmware.UEFI, "efi", "ipxe.efi", id="uefi-pxe"),
        pytest.param(Firmware.UEFI_IPXE, "efi", None, id="uefi-ipxe-rom"),
    ],
)
def test_other_firmware_paths_boot_the_same_disk(
    tmp_path: Path, firmware: Firmware, platform: str, tftp_file: str | None
) -> None:
    """Legacy PXE (arch 0 → TFTP undionly.kpxe), OVMF PXE (arch 7 → TFTP ipxe.efi → GRUB) and
    OVMF with iPXE's EFI ROM (straight to HTTP) all end in the same guest writing its marker."""
    require_e2e("tgtd", "tgtadm", "busybox")
    with boot_lab(tmp_path) as lab, ReferenceStack(lab, golden_image()) as stack:
        result = boot(lab.lan, lab.tap, tmp_path / "boot", VmConfig(firmware))
        _report(str(firmware), result)
        _assert_marker(result, 1)
        script = next(line.text for line in result.lines if "LAB-IPXE-SCRIPT" in line.text)
        assert f"platform={platform}" in script, result.describe()
        loader = "LAB-GRUB-EFI" if platform == "efi" else "LAB-EXTLINUX"
        assert any(loader in line.text for line in result.lines), result.describe()
        log = (stack.workdir / "dnsmasq.log").read_text()
        sent = [
            line for line in log.splitlines() if line.startswith("dnsmasq-tftp") and "sent" in line
        ]
        if tftp_file is None:
            assert sent == [], log
        else:
            assert any(f"/{tftp_file} to 198.18.0." in line for line in sent), log


def test_a_script_asking_for_the_wrong_lun_is_a_fast_failure(tmp_path: Path) -> None:
    """tgt's LUN 0 is its controller: sanboot cannot read it, and the verdict says so at once."""
    require_e2e("tgtd", "tgtadm", "busybox")
    with boot_lab(tmp_path) as lab, ReferenceStack(lab, golden_image(), script_lun=0) as stack:
        result = boot(lab.lan, lab.tap, tmp_path / "boot", VmConfig(Firmware.BIOS))
        _report("wrong LUN", result)
        assert result.verdict is Verdict.IPXE_FAIL, result.describe()
        assert not result.ok
        assert result.wrote is None
        assert result.timings.script is not None
        assert result.ended - result.started < 30, result.describe()
        assert read_root_file(stack.disk, "/marker").startswith("boot-count=0 writer=build")
