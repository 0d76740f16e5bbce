"""The inventory's operations: what the REST API, the CLI and the boot services call.

:class:`Inventory` wraps a :class:`Database` with synchronous methods, one transaction each.
Every change that alters what the boot services see (machines, groups, run-time settings) bumps
the change serial in the same transaction, notifies PostgreSQL listeners on the
``diskless_inventory`` channel (delivered at commit, so other servers reload) and, after the
commit, calls the in-process subscribers (:meth:`Inventory.subscribe`) with the new serial.
Admin changes also write an audit entry (who, what, before and after) in the same transaction.

The boot hot path never calls this module directly: unknown MACs and boot events are collected
in memory (:mod:`diskless.inventory.recorder`) and written here in batches.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from diskless.boot.events import BootEvent, BootStage
from diskless.boot.machines import BootTarget, MachineBook, format_mac, parse_mac
from diskless.config import InventorySettings, Settings
from diskless.observe.log import get_logger

from .database import NOTIFY_CHANNEL, Database, default_database_url
from .errors import InvalidFieldError, InventoryConflictError, InventoryNotFoundError
from .importer import specs_from_csv_file, specs_from_machines_file
from .model import (
    AuditRow,
    BootEventRow,
    DiscoveredRow,
    GroupRow,
    MachineRow,
    SettingRow,
    StateRow,
    TokenRow,
)
from .records import (
    TOKEN_NAME_PATTERN,
    AuditEntry,
    DiscoveredMac,
    GroupPatch,
    GroupRecord,
    GroupSpec,
    ImportResult,
    MachinePatch,
    MachineRecord,
    MachineSpec,
    NewToken,
    Sighting,
    TokenInfo,
    field_error,
)
from .snapshot import InventorySnapshot, build_snapshot

__all__ = ["ChangeListener", "Inventory", "Retention"]

_log = get_logger(__name__)

ChangeListener = Callable[[int], None]
"""Called with the new change serial after a local commit that changed the snapshot."""

_BOOT_TARGET: TypeAdapter[BootTarget] = TypeAdapter(BootTarget)
_TOKEN_PREFIX = "dl_"
_TOKEN_USE_GRANULARITY = timedelta(seconds=60)
# Columns protected by a unique constraint → the field an error names.
_UNIQUE_FIELDS = ("initiator_name", "hostname", "mac", "ip", "name", "token_hash")
_MACHINE_FIELDS = (
    "mac",
    "hostname",
    "ip",
    "image",
    "image_version",
    "disk_mode",
    "boot",
    "next_boot_once",
    "initiator_name",
    "chap_secret",
    "notes",
)
_GROUP_FIELDS = (
    "name",
    "description",
    "image",
    "image_version",
    "disk_mode",
    "boot",
    "chap_policy",
)
_BOOT_DETAIL_MAX = 255


@dataclass(frozen=True, slots=True)
class Retention:
    """Bounds on what the inventory keeps of the boot plane's activity."""

    boot_events_per_machine: int = 200
    boot_event_days: int = 30
    discovered_limit: int = 1000

    @classmethod
    def from_settings(cls, settings: InventorySettings) -> Retention:
        return cls(
            boot_events_per_machine=settings.boot_events_per_machine,
            boot_event_days=settings.boot_event_days,
            discovered_limit=settings.discovered_limit,
        )


@dataclass(slots=True)
class _Change:
    session: Session
    changed: bool = False
    audits: list[AuditRow] = field(default_factory=list)


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _json_target(target: BootTarget | None) -> dict[str, Any] | None:
    return None if target is None else target.model_dump(mode="json")


def _stored(name: str, value: Any) -> Any:
    """A typed record value → what its column stores."""
    if value is None:
        return None
    if name in {"boot", "next_boot_once"}:
        return value.model_dump(mode="json")
    if name == "ip":
        return str(value)
    if name == "disk_mode":
        return str(value.value)
    return value


def _machine_record(row: MachineRow) -> MachineRecord:
    return MachineRecord.model_validate(
        {
            "mac": row.mac,
            "hostname": row.hostname,
            "ip": row.ip,
            "group": row.group.name if row.group is not None else None,
            "image": row.image,
            "image_version": row.image_version,
            "disk_mode": row.disk_mode,
            "boot": row.boot,
            "next_boot_once": row.next_boot_once,
            "initiator_name": row.initiator_name,
            "chap_secret": row.chap_secret,
            "notes": row.notes,
            "last_seen": row.last_seen,
            "created": row.created,
            "updated": row.updated,
        }
    )


