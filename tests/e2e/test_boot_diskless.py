"""End-to-end: a real QEMU client boots Linux diskless through ``diskless serve`` alone.

Each scenario of issue 6: BIOS iPXE ROM (persistent disk, then a second boot reading the first
boot's marker), reset-on-boot, the legacy PXE chain over our TFTP, UEFI PXE, proxyDHCP beside a
foreign dnsmasq, two machines at once, and image versions. Every scenario also checks the boot
timeline the server recorded for the MAC.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bootlab import boot_lab, require_e2e
from diskless_stack import DisklessStack, LabMachine
from golden import golden_image
from vm import DEFAULT_MAC, BootResult, Firmware, VmConfig, boot

from diskless.storage.disks import DiskMode

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


@pytest.mark.timeout(900)
def test_reset_on_boot_disk_shows_the_golden_image_again(tmp_path: Path) -> None:
    require_e2e()
    seat = LabMachine(mac=DEFAULT_MAC, hostname="seat-01", mode=DiskMode.RESET_ON_BOOT)
    with boot_lab(tmp_path) as lab, DisklessStack(lab, golden_image(), [seat]) as stack:
        first = boot(lab.lan, lab.tap, tmp_path / "boot1", VmConfig(Firmware.BIOS))
        _report("boot 1", first)
        assert _marker(first)["boot-count"] == "1"
        second = boot(lab.lan, lab.tap, tmp_path / "boot2", VmConfig(Firmware.BIOS))
        _report("boot 2", second)
        assert _marker(second)["boot-count"] == "1"  # the first boot's write is gone
        assert second.read is not None
        assert second.read.startswith("boot-count=0 writer=build"), second.describe()
        _assert_timeline(stack.timeline(seat.mac))


@pytest.mark.timeout(900)
def test_proxy_dhcp_beside_a_foreign_dnsmasq(tmp_path: Path) -> None:
    require_e2e()
    with boot_lab(tmp_path) as lab:
        router = lab.net.host("router", address="198.18.0.254/24")
        lab.net.start(
            router,
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--no-ping",
                "--dhcp-range=198.18.0.200,198.18.0.220,255.255.255.0,10m",
                f"--dhcp-leasefile={tmp_path / 'router.leases'}",
                "--pid-file=",
                "--log-facility=-",
                "--log-dhcp",
            ],
            log=tmp_path / "router-dnsmasq.log",
        )
        with DisklessStack(lab, golden_image(), [SEAT], dhcp_mode="proxy") as stack:
            result = boot(lab.lan, lab.tap, tmp_path / "boot1", VmConfig(Firmware.BIOS))
            _report("proxy boot", result)
            words = _marker(result)
            assert words["writer"] == SEAT.initiator
            # The address came from the foreign server; only the boot answer from us.
            assert words["ip"].startswith("198.18.0.2"), words
            stages = stack.timeline(SEAT.mac)
            assert "proxy-offer" in stages, stages
            assert "dhcp-ack" not in stages, stages
            assert (
                stages.index("proxy-offer")
                < stages.index("http-script")
                < stages.index("iscsi-login")
            )


@pytest.mark.timeout(900)
def test_two_machines_boot_at_once_and_never_see_each_other(tmp_path: Path) -> None:
    require_e2e()
    other = LabMachine(mac="52:54:00:18:00:11", hostname="seat-02", ip="198.18.0.171")
    golden = golden_image()
    blob_digest = hashlib.sha256(golden.read_bytes()).hexdigest()
    with boot_lab(tmp_path) as lab, DisklessStack(lab, golden, [SEAT, other]) as stack:
        second_tap = lab.net.tap("tap1")
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(
                boot, lab.lan, lab.tap, tmp_path / "seat-01", VmConfig(Firmware.BIOS)
            )
            second = pool.submit(
                boot,
                lab.lan,
                second_tap,
                tmp_path / "seat-02",
                VmConfig(Firmware.BIOS, mac=other.mac),
            )
            results = {SEAT.hostname: first.result(), other.hostname: second.result()}
        for machine in (SEAT, other):
            result = results[machine.hostname]
            _report(machine.hostname, result)
            words = _marker(result)
            assert words["writer"] == machine.initiator
            assert words["ip"] == machine.ip
            assert result.read is not None
            assert result.read.startswith("boot-count=0 writer=build"), result.describe()
            _assert_timeline(stack.timeline(machine.mac))
        stack.stop()
        for machine in (SEAT, other):
            marker = stack.read_disk_file(machine.hostname, "/marker")
            assert f"writer={machine.initiator}" in marker
        version = stack.library.catalog.version("labos", 1)
        blob = stack.library.store.path(version.digest)
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob_digest


@pytest.mark.timeout(1200)
def test_a_committed_disk_becomes_a_version_others_boot_and_roll_back_from(
    tmp_path: Path,
) -> None:
    require_e2e()
    other = LabMachine(mac="52:54:00:18:00:11", hostname="seat-02", ip="198.18.0.171")
    with boot_lab(tmp_path) as lab, DisklessStack(lab, golden_image(), [SEAT, other]) as stack:
        prepared = boot(lab.lan, lab.tap, tmp_path / "prepare", VmConfig(Firmware.BIOS))
        _report("super client", prepared)
        assert _marker(prepared)["writer"] == SEAT.initiator
        stack.stop()
        committed = stack.library.disks.commit("seat-01", note="prepared by seat-01")
        assert committed.version.version == 2
        stack.library.disks.rollback("seat-02", 2)
        stack.start()
        on_new = boot(
            lab.lan, lab.tap, tmp_path / "seat-02-v2", VmConfig(Firmware.BIOS, mac=other.mac)
        )
        _report("seat-02 on version 2", on_new)
        assert on_new.read == prepared.wrote, on_new.describe()
        stack.stop()
        stack.library.disks.rollback("seat-02", 1)
        stack.start()
        rolled_back = boot(
            lab.lan, lab.tap, tmp_path / "seat-02-v1", VmConfig(Firmware.BIOS, mac=other.mac)
        )
        _report("seat-02 back on version 1", rolled_back)
        assert rolled_back.read is not None
        assert rolled_back.read.startswith("boot-count=0 writer=build"), rolled_back.describe()
        _assert_timeline(stack.timeline(other.mac))


@pytest.mark.timeout(900)
def test_legacy_pxe_chain_fetches_undionly_over_our_tftp(tmp_path: Path) -> None:
    require_e2e()
    with boot_lab(tmp_path) as lab, DisklessStack(lab, golden_image(), [SEAT]) as stack:
        result = boot(lab.lan, lab.tap, tmp_path / "legacy", VmConfig(Firmware.LEGACY_PXE))
        _report("legacy PXE chain", result)
        assert _marker(result)["writer"] == SEAT.initiator
        stages = stack.timeline(SEAT.mac)
        _assert_timeline(stages)
        # Firmware stage: undionly.kpxe over TFTP, then iPXE's own DHCP gets the script.
        assert "tftp-sent" in stages, stages
        assert stages.index("tftp-sent") < stages.index("http-script"), stages
        log = stack.log.read_text()
        assert "undionly.kpxe" in log


@pytest.mark.timeout(900)
def test_uefi_pxe_fetches_ipxe_efi_over_our_tftp_and_boots_grub(tmp_path: Path) -> None:
    require_e2e()
    with boot_lab(tmp_path) as lab, DisklessStack(lab, golden_image(), [SEAT]) as stack:
        result = boot(lab.lan, lab.tap, tmp_path / "uefi", VmConfig(Firmware.UEFI))
        _report("UEFI PXE", result)
        assert _marker(result)["writer"] == SEAT.initiator
        stages = stack.timeline(SEAT.mac)
        _assert_timeline(stages)
        assert "tftp-sent" in stages, stages
        assert "ipxe.efi" in stack.log.read_text()
