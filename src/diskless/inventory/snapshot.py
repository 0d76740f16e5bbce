"""From stored records to the immutable snapshot every service reads (pure, no database).

:func:`resolve` merges a machine with its group: a field the machine sets wins, a field it leaves
unset comes from the group, and what neither sets takes the built-in default (boot its own iSCSI
disk, persistent mode, no CHAP). :func:`build_snapshot` does it for every machine and indexes the
result in a :class:`MachineBook`; a record that cannot be resolved (a boot target written by a
newer diskless, say) is left out and reported in ``problems`` rather than stopping every boot.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from diskless.boot.machines import (
    BootTarget,
    Machine,
    MachineBook,
    MenuTarget,
    SanbootTarget,
    parse_mac,
)
from diskless.errors import ConfigError
from diskless.storage.disks import DiskMode

from .records import GroupRecord, MachineRecord

__all__ = [
    "DiskAssignment",
    "InventorySnapshot",
    "build_snapshot",
    "derived_chap_secret",
    "resolve",
]


@dataclass(frozen=True, slots=True)
class DiskAssignment:
    """The disk a machine boots from and what it is made of, after inheritance."""

    disk: str
    """Disk name in the storage engine (the sanboot target's ``disk``, else the hostname)."""
    image: str
    version: int | None
    """``None``: the image's latest version."""
    mode: DiskMode


@dataclass(frozen=True, slots=True)
class Resolved:
    machine: Machine
    disk: DiskAssignment | None


def _empty_mapping() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class InventorySnapshot:
    """One consistent view of the inventory, as of change ``serial``.

    ``book`` is what DHCP, TFTP, HTTP and iSCSI read; ``disks`` says, per MAC, which disk each
    machine with an image boots and from which image, version and mode (for the storage side:
    create the disk, switch its version or mode); ``settings`` are the run-time settings.
    """

    serial: int
    book: MachineBook
    disks: Mapping[bytes, DiskAssignment] = field(default_factory=_empty_mapping)
    settings: Mapping[str, Any] = field(default_factory=_empty_mapping)
    problems: tuple[str, ...] = ()

    @classmethod
    def empty(cls) -> InventorySnapshot:
        return cls(serial=0, book=MachineBook())


def derived_chap_secret(site_key: str, mac: str) -> str:
    """A 16-character CHAP secret for ``mac``, the same on every server sharing the inventory.

    HMAC-SHA-256 of the MAC under the site key stored in the database; 16 characters is the most
    Windows' initiator accepts, and 80 bits of secret.
    """
    digest = hmac.new(site_key.encode("ascii"), mac.encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode("ascii").lower()


def _disk_name(machine: Machine, boot: BootTarget) -> str:
    sanboot: SanbootTarget | None = None
    if isinstance(boot, SanbootTarget):
        sanboot = boot
    elif isinstance(boot, MenuTarget):
        sanboot = next(
            (item.target for item in boot.items if isinstance(item.target, SanbootTarget)), None
        )
    return ((sanboot.disk if sanboot else None) or machine.hostname).lower()


def resolve(record: MachineRecord, group: GroupRecord | None, site_key: str) -> Resolved:
    """The machine as the boot services see it, and its disk assignment (if it has an image)."""
    boot: BootTarget = record.boot or (group.boot if group else None) or SanbootTarget()
    chap_secret = record.chap_secret
    if chap_secret is None and group is not None and group.chap_policy == "required":
        chap_secret = derived_chap_secret(site_key, record.mac)
    machine = Machine(
        mac=parse_mac(record.mac),
        hostname=record.hostname,
        ip=record.ip,
        group=record.group,
        boot=boot,
        next_boot_once=record.next_boot_once,
        initiator_name=record.initiator_name,
        chap_secret=chap_secret,
    )
    image = record.image or (group.image if group else None)
    if image is None:
        return Resolved(machine, None)
    version = record.image_version
    if version is None and group is not None and group.image == image:
        version = group.image_version
    mode = record.disk_mode or (group.disk_mode if group else None) or DiskMode.PERSISTENT
    return Resolved(machine, DiskAssignment(_disk_name(machine, boot), image, version, mode))


def build_snapshot(
    serial: int,
    machines: Iterable[MachineRecord],
    groups: Iterable[GroupRecord],
    *,
    site_key: str,
    settings: Mapping[str, Any] | None = None,
    problems: Iterable[str] = (),
) -> InventorySnapshot:
    """Resolve every machine and index them; records that fail are reported, not fatal."""
    by_name = {group.name: group for group in groups}
    resolved: list[Machine] = []
    disks: dict[bytes, DiskAssignment] = {}
    found = list(problems)
    for record in machines:
        group = by_name.get(record.group) if record.group else None
        try:
            result = resolve(record, group, site_key)
        except ValueError as exc:
            found.append(f"machine {record.mac}: {exc}")
            continue
        resolved.append(result.machine)
        if result.disk is not None:
            disks[result.machine.mac] = result.disk
    try:
        book = MachineBook(resolved)
    except ConfigError as exc:  # pragma: no cover - the database's unique constraints prevent it
        raise ConfigError(f"inventory: {exc}") from exc
    return InventorySnapshot(
        serial=serial,
        book=book,
        disks=MappingProxyType(disks),
        settings=MappingProxyType(dict(settings or {})),
        problems=tuple(found),
    )