def _group_record(row: GroupRow, members: int) -> GroupRecord:
    return GroupRecord.model_validate(
        {
            "name": row.name,
            "description": row.description,
            "image": row.image,
            "image_version": row.image_version,
            "disk_mode": row.disk_mode,
            "boot": row.boot,
            "chap_policy": row.chap_policy,
            "members": members,
            "created": row.created,
            "updated": row.updated,
        }
    )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _conflict(exc: IntegrityError) -> InventoryConflictError:
    """Name the field whose unique constraint a concurrent writer beat us to."""
    message = str(exc.orig)
    for name in _UNIQUE_FIELDS:
        if f".{name}" in message or f"_{name}" in message:
            return InventoryConflictError(name, "already used by another record")
    if "foreign key" in message.lower():
        return InventoryConflictError("group", "the group is still in use or does not exist")
    return InventoryConflictError("(record)", f"conflicts with stored data: {message}")


class Inventory:
    """Machines, groups, discovered MACs, boot events, audit log, tokens and settings."""

    def __init__(
        self,
        database: Database,
        *,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.retention = retention or Retention()
        self._clock = clock
        self._listeners: list[ChangeListener] = []
        self._listeners_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Inventory:
        """Connect to ``url`` and (by default) migrate its schema to the newest revision."""
        database = Database(url)
        if migrate:
            database.upgrade()
        return cls(database, retention=retention, clock=clock)

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True) -> Inventory:
        """The inventory ``settings`` name (default: SQLite under ``data_dir/state``)."""
        url = settings.inventory.database_url or default_database_url(settings.data_dir)
        return cls.open(url, migrate=migrate, retention=Retention.from_settings(settings.inventory))

    def close(self) -> None:
        self.database.dispose()

    def _now(self) -> datetime:
        return _utc(self._clock())

    # -- change notification ------------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener(serial)`` after each local commit that changes the snapshot.

        It runs in the committing thread (often a worker thread): it must only hand the news
        over (e.g. ``loop.call_soon_threadsafe``). Returns a function that unsubscribes.
        """
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _announce(self, serial: int) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(serial)
            except Exception:
                _log.exception("inventory change listener failed")

    @contextmanager
    def _change(self) -> Iterator[_Change]:
        """A write transaction; if marked ``changed`` it bumps the serial and notifies."""
        serial: int | None = None
        try:
            with self.database.write() as session:
                change = _Change(session)
                yield change
                session.add_all(change.audits)
                if change.changed:
                    serial = self._bump(session)
        except IntegrityError as exc:
            raise _conflict(exc) from exc
        if serial is not None:
            self._announce(serial)

    def _bump(self, session: Session) -> int:
        serial = session.execute(
            update(StateRow)
            .where(StateRow.id == 1)
            .values(serial=StateRow.serial + 1)
            .returning(StateRow.serial)
        ).scalar_one()
        if self.database.is_postgresql:
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": NOTIFY_CHANNEL, "payload": str(serial)},
            )
        return serial

    def serial(self) -> int:
        """The current change serial (cheap: one row)."""
        with self.database.read() as session:
            return session.execute(select(StateRow.serial).where(StateRow.id == 1)).scalar_one()

    def _audit(
        self,
        change: _Change,
        actor: str,
        action: str,
        target: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        change.audits.append(
            AuditRow(
                at=self._now(),
                actor=actor,
                action=action,
                target=target,
                before=before,
                after=after,
            )
        )

    def record_action(
        self, actor: str, action: str, target: str, *, detail: dict[str, Any] | None = None
    ) -> None:
        """Audit an action that changes nothing stored (a Wake-on-LAN packet sent)."""
        with self._change() as change:
            self._audit(change, actor, action, target, after=detail)

    # -- snapshot ------------------------------------------------------------------------------

    def load_snapshot(self) -> InventorySnapshot:
        """Every machine resolved against its group, as of one serial (one read transaction)."""
        with self.database.read() as session:
            if self.database.is_postgresql:
                session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            state = session.execute(select(StateRow).where(StateRow.id == 1)).scalar_one()
            group_rows = session.scalars(select(GroupRow)).all()
            machine_rows = session.scalars(
                select(MachineRow).options(selectinload(MachineRow.group))
            ).all()
            settings = {row.key: row.value for row in session.scalars(select(SettingRow))}
            problems: list[str] = []
            groups: list[GroupRecord] = []
            for group_row in group_rows:
                try:
                    groups.append(_group_record(group_row, 0))
                except ValidationError as exc:
                    problems.append(f"group {group_row.name}: {exc.errors()[0]['msg']}")
            machines: list[MachineRecord] = []
            for machine_row in machine_rows:
                try:
                    machines.append(_machine_record(machine_row))
                except ValidationError as exc:
                    error = exc.errors()[0]
                    where = ".".join(str(part) for part in error["loc"])
                    problems.append(f"machine {machine_row.mac}: {where}: {error['msg']}")
            snapshot = build_snapshot(
                state.serial,
                machines,
                groups,
                site_key=state.site_key,
                settings=settings,
                problems=problems,
            )
        for problem in snapshot.problems:
            _log.warning("inventory record left out of the snapshot", problem=problem)
        return snapshot

    def load_book(self) -> MachineBook:
        """The machine book of :meth:`load_snapshot`."""
        return self.load_snapshot().book

    # -- machines ------------------------------------------------------------------------------

    def _machine_row(self, session: Session, key: str | bytes) -> MachineRow:
        row: MachineRow | None
        if isinstance(key, bytes):
            row = session.scalars(
                select(MachineRow).where(MachineRow.mac == format_mac(key))
            ).first()
        else:
            try:
                mac = format_mac(parse_mac(key))
            except ValueError:
                row = session.scalars(
                    select(MachineRow).where(MachineRow.hostname == key.strip().lower())
                ).first()
            else:
                row = session.scalars(select(MachineRow).where(MachineRow.mac == mac)).first()
        if row is None:
            raise InventoryNotFoundError(
                "machine", key if isinstance(key, str) else format_mac(key)
            )
        return row

    def _group_row(self, session: Session, name: str) -> GroupRow | None:
        return session.scalars(select(GroupRow).where(GroupRow.name == name)).first()

    def _check_unique(
        self, session: Session, values: dict[str, Any], *, exclude: int | None = None
    ) -> None:
        for name in ("mac", "hostname", "ip", "initiator_name"):
            value = values.get(name)
            if value is None:
                continue
            column = getattr(MachineRow, name)
            query = select(MachineRow.mac).where(column == value)
            if exclude is not None:
                query = query.where(MachineRow.id != exclude)
            other = session.scalars(query).first()
            if other is not None:
                raise InventoryConflictError(name, f"{value} is already used by machine {other}")

    def _apply_machine(
        self, session: Session, row: MachineRow, changes: dict[str, Any], *, create_groups: bool
    ) -> str | None:
        """Set ``changes`` on ``row``; returns the name of a group it had to create, if any."""
        created_group: str | None = None
        if "group" in changes:
            name = changes["group"]
            if name is None:
                row.group = None
            else:
                group = self._group_row(session, name)
                if group is None:
                    if not create_groups:
                        raise InvalidFieldError("group", f"no group named {name!r}")
                    now = self._now()
                    group = GroupRow(name=name, description="", created=now, updated=now)
                    session.add(group)
                    created_group = name
                row.group = group
        for name in _MACHINE_FIELDS:
            if name in changes:
                value = _stored(name, changes[name])
                if name == "notes" and value is None:
                    value = ""
                setattr(row, name, value)
        if row.image is None and row.image_version is not None and row.group is None:
            raise InvalidFieldError("image_version", "a version needs an image (or a group's)")
        return created_group

    def list_machines(self) -> list[MachineRecord]:
        with self.database.read() as session:
            rows = session.scalars(
                select(MachineRow)
                .options(selectinload(MachineRow.group))
                .order_by(MachineRow.hostname)
            ).all()
            return [_machine_record(row) for row in rows]

    def get_machine(self, key: str | bytes) -> MachineRecord:
        """A machine by MAC (any spelling, or 6 bytes) or by hostname."""
        with self.database.read() as session:
            return _machine_record(self._machine_row(session, key))

    def create_machine(self, spec: MachineSpec, *, actor: str) -> MachineRecord:
        with self._change() as change:
            return self._create_machine(change, spec, actor=actor, action="machine.create")

    def _create_machine(
        self,
        change: _Change,
        spec: MachineSpec,
        *,
        actor: str,
        action: str,
        create_groups: bool = False,
    ) -> MachineRecord:
        session = change.session
        values = spec.model_dump()
        self._check_unique(
            session,
            {
                "mac": spec.mac,
                "hostname": spec.hostname,
                "ip": str(spec.ip) if spec.ip else None,
                "initiator_name": spec.initiator_name,
            },
        )
        now = self._now()
        row = MachineRow(created=now, updated=now, notes="")
        changes = {name: getattr(spec, name) for name in values}
        self._apply_machine(session, row, changes, create_groups=create_groups)
        session.add(row)
        session.execute(delete(DiscoveredRow).where(DiscoveredRow.mac == spec.mac))
        session.flush()
        record = _machine_record(row)
        self._audit(change, actor, action, record.mac, before=None, after=record.audit_view())
        change.changed = True
        return record

    def update_machine(
        self, key: str | bytes, patch: MachinePatch, *, actor: str, action: str = "machine.update"
    ) -> MachineRecord:
        """Change the fields ``patch`` was given; returns the machine as now stored."""
        return self._update_machine(key, patch.changes(), actor=actor, action=action)

    def _update_machine(
        self, key: str | bytes, changes: dict[str, Any], *, actor: str, action: str
    ) -> MachineRecord:
        for required in ("mac", "hostname"):
            if required in changes and changes[required] is None:
                raise InvalidFieldError(required, "cannot be cleared")
        with self._change() as change:
            session = change.session
            row = self._machine_row(session, key)
            before = _machine_record(row)
            self._check_unique(
                session,
                {
                    "mac": changes.get("mac"),
                    "hostname": changes.get("hostname"),
                    "ip": str(changes["ip"]) if changes.get("ip") else None,
                    "initiator_name": changes.get("initiator_name"),
                },
                exclude=row.id,
            )
            self._apply_machine(session, row, changes, create_groups=False)
            session.flush()
            after = _machine_record(row)
            if after != before:
                row.updated = self._now()
                session.flush()
                after = _machine_record(row)
                self._audit(
                    change,
                    actor,
                    action,
                    after.mac,
                    before=before.audit_view(),
                    after=after.audit_view(),
                )
                change.changed = True
        return after

    def delete_machine(self, key: str | bytes, *, actor: str) -> MachineRecord:
        with self._change() as change:
            row = self._machine_row(change.session, key)
            record = _machine_record(row)
            change.session.delete(row)
            self._audit(
                change, actor, "machine.delete", record.mac, before=record.audit_view(), after=None
            )
            change.changed = True
        return record

    def set_image(
        self,
        key: str | bytes,
        image: str | None,
        version: int | None = None,
        mode: str | None = None,
        *,
        actor: str,
    ) -> MachineRecord:
        """Assign the golden image (``None``: the group's), its version (``None``: latest) and,
        if given, the disk mode (``persistent`` or ``reset-on-boot``)."""
        fields: dict[str, Any] = {"image": image, "image_version": version}
        if mode is not None:
            fields["disk_mode"] = mode
        patch = self._patch(fields)
        return self.update_machine(key, patch, actor=actor, action="machine.set-image")

    def set_disk_mode(self, key: str | bytes, mode: str | None, *, actor: str) -> MachineRecord:
        """``persistent``, ``reset-on-boot``, or ``None`` for the group's mode."""
        patch = self._patch({"disk_mode": mode})
        return self.update_machine(key, patch, actor=actor, action="machine.set-mode")

    def set_boot(
        self, key: str | bytes, target: BootTarget | dict[str, Any] | None, *, actor: str
    ) -> MachineRecord:
        """The machine's boot target (``None``: the group's, else its own iSCSI disk)."""
        patch = self._patch({"boot": target})
        return self.update_machine(key, patch, actor=actor, action="machine.set-boot")

    def set_next_boot_once(
        self, key: str | bytes, target: BootTarget | dict[str, Any] | None, *, actor: str
    ) -> MachineRecord:
        """Boot ``target`` once instead of the usual one (``None`` cancels a pending one)."""
        patch = self._patch({"next_boot_once": target})
        return self.update_machine(key, patch, actor=actor, action="machine.set-next-boot")

    @staticmethod
    def _patch(fields: dict[str, Any]) -> MachinePatch:
        try:
            return MachinePatch.model_validate(fields)
        except ValidationError as exc:
            raise field_error(exc) from exc

    def consume_next_boot_once(self, mac: bytes, *, actor: str = "boot") -> BootTarget | None:
        """Forget ``mac``'s next-boot-once target once it has been served; returns it.

        ``None`` when there was none (already consumed, e.g. by another server): the caller
        then has nothing to do.
        """
        with self._change() as change:
            session = change.session
            row = session.scalars(
                select(MachineRow).where(MachineRow.mac == format_mac(mac)).with_for_update()
            ).first()
            if row is None or row.next_boot_once is None:
                return None
            consumed = _BOOT_TARGET.validate_python(row.next_boot_once)
            row.next_boot_once = None
            row.updated = self._now()
            self._audit(
                change,
                actor,
                "machine.consume-next-boot",
                row.mac,
                before={"next_boot_once": _json_target(consumed)},
                after={"next_boot_once": None},
            )
            change.changed = True
        return consumed

    # -- discovered MACs -----------------------------------------------------------------------

    def list_discovered(self) -> list[DiscoveredMac]:
        with self.database.read() as session:
            rows = session.scalars(
                select(DiscoveredRow).order_by(DiscoveredRow.last_seen.desc())
            ).all()
            return [
                DiscoveredMac(
                    mac=row.mac,
                    first_seen=row.first_seen,
                    last_seen=row.last_seen,
                    count=row.count,
                    last_arch=row.last_arch,
                    last_vendor_class=row.last_vendor_class,
                    last_ip=IPv4Address(row.last_ip) if row.last_ip else None,
                )
                for row in rows
            ]

    def record_discovered(self, sightings: Iterable[Sighting]) -> int:
        """Write a batch of sightings of unknown MACs; returns how many MACs were written.

        Sightings of one MAC are folded into one row (count, first and last seen, the last
        arch, vendor class and address). MACs that are machines by now are skipped. Past
        ``discovered_limit`` rows, the least recently seen are dropped.
        """
        folded: dict[str, dict[str, Any]] = {}
        for sighting in sightings:
            mac = format_mac(sighting.mac)
            at = _utc(sighting.at)
            first = _utc(sighting.first_at) if sighting.first_at is not None else at
            entry = folded.get(mac)
            if entry is None:
                entry = folded[mac] = {
                    "mac": mac,
                    "first_seen": first,
                    "last_seen": at,
                    "count": 0,
                    "last_arch": None,
                    "last_vendor_class": None,
                    "last_ip": None,
                }
            entry["count"] += max(0, sighting.count)
            entry["first_seen"] = min(entry["first_seen"], first)
            entry["last_seen"] = max(entry["last_seen"], at)
            if sighting.arch is not None:
                entry["last_arch"] = sighting.arch
            if sighting.vendor_class is not None:
                entry["last_vendor_class"] = sighting.vendor_class[:255]
            if sighting.ip is not None:
                entry["last_ip"] = str(sighting.ip)
        if not folded:
            return 0
        with self.database.write() as session:
            known = set(
                session.scalars(select(MachineRow.mac).where(MachineRow.mac.in_(list(folded))))
            )
            rows = [entry for mac, entry in folded.items() if mac not in known]
            if rows:
                session.execute(self._discovered_upsert(), rows)
                self._trim_discovered(session)
        return len(rows)

    def _discovered_upsert(self) -> Any:
        # Both dialects spell the upsert the same way (INSERT ... ON CONFLICT DO UPDATE).
        upsert = (
            postgresql.insert(DiscoveredRow)
            if self.database.is_postgresql
            else sqlite.insert(DiscoveredRow)
        )
        new = upsert.excluded
        return upsert.on_conflict_do_update(
            index_elements=["mac"],
            set_={
                "last_seen": new["last_seen"],
                "count": DiscoveredRow.count + new["count"],
                "last_arch": func.coalesce(new["last_arch"], DiscoveredRow.last_arch),
                "last_vendor_class": func.coalesce(
                    new["last_vendor_class"], DiscoveredRow.last_vendor_class
                ),
                "last_ip": func.coalesce(new["last_ip"], DiscoveredRow.last_ip),
            },
        )

    def _trim_discovered(self, session: Session) -> None:
        limit = self.retention.discovered_limit
        total = session.execute(select(func.count()).select_from(DiscoveredRow)).scalar_one()
        if total <= limit:
            return
        oldest = (
            select(DiscoveredRow.id)
            .order_by(DiscoveredRow.last_seen, DiscoveredRow.id)
            .limit(total - limit)
        )
        session.execute(delete(DiscoveredRow).where(DiscoveredRow.id.in_(oldest.scalar_subquery())))

    def approve_discovered(
        self,
        mac: str | bytes,
        *,
        hostname: str | None = None,
        group: str | None = None,
        ip: IPv4Address | str | None = None,
        actor: str,
        **fields: Any,
    ) -> MachineRecord:
        """Make a discovered MAC a machine (``hostname`` defaults to ``pc-`` and its last 6
        hex digits); other ``fields`` are :class:`MachineSpec` fields."""
        mac_text = format_mac(mac) if isinstance(mac, bytes) else format_mac(parse_mac(mac))
        with self._change() as change:
            session = change.session
            found = session.scalars(
                select(DiscoveredRow).where(DiscoveredRow.mac == mac_text)
            ).first()
            if found is None:
                raise InventoryNotFoundError("discovered MAC", mac_text)
            if hostname is None:
                hostname = "pc-" + mac_text.replace(":", "")[6:]
                taken = session.scalars(
                    select(MachineRow.id).where(MachineRow.hostname == hostname)
                ).first()
                if taken is not None:
                    hostname = "pc-" + mac_text.replace(":", "")
            try:
                spec = MachineSpec.model_validate(
                    {"mac": mac_text, "hostname": hostname, "group": group, "ip": ip, **fields}
                )
            except ValidationError as exc:
                raise field_error(exc) from exc
            return self._create_machine(change, spec, actor=actor, action="discovered.approve")

    def forget_discovered(self, mac: str | bytes, *, actor: str) -> None:
        """Drop a discovered MAC from the list (it reappears if it asks to boot again)."""
        mac_text = format_mac(mac) if isinstance(mac, bytes) else format_mac(parse_mac(mac))
        with self._change() as change:
            deleted = change.session.execute(
                delete(DiscoveredRow).where(DiscoveredRow.mac == mac_text)
            )
            if getattr(deleted, "rowcount", 0) == 0:
                raise InventoryNotFoundError("discovered MAC", mac_text)
            self._audit(change, actor, "discovered.forget", mac_text, before=None, after=None)

    # -- boot events ---------------------------------------------------------------------------

    def record_boot_events(self, events: Sequence[BootEvent]) -> int:
        """Write a batch of boot events, update each machine's ``last_seen``, and keep only the
        newest ``boot_events_per_machine`` events of each MAC in the batch."""
        if not events:
            return 0
        rows = [
            {
                "mac": format_mac(event.mac),
                "stage": str(event.stage),
                "at": _utc(event.at),
                "detail": event.detail[:_BOOT_DETAIL_MAX],
            }
            for event in events
        ]
        latest: dict[str, datetime] = {}
        for event in events:
            mac, at = format_mac(event.mac), _utc(event.at)
            if mac not in latest or at > latest[mac]:
                latest[mac] = at
        keep = self.retention.boot_events_per_machine
        with self.database.write() as session:
            session.execute(insert(BootEventRow), rows)
            for mac, at in latest.items():
                session.execute(
                    update(MachineRow)
                    .where(MachineRow.mac == mac)
                    .where((MachineRow.last_seen.is_(None)) | (MachineRow.last_seen < at))
                    .values(last_seen=at)
                )
                threshold = session.scalars(
                    select(BootEventRow.id)
                    .where(BootEventRow.mac == mac)
                    .order_by(BootEventRow.id.desc())
                    .offset(keep)
                    .limit(1)
                ).first()
                if threshold is not None:
                    session.execute(
                        delete(BootEventRow)
                        .where(BootEventRow.mac == mac)
                        .where(BootEventRow.id <= threshold)
                    )
        return len(rows)

    def boot_events(self, mac: str | bytes, *, limit: int = 100) -> list[BootEvent]:
        """The newest ``limit`` stored events of ``mac``, oldest first."""
        mac_text = format_mac(mac) if isinstance(mac, bytes) else format_mac(parse_mac(mac))
        with self.database.read() as session:
            rows = session.scalars(
                select(BootEventRow)
                .where(BootEventRow.mac == mac_text)
                .order_by(BootEventRow.id.desc())
                .limit(limit)
            ).all()
            events: list[BootEvent] = []
            for row in reversed(rows):
                try:
                    stage = BootStage(row.stage)
                except ValueError:
                    continue  # a stage a newer diskless wrote
                events.append(BootEvent(parse_mac(row.mac), stage, row.at.timestamp(), row.detail))
            return events

    def prune_boot_events(self) -> int:
        """Drop boot events older than ``boot_event_days``; returns how many."""
        cutoff = self._now() - timedelta(days=self.retention.boot_event_days)
        with self.database.write() as session:
            result = session.execute(delete(BootEventRow).where(BootEventRow.at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)

    # -- groups --------------------------------------------------------------------------------

    def _members(self, session: Session, group: GroupRow) -> int:
        return session.execute(
            select(func.count()).select_from(MachineRow).where(MachineRow.group_id == group.id)
        ).scalar_one()

    def _group_or_404(self, session: Session, name: str) -> GroupRow:
        row = self._group_row(session, name.strip().lower())
        if row is None:
            raise InventoryNotFoundError("group", name)
        return row

    def list_groups(self) -> list[GroupRecord]:
        with self.database.read() as session:
            counts: dict[int | None, int] = dict(
                session.execute(
                    select(MachineRow.group_id, func.count()).group_by(MachineRow.group_id)
                ).all()
            )
            rows = session.scalars(select(GroupRow).order_by(GroupRow.name)).all()
            return [_group_record(row, counts.get(row.id, 0)) for row in rows]

    def get_group(self, name: str) -> GroupRecord:
        with self.database.read() as session:
            row = self._group_or_404(session, name)
            return _group_record(row, self._members(session, row))

    def create_group(self, spec: GroupSpec, *, actor: str) -> GroupRecord:
        with self._change() as change:
            session = change.session
            if self._group_row(session, spec.name) is not None:
                raise InventoryConflictError("name", f"a group named {spec.name!r} exists")
            now = self._now()
            row = GroupRow(created=now, updated=now, description="")
            for name in _GROUP_FIELDS:
                setattr(row, name, _stored(name, getattr(spec, name)))
            session.add(row)
            session.flush()
            record = _group_record(row, 0)
            self._audit(
                change,
                actor,
                "group.create",
                f"group:{row.name}",
                before=None,
                after=record.model_dump(mode="json"),
            )
            change.changed = True
        return record

    def update_group(self, name: str, patch: GroupPatch, *, actor: str) -> GroupRecord:
        changes = patch.changes()
        if "name" in changes and changes["name"] is None:
            raise InvalidFieldError("name", "cannot be cleared")
        with self._change() as change:
            session = change.session
            row = self._group_or_404(session, name)
            members = self._members(session, row)
            before = _group_record(row, members)
            new_name = changes.get("name")
            if (
                new_name is not None
                and new_name != row.name
                and self._group_row(session, new_name) is not None
            ):
                raise InventoryConflictError("name", f"a group named {new_name!r} exists")
            for field_name, value in changes.items():
                stored = _stored(field_name, value)
                if field_name == "description" and stored is None:
                    stored = ""
                setattr(row, field_name, stored)
            session.flush()
            after = _group_record(row, members)
            if after != before:
                row.updated = self._now()
                after = _group_record(row, members)
                self._audit(
                    change,
                    actor,
                    "group.update",
                    f"group:{row.name}",
                    before=before.model_dump(mode="json"),
                    after=after.model_dump(mode="json"),
                )
                change.changed = True
        return after

    def delete_group(self, name: str, *, actor: str) -> GroupRecord:
        """Delete an empty group (one with machines is a conflict: move them first)."""
        with self._change() as change:
            session = change.session
            row = self._group_or_404(session, name)
            members = self._members(session, row)
            if members:
                raise InventoryConflictError(
                    "group", f"group {row.name!r} still has {members} machine(s)"
                )
            record = _group_record(row, 0)
            session.delete(row)
            self._audit(
                change,
                actor,
                "group.delete",
                f"group:{row.name}",
                before=record.model_dump(mode="json"),
            )
            change.changed = True
        return record

    # -- API tokens ----------------------------------------------------------------------------

    def create_token(self, name: str, *, read_only: bool = False, actor: str) -> NewToken:
        """A new random token; only its SHA-256 is stored, so ``NewToken.token`` is the one copy."""
        if not re.fullmatch(TOKEN_NAME_PATTERN, name):
            raise InvalidFieldError(
                "name", "use 1-63 letters, digits, '.', '_', '@', '-', starting with one of them"
            )
        info = TokenInfo(name=name, read_only=read_only, created=self._now(), last_used=None)
        token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._change() as change:
            session = change.session
            if session.scalars(select(TokenRow.id).where(TokenRow.name == name)).first():
                raise InventoryConflictError("name", f"a token named {name!r} exists")
            session.add(
                TokenRow(
                    name=name,
                    token_hash=_token_hash(token),
                    read_only=read_only,
                    created=info.created,
                )
            )
            self._audit(
                change,
                actor,
                "token.create",
                f"token:{name}",
                before=None,
                after={"read_only": read_only},
            )
        return NewToken(info=info, token=token)

    def verify_token(self, token: str) -> TokenInfo | None:
        """The token's owner, or ``None`` if it is unknown or revoked. Notes when it was used
        (at most one write a minute per token)."""
        if not token.startswith(_TOKEN_PREFIX):
            return None
        digest = _token_hash(token)
        with self.database.read() as session:
            row = session.scalars(select(TokenRow).where(TokenRow.token_hash == digest)).first()
            if row is None or not hmac.compare_digest(row.token_hash, digest):
                return None
            info = TokenInfo(
                name=row.name, read_only=row.read_only, created=row.created, last_used=row.last_used
            )
        now = self._now()
        if info.last_used is None or now - info.last_used >= _TOKEN_USE_GRANULARITY:
            with self.database.write() as session:
                session.execute(
                    update(TokenRow).where(TokenRow.token_hash == digest).values(last_used=now)
                )
            info = info.model_copy(update={"last_used": now})
        return info

    def list_tokens(self) -> list[TokenInfo]:
        with self.database.read() as session:
            rows = session.scalars(select(TokenRow).order_by(TokenRow.name)).all()
            return [
                TokenInfo(
                    name=row.name,
                    read_only=row.read_only,
                    created=row.created,
                    last_used=row.last_used,
                )
                for row in rows
            ]

    def revoke_token(self, name: str, *, actor: str) -> None:
        with self._change() as change:
            result = change.session.execute(delete(TokenRow).where(TokenRow.name == name))
            if getattr(result, "rowcount", 0) == 0:
                raise InventoryNotFoundError("token", name)
            self._audit(change, actor, "token.revoke", f"token:{name}", before=None, after=None)

    # -- audit log -----------------------------------------------------------------------------

    def audit_log(self, *, limit: int = 100, target: str | None = None) -> list[AuditEntry]:
        """The newest ``limit`` admin changes, newest first (``target``: a MAC, ``group:NAME``,
        ``token:NAME`` or ``setting:KEY``)."""
        with self.database.read() as session:
            query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            if target is not None:
                query = query.where(AuditRow.target == target)
            return [
                AuditEntry(
                    id=row.id,
                    at=row.at,
                    actor=row.actor,
                    action=row.action,
                    target=row.target,
                    before=row.before,
                    after=row.after,
                )
                for row in session.scalars(query)
            ]

    # -- run-time settings ---------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        with self.database.read() as session:
            return {row.key: row.value for row in session.scalars(select(SettingRow))}

    def set_setting(self, key: str, value: Any, *, actor: str) -> None:
        """Store a JSON value under ``key`` (``None`` deletes it); it reaches the snapshot."""
        if not re.fullmatch(r"[a-z][a-z0-9_.]{0,62}", key):
            raise InvalidFieldError("key", "use 1-63 of a-z, 0-9, '_', '.', starting with a letter")
        with self._change() as change:
            session = change.session
            row = session.get(SettingRow, key)
            before = None if row is None else {"value": row.value}
            if value is None:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(SettingRow(key=key, value=value, updated=self._now()))
            else:
                row.value = value
                row.updated = self._now()
            after = None if value is None else {"value": value}
            if before != after:
                self._audit(
                    change, actor, "setting.set", f"setting:{key}", before=before, after=after
                )
                change.changed = True

    # -- imports -------------------------------------------------------------------------------

    def import_machines(
        self,
        specs: Sequence[MachineSpec],
        *,
        actor: str,
        on_conflict: Literal["error", "skip", "update"] = "error",
        create_groups: bool = True,
    ) -> ImportResult:
        """Add machines in one transaction (all or nothing).

        A MAC that is already a machine is an error, left alone (``skip``) or overwritten
        with the given fields (``update``). Groups the specs name are created when missing.
        """
        result = ImportResult()
        seen: dict[str, int] = {}
        for index, spec in enumerate(specs):
            if spec.mac in seen:
                raise InvalidFieldError(
                    f"[{index}].mac", f"{spec.mac} is listed twice (also entry {seen[spec.mac]})"
                )
            seen[spec.mac] = index
        with self._change() as change:
            session = change.session
            for index, spec in enumerate(specs):
                existing = session.scalars(
                    select(MachineRow).where(MachineRow.mac == spec.mac)
                ).first()
                try:
                    if existing is None:
                        group_missing = spec.group is not None and (
                            self._group_row(session, spec.group) is None
                        )
                        self._create_machine(
                            change,
                            spec,
                            actor=actor,
                            action="machine.import",
                            create_groups=create_groups,
                        )
                        if group_missing and spec.group is not None:
                            result.groups_created.append(spec.group)
                        result.created.append(spec.mac)
                    elif on_conflict == "skip":
                        result.skipped.append(spec.mac)
                    elif on_conflict == "update":
                        before = _machine_record(existing)
                        values = {name: getattr(spec, name) for name in spec.model_fields_set}
                        values.setdefault("hostname", spec.hostname)
                        self._check_unique(
                            session,
                            {
                                "hostname": spec.hostname,
                                "ip": str(spec.ip) if spec.ip else None,
                                "initiator_name": spec.initiator_name,
                            },
                            exclude=existing.id,
                        )
                        group_missing = spec.group is not None and (
                            self._group_row(session, spec.group) is None
                        )
                        self._apply_machine(session, existing, values, create_groups=create_groups)
                        if group_missing and spec.group is not None:
                            result.groups_created.append(spec.group)
                        existing.updated = self._now()
                        session.flush()
                        after = _machine_record(existing)
                        self._audit(
                            change,
                            actor,
                            "machine.import",
                            spec.mac,
                            before=before.audit_view(),
                            after=after.audit_view(),
                        )
                        result.updated.append(spec.mac)
                    else:
                        raise InventoryConflictError(
                            f"[{index}].mac", f"{spec.mac} is already a machine"
                        )
                except (InvalidFieldError, InventoryConflictError) as exc:
                    if exc.field.startswith("["):
                        raise
                    kind = type(exc)
                    raise kind(f"[{index}].{exc.field}", exc.reason) from exc
            change.changed = bool(result.created or result.updated)
        return result

    def import_machines_file(
        self,
        path: Path,
        *,
        actor: str,
        on_conflict: Literal["error", "skip", "update"] = "error",
    ) -> ImportResult:
        """Import a ``boot.machines_file`` TOML file (see :mod:`diskless.boot.machines`)."""
        return self.import_machines(
            specs_from_machines_file(path), actor=actor, on_conflict=on_conflict
        )

    def import_csv(
        self,
        path: Path,
        *,
        actor: str,
        on_conflict: Literal["error", "skip", "update"] = "error",
    ) -> ImportResult:
        """Import machines from a CSV file (columns: see :mod:`diskless.inventory.importer`)."""
        return self.import_machines(specs_from_csv_file(path), actor=actor, on_conflict=on_conflict)
