"""The boot decision, exhaustively over architectures, iPXE detection and machine overrides."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from diskless.boot import (
    BootEvent,
    BootSite,
    BootStage,
    BootTimeline,
    Firmware,
    LinuxTarget,
    LocalDiskTarget,
    Machine,
    MachineBook,
    RequestFacts,
    SanbootTarget,
    classify_arch,
    decide,
    iscsi_names,
    load_machine_book,
    parse_mac,
)
from diskless.errors import ConfigError

MAC = parse_mac("52:54:00:18:00:10")
SITE = BootSite(
    server=IPv4Address("198.18.0.1"),
    http_port=8080,
    loaders={
        Firmware.BIOS: "undionly.kpxe",
        Firmware.UEFI_X64: "ipxe.efi",
        Firmware.UEFI_ARM64: "arm64/ipxe.efi",
    },
)
MACHINE = Machine(mac=MAC, hostname="seat-01", ip=IPv4Address("198.18.0.170"))


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        (None, "undionly.kpxe"),
        (0, "undionly.kpxe"),
        (7, "ipxe.efi"),
        (9, "ipxe.efi"),
        (11, "arm64/ipxe.efi"),
    ],
)
def test_pxe_firmware_gets_the_program_for_its_architecture(
    arch: int | None, expected: str
) -> None:
    plan = decide(MACHINE, RequestFacts(mac=MAC, arch=arch), SITE)
    assert plan is not None
    assert plan.loader is not None
    assert plan.loader.file == expected
    assert not plan.loader.over_http


@pytest.mark.parametrize("arch", [16, 19])
def test_uefi_http_boot_gets_a_url_and_httpclient(arch: int) -> None:
    plan = decide(MACHINE, RequestFacts(mac=MAC, arch=arch, vendor_class="HTTPClient"), SITE)
    assert plan is not None
    assert plan.loader is not None
    assert plan.loader.over_http
    assert plan.loader.file.startswith("http://198.18.0.1:8080/ipxe/")


@pytest.mark.parametrize("arch", [None, 0, 7, 9, 11, 16])
def test_ipxe_gets_its_script_url_whatever_the_architecture(arch: int | None) -> None:
    plan = decide(MACHINE, RequestFacts(mac=MAC, arch=arch, ipxe=True), SITE)
    assert plan is not None
    assert plan.loader is not None
    assert plan.loader.file == "http://198.18.0.1:8080/boot/52:54:00:18:00:10.ipxe"


@pytest.mark.parametrize("arch", [6, 10, 0x0F, 0x12, 0x42, 0xFFFF])
def test_a_firmware_without_a_program_gets_no_loader(arch: int) -> None:
    plan = decide(MACHINE, RequestFacts(mac=MAC, arch=arch), SITE)
    assert plan is not None
    assert plan.loader is None


def test_unknown_arch_codes_classify_as_unknown_not_an_error() -> None:
    assert classify_arch(0x42).firmware is Firmware.UNKNOWN
    assert classify_arch(None).firmware is Firmware.BIOS


def test_next_boot_once_wins_and_is_flagged() -> None:
    machine = MACHINE.model_copy(update={"next_boot_once": LocalDiskTarget()})
    plan = decide(machine, RequestFacts(mac=MAC), SITE)
    assert plan is not None
    assert plan.target == LocalDiskTarget()
    assert plan.once


def test_unknown_clients_get_the_site_menu_or_nothing() -> None:
    plan = decide(None, RequestFacts(mac=MAC), SITE)
    assert plan is not None
    assert not plan.known
    assert plan.target.kind == "menu"
    ignoring = BootSite(server=SITE.server, unknown_target=None)
    assert decide(None, RequestFacts(mac=MAC), ignoring) is None


def test_machines_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "machines.toml"
    path.write_text(
        """
[[machine]]
mac = "52-54-00-18-00-10"
hostname = "seat-01"
ip = "198.18.0.170"

[[machine]]
mac = "525400180011"
hostname = "installer"
boot = { kind = "linux", kernel = "debian/linux", initrd = ["debian/initrd.gz"] }
next_boot_once = { kind = "sanboot", keep_san = true }
""",
        encoding="utf-8",
    )
    book = load_machine_book(path)
    assert len(book) == 2
    seat = book.by_mac(MAC)
    assert seat is not None
    assert seat.boot == SanbootTarget()
    assert book.by_ip(IPv4Address("198.18.0.170")) is seat
    installer = book.by_hostname("INSTALLER")
    assert installer is not None
    assert isinstance(installer.boot, LinuxTarget)
    assert installer.next_boot_once == SanbootTarget(keep_san=True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[machine]]\nmac = "zz"\nhostname = "a"\n', "machine.0.mac"),
        ('[[machine]]\nmac = "525400180010"\nhostname = "a"\nboot = { kind = "x" }\n', "boot"),
        (
            '[[machine]]\nmac = "525400180010"\nhostname = "a"\n'
            '[[machine]]\nmac = "52:54:00:18:00:10"\nhostname = "b"\n',
            "share the MAC",
        ),
        ("[[machine]\n", "not valid TOML"),
    ],
)
def test_bad_machines_files_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "machines.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_machine_book(path)


def test_duplicate_reserved_addresses_are_refused() -> None:
    other = Machine(mac=parse_mac("525400180011"), hostname="b", ip=MACHINE.ip)
    with pytest.raises(ConfigError, match="reserve the address"):
        MachineBook([MACHINE, other])


def test_iscsi_names_derive_from_the_record() -> None:
    names = iscsi_names(MACHINE, "iqn.2026-11.org.example")
    assert names.target == "iqn.2026-11.org.example:disk.seat-01"
    assert names.initiator == "iqn.2026-11.org.example:client.seat-01"
    named = MACHINE.model_copy(update={"initiator_name": "iqn.1991-05.com.microsoft:seat"})
    assert iscsi_names(named, "iqn.x", disk="Win11").target == "iqn.x:disk.win11"
    assert iscsi_names(named, "iqn.x").initiator == "iqn.1991-05.com.microsoft:seat"


def test_timeline_is_bounded_and_lists_discovered_macs() -> None:
    timeline = BootTimeline(per_client=3, clients=2)
    seen: list[BootEvent] = []
    timeline.subscribe(seen.append)
    for index in range(5):
        timeline.record(BootEvent(MAC, BootStage.DHCP_OFFER, at=float(index)))
    assert [event.at for event in timeline.events(MAC)] == [2.0, 3.0, 4.0]
    other, third = parse_mac("525400000001"), parse_mac("525400000002")
    timeline.record(BootEvent(other, BootStage.DISCOVERED, at=9.0, known=False))
    assert timeline.discovered() == [other]
    timeline.record(BootEvent(third, BootStage.DHCP_OFFER, at=10.0))
    assert timeline.events(MAC) == []  # the oldest MAC was evicted
    assert len(seen) == 7
