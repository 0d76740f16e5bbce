"""Request and response bodies of the REST API that the inventory records do not already cover.

Machines, groups, discovered MACs, tokens and audit entries travel as the inventory's own
pydantic records (:mod:`diskless.inventory.records`); this module adds the small bodies of the
single-purpose routes (set an image, a boot target, a disk action) and the storage side's
images, versions and disks, which are dataclasses in :mod:`diskless.storage`.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from diskless.boot.machines import BootTarget
from diskless.inventory.records import GroupName, Hostname, ImageName, MachineSpec
from diskless.storage.catalog import ImageRecord, ImageVersion
from diskless.storage.disks import DiskInfo, DiskMode
from diskless.wol import check_interface_name, parse_secureon

__all__ = [
    "ApproveBody",
    "BootBody",
    "CommitBody",
    "CommitOut",
    "DiskCreateBody",
    "DiskOut",
    "HealthOut",
    "ImageBody",
    "ImportBody",
    "ImportOut",
    "ImageOut",
    "ModeBody",
    "RollbackBody",
    "SettingBody",
    "TokenBody",
    "VersionOut",
    "WakeBody",
    "WakeOut",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageBody(_Body):
    """Assign a golden image (``null``: the group's), a version (``null``: latest), a mode."""

    image: ImageName | None
    version: int | None = Field(default=None, ge=1)
    mode: DiskMode | None = Field(default=None, description="Unchanged when left out or null")


class ModeBody(_Body):
    mode: DiskMode | None = Field(description="persistent, reset-on-boot, or null: the group's")


class BootBody(_Body):
    target: BootTarget | None = Field(
        description="The boot target; null: the group's (for next-boot-once: cancel it)"
    )


class ApproveBody(_Body):
    """What the machine made from a discovered MAC gets (all optional)."""

    hostname: Hostname | None = Field(
        default=None, description="Default: pc- and the MAC's last 6 hex digits"
    )
    group: GroupName | None = None
    ip: IPv4Address | None = None
    image: ImageName | None = None
    image_version: int | None = Field(default=None, ge=1)
    disk_mode: DiskMode | None = None
    boot: BootTarget | None = None
    notes: str = Field(default="", max_length=10_000)


class SettingBody(_Body):
    value: Any = Field(description="Any JSON value; null deletes the setting")


class TokenBody(_Body):
    name: str = Field(min_length=1, max_length=63)
    read_only: bool = False


class DiskCreateBody(_Body):
    """A disk for the machine; anything left out comes from its (inherited) assignment."""

    image: ImageName | None = None
    version: int | None = Field(default=None, ge=1)
    mode: DiskMode | None = None


class CommitBody(_Body):
    image: ImageName | None = Field(
        default=None, description="Image that gets the new version (default: the disk's own)"
    )
    note: str = Field(default="", max_length=1000)
    keep_overlay: bool = Field(
        default=False, description="Keep the disk on its old version and its writes"
    )


class RollbackBody(_Body):
    version: int = Field(ge=1)
    image: ImageName | None = Field(default=None, description="Default: the disk's own image")


class VersionOut(BaseModel):
    image: str
    version: int
    digest: str
    size: int
    created: str
    source: str
    parent_image: str | None
    parent_version: int | None
    note: str

    @classmethod
    def of(cls, version: ImageVersion) -> VersionOut:
        return cls(image=version.image, **version.to_json())


class ImageOut(BaseModel):
    name: str
    versions: list[VersionOut]
    latest: int | None

    @classmethod
    def of(cls, record: ImageRecord) -> ImageOut:
        versions = [VersionOut.of(version) for version in record.versions]
        return cls(
            name=record.name,
            versions=versions,
            latest=versions[-1].version if versions else None,
        )


class DiskOut(BaseModel):
    name: str
    image: str
    version: int
    digest: str
    mode: DiskMode
    overlay: str
    created: str
    updated: str
    virtual_size: int
    allocated_bytes: int
    overlay_path: str
    backing_path: str

    @classmethod
    def of(cls, info: DiskInfo) -> DiskOut:
        return cls.model_validate(info.to_json())


class CommitOut(BaseModel):
    version: VersionOut
    disk: DiskOut


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
    inventory_serial: int
    machines: int


class ImportBody(_Body):
    """Machines to add in one transaction: CSV text (``csv``) or specs (``machines``)."""

    csv: str | None = Field(
        default=None,
        max_length=16 << 20,
        description="CSV, first row the column names (mac,hostname,ip,group,image,...)",
    )
    machines: list[MachineSpec] | None = Field(default=None, max_length=100_000)
    on_conflict: Literal["error", "skip", "update"] = Field(
        default="error", description="What a MAC that is already a machine gets"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImportBody:
        if (self.csv is None) == (self.machines is None):
            raise ValueError("give either csv (CSV text) or machines (a list), not both")
        return self


class ImportOut(BaseModel):
    """What the import did, by MAC; groups it had to create."""

    created: list[str]
    updated: list[str]
    skipped: list[str]
    groups_created: list[str]


class WakeBody(_Body):
    interface: str | None = Field(
        default=None, description="Interface to send from (default: the configured one)"
    )
    password: str | None = Field(
        default=None, description="SecureOn password: 6 bytes as a MAC, or 4 as an IPv4 address"
    )

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str | None) -> str | None:
        return None if value is None else check_interface_name(value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        if value is not None:
            parse_secureon(value)
        return value


class WakeOut(BaseModel):
    """The magic packet sent: for which machine, out of which interface, to where."""

    mac: str
    hostname: str
    interface: str
    interface_from: str = Field(description="request, wake.group_interfaces[GROUP], or server")
    address: str
    port: int
    bytes: int
