"""The inventory's tables (SQLAlchemy 2 typed ORM), one model for SQLite and PostgreSQL.

The schema itself is created and changed only by the Alembic migrations in ``migrations/``;
``tests/inventory`` checks that the migrations produce exactly these tables.

Values are stored in portable types: MACs as their ``52:54:00:18:00:10`` text, addresses as
dotted quads, boot targets as JSON (validated by the pydantic :data:`BootTarget` models on the way
in and out), times as timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "AuditRow",
    "Base",
    "BootEventRow",
    "DiscoveredRow",
    "GroupRow",
    "JsonValue",
    "MachineRow",
    "SettingRow",
    "StateRow",
    "TokenRow",
    "UtcDateTime",
]

# Deterministic constraint names, so migrations can refer to them and errors can be mapped
# back to the field they protect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JsonValue = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the inventory: use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StateRow(Base):
    """One row: the change serial, bumped by every change that alters the machine snapshot, and
    the site key that per-machine secrets are derived from (the same on every server)."""

    __tablename__ = "inventory_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger, nullable=False)
    site_key: Mapped[str] = mapped_column(String(64), nullable=False)


class GroupRow(Base):
    """A group (profile): defaults its machines inherit unless they set their own."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    image: Mapped[str | None] = mapped_column(String(63))
    image_version: Mapped[int | None] = mapped_column(Integer)
    disk_mode: Mapped[str | None] = mapped_column(String(16))
    boot: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    chap_policy: Mapped[str | None] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    updated: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)

    machines: Mapped[list[MachineRow]] = relationship(back_populates="group")


class MachineRow(Base):
    """A known client. ``None`` in an inheritable field means "as the group says"."""

    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True, nullable=False)
    hostname: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    ip: Mapped[str | None] = mapped_column(String(15), unique=True)
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="RESTRICT"), index=True
    )
    image: Mapped[str | None] = mapped_column(String(63))
    image_version: Mapped[int | None] = mapped_column(Integer)
    disk_mode: Mapped[str | None] = mapped_column(String(16))
    boot: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    next_boot_once: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    initiator_name: Mapped[str | None] = mapped_column(String(223), unique=True)
    chap_secret: Mapped[str | None] = mapped_column(String(255))
    notes: Mapped[str] = mapped_column(Text, nullable=False, default="")
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    updated: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)

    group: Mapped[GroupRow | None] = relationship(back_populates="machines")


class DiscoveredRow(Base):
    """An unknown MAC that asked to boot, waiting for an operator to approve it."""

    __tablename__ = "discovered"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True, nullable=False)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False, index=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_arch: Mapped[int | None] = mapped_column(Integer)
    last_vendor_class: Mapped[str | None] = mapped_column(String(255))
    last_ip: Mapped[str | None] = mapped_column(String(15))


class BootEventRow(Base):
    """One step of a machine's boot (DHCP, TFTP, HTTP, iSCSI), kept with bounded retention."""

    __tablename__ = "boot_events"
    __table_args__ = (Index("ix_boot_events_mac_id", "mac", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    mac: Mapped[str] = mapped_column(String(17), nullable=False)
    stage: Mapped[str] = mapped_column(String(32), nullable=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False, index=True)
    detail: Mapped[str] = mapped_column(String(255), nullable=False, default="")


class AuditRow(Base):
    """One admin change: who, when, what, and the target's state before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False, index=True)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    after: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)


class TokenRow(Base):
    """An API token: only the SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    read_only: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    last_used: Mapped[datetime | None] = mapped_column(UtcDateTime)


class SettingRow(Base):
    """A site-wide setting changed at run time (the TOML file holds the start-up ones)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[Any] = mapped_column(JsonValue, nullable=True)
    updated: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
