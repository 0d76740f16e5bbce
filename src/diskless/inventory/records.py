"""What goes in and out of the inventory: validated pydantic records, independent of the tables.

Input models (``*Spec`` to create, ``*Patch`` to change) validate every field, so the REST API
can use them as request bodies and get a 422 naming the field for free. A patch changes only
the fields it was given (``model_fields_set``): a field given as ``null`` is cleared, and an
inheritable field cleared on a machine falls back to its group's value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from diskless.boot.machines import BootTarget, format_mac, parse_mac
from diskless.storage.catalog import NAME_PATTERN
from diskless.storage.disks import DiskMode

from .errors import InvalidFieldError

__all__ = [
    "AuditEntry",
    "ChapPolicy",
    "DiscoveredMac",
    "GroupPatch",
    "GroupRecord",
    "GroupSpec",
    "ImportResult",
    "MachinePatch",
    "MachineRecord",
    "MachineSpec",
    "MacText",
    "NewToken",
    "Sighting",
    "TokenInfo",
    "field_error",
]

HOSTNAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
GROUP_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$"
# iSCSI names (RFC 3720 §3.2.6): iqn./eui./naa. forms, at most 223 bytes, lower case.
_ISCSI_NAME = re.compile(
    r"^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[^\s]+)?|eui\.[0-9a-f]{16}|naa\.[0-9a-f]+)$"
)

ChapPolicy = Literal["none", "required"]
"""A group's CHAP rule: ``required`` gives each member without its own secret a derived one."""


