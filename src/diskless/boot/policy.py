"""The boot decision: one pure function from (machine record, request facts) to a boot plan.

DHCP asks it which boot program or URL to hand out, TFTP and HTTP ask it what a client may fetch
and what its iPXE script boots; because they all ask :func:`decide`, they never disagree. It does
no I/O and reads no clock, so it is tested exhaustively with plain values.

A boot goes through two stages, and the plan covers both:

1. the firmware's PXE or HTTP-boot client gets an iPXE program built for its architecture (over
   TFTP, or as an http:// URL for UEFI HTTP boot);
2. iPXE asks DHCP again, identifies itself (user class ``iPXE`` or option 175) and is handed the
   URL of its per-machine script instead, which breaks the chainload loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from diskless.boot.arch import Firmware, Platform, classify_arch
from diskless.boot.machines import (
    BootTarget,
    LocalDiskTarget,
    Machine,
    MenuItem,
    MenuTarget,
    NetbootXyzTarget,
    format_mac,
)

__all__ = [
    "BootSite",
    "BootPlan",
    "Loader",
    "RequestFacts",
    "IscsiNames",
    "decide",
    "default_unknown_menu",
    "iscsi_names",
    "iscsi_shard",
    "script_path",
]

SCRIPT_PREFIX = "/boot/"


def script_path(mac: bytes) -> str:
    """The HTTP path of a machine's iPXE script, e.g. ``/boot/52:54:00:18:00:10.ipxe``."""
    return f"{SCRIPT_PREFIX}{format_mac(mac)}.ipxe"


def default_unknown_menu() -> MenuTarget:
    """What an unknown machine boots when ``boot.unknown_clients = "menu"``."""
    return MenuTarget(
        title="diskless: this machine is not enrolled yet",
        items=[
            MenuItem(label="Boot from the local disk", target=LocalDiskTarget()),
            MenuItem(label="netboot.xyz (needs internet access)", target=NetbootXyzTarget()),
        ],
        default=0,
    )


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a request says about the client, whichever protocol carried it."""

    mac: bytes
    arch: int | None = None
    """DHCP option 93 (first value), ``None`` when absent."""
    ipxe: bool = False
    """The client runs iPXE already (user class ``iPXE`` or iPXE's option 175)."""
    vendor_class: str = ""
    """DHCP option 60, e.g. ``PXEClient:Arch:00007:UNDI:003016`` or ``HTTPClient:...``."""

    @property
    def http_client(self) -> bool:
        return self.vendor_class.startswith("HTTPClient")


@dataclass(frozen=True, slots=True)
class BootSite:
    """Site-wide facts the decision needs: where our services are and which programs exist."""

    server: IPv4Address
    http_port: int = 8080
    loaders: dict[Firmware, str] = field(
        default_factory=lambda: {Firmware.BIOS: "undionly.kpxe", Firmware.UEFI_X64: "ipxe.efi"}
    )
    """iPXE program (a TFTP/HTTP file name) per firmware; a firmware not listed boots nothing."""
    unknown_target: BootTarget | None = field(default_factory=default_unknown_menu)
    """What unknown machines boot; ``None`` ignores them."""
    iqn_prefix: str = "iqn.2026-11.org.diskless"
    iscsi_port: int = 3260
    iscsi_workers: int = 1
    menu_timeout: int = 10

    def portal_port(self, target_name: str) -> int:
        """The port of the iSCSI worker that serves ``target_name`` (see :func:`iscsi_shard`)."""
        return self.iscsi_port + iscsi_shard(target_name, self.iscsi_workers)

    @property
    def http_base(self) -> str:
        port = "" if self.http_port == 80 else f":{self.http_port}"
        return f"http://{self.server}{port}"


@dataclass(frozen=True, slots=True)
class Loader:
    """What DHCP hands out: a TFTP file name, or an http:// URL (iPXE and UEFI HTTP boot)."""

    file: str
    over_http: bool


@dataclass(frozen=True, slots=True)
class BootPlan:
    """The decision for one request."""

    machine: Machine | None
    """``None``: an unknown client given the site's default (and recorded as discovered)."""
    platform: Platform
    loader: Loader | None
    """What DHCP hands out; ``None`` when there is no program for this firmware."""
    target: BootTarget
    """What the iPXE script boots."""
    once: bool
    """``target`` is the next-boot-once override, forgotten once its script is served."""

    @property
    def known(self) -> bool:
        return self.machine is not None


def iscsi_shard(target_name: str, workers: int) -> int:
    """Which of ``workers`` iSCSI worker processes serves ``target_name`` (stable, 0-based).

    Worker ``k`` listens on ``iscsi.port + k``. The script hands iPXE that port and iPXE hands it
    to the booted OS in the iBFT, so both stages of one machine meet in one process, where its
    disk is open once; no connection is ever passed between processes.
    """
    if workers <= 1:
        return 0
    digest = hashlib.sha256(target_name.casefold().encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % workers


@dataclass(frozen=True, slots=True)
class IscsiNames:
    """The iSCSI identities of a machine's disk, derived from its record (never stored twice)."""

    target: str
    initiator: str


def iscsi_names(machine: Machine, iqn_prefix: str, disk: str | None = None) -> IscsiNames:
    """Target ``<prefix>:disk.<disk>`` and initiator ``<prefix>:client.<hostname>``.

    Both firmware iPXE and the booted OS (which reads iPXE's iBFT) log in with the initiator name
    the script sets, so a machine is recognised by the same name in both stages.
    """
    disk_name = (disk or machine.hostname).lower()
    initiator = machine.initiator_name or f"{iqn_prefix}:client.{machine.hostname.lower()}"
    return IscsiNames(target=f"{iqn_prefix}:disk.{disk_name}", initiator=initiator)


def decide(machine: Machine | None, facts: RequestFacts, site: BootSite) -> BootPlan | None:
    """The plan for a client, or ``None`` when it gets no answer at all (unknown and ignored)."""
    if machine is None:
        if site.unknown_target is None:
            return None
        target: BootTarget = site.unknown_target
        once = False
    elif machine.next_boot_once is not None:
        target, once = machine.next_boot_once, True
    else:
        target, once = machine.boot, False
    platform = classify_arch(facts.arch)
    return BootPlan(
        machine=machine,
        platform=platform,
        loader=_loader(facts, platform, site),
        target=target,
        once=once,
    )


def _loader(facts: RequestFacts, platform: Platform, site: BootSite) -> Loader | None:
    if facts.ipxe:
        # Already in iPXE: hand it its script, not iPXE again (the chainload loop).
        return Loader(site.http_base + script_path(facts.mac), over_http=True)
    program = site.loaders.get(platform.firmware)
    if program is None:
        return None
    if platform.http_boot or facts.http_client:
        return Loader(f"{site.http_base}/ipxe/{program}", over_http=True)
    return Loader(program, over_http=False)
