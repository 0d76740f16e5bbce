"""Machines and boot targets: the records the boot decision reads, and their TOML file.

A :class:`Machine` says who a client is (MAC, name, reserved address, iSCSI identities) and what it
boots (a :data:`BootTarget`). Until the inventory database lands, machines come from a TOML file
(``boot.machines_file``)::

    [[machine]]
    mac = "52:54:00:18:00:10"
    hostname = "seat-01"
    ip = "198.18.0.170"
    boot = { kind = "sanboot" }          # its own copy-on-write disk, named after the hostname

    [[machine]]
    mac = "52:54:00:18:00:11"
    hostname = "installer"
    [machine.boot]
    kind = "linux"
    kernel = "debian/linux"
    initrd = ["debian/initrd.gz"]
    cmdline = "auto=true priority=critical url=http://198.18.0.1:8080/preseed.cfg"

:class:`MachineBook` is the in-memory snapshot every service reads; a lookup is a dict access,
never file or database I/O.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from diskless.errors import ConfigError

__all__ = [
    "BootTarget",
    "ChainTarget",
    "LinuxTarget",
    "LocalDiskTarget",
    "Machine",
    "MachineBook",
    "MenuItem",
    "MenuTarget",
    "NetbootXyzTarget",
    "SanbootTarget",
    "WimbootTarget",
    "format_mac",
    "load_machine_book",
    "parse_mac",
]

_MAC_HEX = re.compile(r"^[0-9a-f]{12}$")


def parse_mac(text: str) -> bytes:
    """``52:54:00:18:00:10``, ``52-54-00-18-00-10`` or ``525400180010`` → 6 bytes."""
    digits = re.sub(r"[:\-.]", "", text.strip().lower())
    if not _MAC_HEX.match(digits):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes.fromhex(digits)


def format_mac(mac: bytes) -> str:
    """6 bytes → ``52:54:00:18:00:10`` (the one spelling used in logs, URLs and files)."""
    return ":".join(f"{byte:02x}" for byte in mac)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SanbootTarget(_Record):
    """Boot the machine's own iSCSI disk with iPXE ``sanboot``."""

    kind: Literal["sanboot"] = "sanboot"
    disk: str | None = Field(
        default=None, description="Name of the disk to boot (default: the machine's hostname)"
    )
    keep_san: bool = Field(
        default=False,
        description=(
            "Keep the disk attached when booting it fails (an empty disk): the next boot "
            "item, e.g. an installer, then installs into it"
        ),
    )


class LocalDiskTarget(_Record):
    """Boot the first local disk (iPXE hands control back to the firmware's next device)."""

    kind: Literal["local"] = "local"


class LinuxTarget(_Record):
    """Boot a Linux kernel and initrds over HTTP (paths relative to the HTTP root, or URLs)."""

    kind: Literal["linux"] = "linux"
    kernel: str
    initrd: list[str] = []
    cmdline: str = ""


class WimbootTarget(_Record):
    """Boot WinPE with wimboot from an HTTP-root folder (bootmgr, BCD, boot.sdi, boot.wim)."""

    kind: Literal["winpe"] = "winpe"
    folder: str
    wimboot: str = Field(default="wimboot", description="Path of the wimboot program")


class ChainTarget(_Record):
    """Chain to another iPXE script or boot program by URL."""

    kind: Literal["chain"] = "chain"
    url: str


class NetbootXyzTarget(_Record):
    """Chain to the netboot.xyz menu (needs internet access from the client)."""

    kind: Literal["netbootxyz"] = "netbootxyz"
    url: str = "https://boot.netboot.xyz"


class MenuItem(_Record):
    """One entry of a boot menu."""

    label: str
    target: Annotated[
        SanbootTarget
        | LocalDiskTarget
        | LinuxTarget
        | WimbootTarget
        | ChainTarget
        | NetbootXyzTarget,
        Field(discriminator="kind"),
    ]


class MenuTarget(_Record):
    """A menu of boot items with a timeout and a default."""

    kind: Literal["menu"] = "menu"
    title: str = "diskless"
    items: list[MenuItem] = []
    default: int = Field(default=0, ge=0, description="Index of the item chosen on timeout")
    timeout: int | None = Field(
        default=None, ge=0, description="Seconds before the default (default: boot.menu_timeout)"
    )


BootTarget = Annotated[
    SanbootTarget
    | LocalDiskTarget
    | LinuxTarget
    | WimbootTarget
    | ChainTarget
    | NetbootXyzTarget
    | MenuTarget,
    Field(discriminator="kind"),
]


class Machine(_Record):
    """A known client."""

    mac: bytes
    hostname: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    ip: IPv4Address | None = None
    group: str | None = None
    boot: BootTarget = SanbootTarget()
    next_boot_once: BootTarget | None = Field(
        default=None, description="Booted once instead of `boot`, then forgotten"
    )
    initiator_name: str | None = Field(
        default=None, description="iSCSI initiator name (default: derived from the hostname)"
    )
    chap_secret: str | None = Field(
        default=None, description="CHAP secret the machine's initiator must present, if any"
    )

    @field_validator("mac", mode="before")
    @classmethod
    def _parse_mac(cls, value: object) -> bytes:
        if isinstance(value, bytes) and len(value) == 6:
            return value
        if isinstance(value, str):
            return parse_mac(value)
        raise ValueError("must be a MAC address such as 52:54:00:18:00:10")

    @property
    def mac_text(self) -> str:
        return format_mac(self.mac)


class _MachinesFile(_Record):
    machine: list[Machine] = []


class MachineBook:
    """An immutable snapshot of the known machines, indexed by MAC and by reserved address."""

    def __init__(self, machines: Iterable[Machine] = ()) -> None:
        self._by_mac: dict[bytes, Machine] = {}
        self._by_ip: dict[IPv4Address, Machine] = {}
        self._by_hostname: dict[str, Machine] = {}
        for machine in machines:
            if machine.mac in self._by_mac:
                raise ConfigError(f"two machines share the MAC {machine.mac_text}")
            if machine.hostname.lower() in self._by_hostname:
                raise ConfigError(f"two machines share the hostname {machine.hostname}")
            self._by_mac[machine.mac] = machine
            self._by_hostname[machine.hostname.lower()] = machine
            if machine.ip is not None:
                if machine.ip in self._by_ip:
                    raise ConfigError(f"two machines reserve the address {machine.ip}")
                self._by_ip[machine.ip] = machine

    def by_mac(self, mac: bytes) -> Machine | None:
        return self._by_mac.get(mac)

    def by_ip(self, ip: IPv4Address) -> Machine | None:
        return self._by_ip.get(ip)

    def by_hostname(self, hostname: str) -> Machine | None:
        return self._by_hostname.get(hostname.lower())

    def reserved_addresses(self) -> frozenset[IPv4Address]:
        return frozenset(self._by_ip)

    def __iter__(self) -> Iterator[Machine]:
        return iter(self._by_mac.values())

    def __len__(self) -> int:
        return len(self._by_mac)


def load_machine_book(path: Path | None) -> MachineBook:
    """Read a machines TOML file (``None``: no known machines); errors name the file and entry."""
    if path is None:
        return MachineBook()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: machines file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read machines file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        parsed = _MachinesFile.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
    try:
        return MachineBook(parsed.machine)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