def _mac_text(value: object) -> str:
    if isinstance(value, bytes):
        if len(value) != 6:
            raise ValueError("must be a MAC address such as 52:54:00:18:00:10")
        return format_mac(value)
    if isinstance(value, str):
        return format_mac(parse_mac(value))
    raise ValueError("must be a MAC address such as 52:54:00:18:00:10")


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _image_name(value: object) -> object:
    if isinstance(value, str) and (not NAME_PATTERN.fullmatch(value) or value in {".", ".."}):
        raise ValueError(
            "use 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    return value


def _iscsi_name(value: object) -> object:
    if isinstance(value, str):
        value = value.strip().lower()
        if len(value.encode()) > 223 or not _ISCSI_NAME.match(value):
            raise ValueError("must be an iSCSI name (iqn.YYYY-MM.domain[:id], eui. or naa.)")
    return value


MacText = Annotated[str, BeforeValidator(_mac_text)]
"""A MAC address in any common spelling, stored as ``52:54:00:18:00:10``."""
Hostname = Annotated[str, BeforeValidator(_lower), Field(pattern=HOSTNAME_PATTERN)]
GroupName = Annotated[str, BeforeValidator(_lower), Field(pattern=GROUP_NAME_PATTERN)]
ImageName = Annotated[str, BeforeValidator(_image_name)]
InitiatorName = Annotated[str, BeforeValidator(_iscsi_name)]
ChapSecret = Annotated[
    str,
    Field(
        min_length=12,
        max_length=255,
        description="12-255 characters (Windows' initiator accepts 12-16)",
    ),
]
Version = Annotated[int, Field(ge=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MachineSpec(_Model):
    """A new machine. Inheritable fields left ``None`` come from its group."""

    mac: MacText
    hostname: Hostname
    ip: IPv4Address | None = None
    group: GroupName | None = None
    image: ImageName | None = Field(default=None, description="Golden image its disk is made from")
    image_version: Version | None = Field(default=None, description="Pinned version; None: latest")
    disk_mode: DiskMode | None = None
    boot: BootTarget | None = Field(default=None, description="Boot target; None: the group's")
    next_boot_once: BootTarget | None = Field(
        default=None, description="Booted once instead of `boot`, then forgotten"
    )
    initiator_name: InitiatorName | None = None
    chap_secret: ChapSecret | None = None
    notes: str = Field(default="", max_length=10_000)


class MachinePatch(_Model):
    """Changes to a machine: only the fields given are changed; ``null`` clears a field."""

    mac: MacText | None = None
    hostname: Hostname | None = None
    ip: IPv4Address | None = None
    group: GroupName | None = None
    image: ImageName | None = None
    image_version: Version | None = None
    disk_mode: DiskMode | None = None
    boot: BootTarget | None = None
    next_boot_once: BootTarget | None = None
    initiator_name: InitiatorName | None = None
    chap_secret: ChapSecret | None = None
    notes: str | None = Field(default=None, max_length=10_000)

    def changes(self) -> dict[str, Any]:
        """The fields given, by name (values as typed objects)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class MachineRecord(_Model):
    """A machine as stored (inheritable fields unresolved)."""

    mac: MacText
    hostname: str
    ip: IPv4Address | None
    group: str | None
    image: str | None
    image_version: int | None
    disk_mode: DiskMode | None
    boot: BootTarget | None
    next_boot_once: BootTarget | None
    initiator_name: str | None
    chap_secret: str | None
    notes: str
    last_seen: datetime | None
    created: datetime
    updated: datetime

    @property
    def mac_bytes(self) -> bytes:
        return parse_mac(self.mac)

    def audit_view(self) -> dict[str, Any]:
        """JSON for the audit log, with the CHAP secret masked."""
        view = self.model_dump(mode="json", exclude={"last_seen"})
        if view.get("chap_secret"):
            view["chap_secret"] = "********"
        return view


class GroupSpec(_Model):
    """A new group (profile) whose settings its machines inherit."""

    name: GroupName
    description: str = Field(default="", max_length=10_000)
    image: ImageName | None = None
    image_version: Version | None = None
    disk_mode: DiskMode | None = None
    boot: BootTarget | None = None
    chap_policy: ChapPolicy | None = None


class GroupPatch(_Model):
    """Changes to a group: only the fields given are changed; ``null`` clears a field."""

    name: GroupName | None = None
    description: str | None = Field(default=None, max_length=10_000)
    image: ImageName | None = None
    image_version: Version | None = None
    disk_mode: DiskMode | None = None
    boot: BootTarget | None = None
    chap_policy: ChapPolicy | None = None

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class GroupRecord(_Model):
    name: str
    description: str
    image: str | None
    image_version: int | None
    disk_mode: DiskMode | None
    boot: BootTarget | None
    chap_policy: ChapPolicy | None
    members: int
    created: datetime
    updated: datetime


class DiscoveredMac(_Model):
    """An unknown MAC that asked to boot."""

    mac: str
    first_seen: datetime
    last_seen: datetime
    count: int
    last_arch: int | None
    last_vendor_class: str | None
    last_ip: IPv4Address | None


class AuditEntry(_Model):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class TokenInfo(_Model):
    name: str
    read_only: bool
    created: datetime
    last_used: datetime | None


class NewToken(_Model):
    """A token just created: ``token`` is the only copy of the secret, shown once."""

    info: TokenInfo
    token: str


@dataclass(frozen=True, slots=True)
class Sighting:
    """An unknown MAC seen by a boot service (what the discovered list keeps of it)."""

    mac: bytes
    at: float
    """Last time seen (``time.time()``)."""
    arch: int | None = None
    vendor_class: str | None = None
    ip: IPv4Address | None = None
    count: int = 1
    """How many requests this sighting stands for (the recorder folds repeats)."""
    first_at: float | None = None
    """First time seen, when it stands for several requests."""


@dataclass(slots=True)
class ImportResult:
    """What an import did, by MAC (created, updated, or left alone) and the groups it created."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    groups_created: list[str] = field(default_factory=list)


def field_error(exc: ValidationError, prefix: str = "") -> InvalidFieldError:
    """The first problem of a pydantic error as an :class:`InvalidFieldError` naming the field."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(value)"
    message = first["msg"]
    if len(errors) > 1:
        others = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in errors[1:]
        )
        message = f"{message} (also {others})"
    return InvalidFieldError(f"{prefix}{where}", message)
