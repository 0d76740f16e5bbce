"""The inventory: machines, groups, discovered MACs, boot events, audit log and API tokens.

One database (SQLite by default, PostgreSQL when several boot servers share it) behind
:class:`Inventory`, whose synchronous methods the REST API and CLI call. The boot services
never query it: they read an immutable :class:`InventorySnapshot` (a :class:`MachineBook` with
group inheritance resolved) that :class:`~diskless.inventory.endpoint.InventoryService` keeps
current, and their activity reaches the database in batches through
:class:`InventoryRecorder`.

Modules: ``model`` (tables), ``database`` (engine, sessions, migrations), ``records`` (validated
input and output records), ``snapshot`` (inheritance, snapshot), ``repository`` (operations),
``importer`` (TOML machines file, CSV), ``recorder`` (batching), ``endpoint`` (asyncio service:
refresh on local commit, PostgreSQL LISTEN/NOTIFY, polling; batched writes).
"""

from .database import NOTIFY_CHANNEL, Database, default_database_url
from .errors import (
    InvalidFieldError,
    InventoryConflictError,
    InventoryError,
    InventoryNotFoundError,
)
from .importer import specs_from_csv, specs_from_csv_file, specs_from_machines_file
from .recorder import InventoryRecorder, RecorderBatch
from .records import (
    AuditEntry,
    ChapPolicy,
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
)
from .repository import ChangeListener, Inventory, Retention
from .snapshot import DiskAssignment, InventorySnapshot, build_snapshot, resolve

__all__ = [
    "NOTIFY_CHANNEL",
    "AuditEntry",
    "ChangeListener",
    "ChapPolicy",
    "Database",
    "DiscoveredMac",
    "DiskAssignment",
    "GroupPatch",
    "GroupRecord",
    "GroupSpec",
    "ImportResult",
    "InvalidFieldError",
    "Inventory",
    "InventoryConflictError",
    "InventoryError",
    "InventoryNotFoundError",
    "InventoryRecorder",
    "InventorySnapshot",
    "MachinePatch",
    "MachineRecord",
    "MachineSpec",
    "NewToken",
    "RecorderBatch",
    "Retention",
    "Sighting",
    "TokenInfo",
    "build_snapshot",
    "default_database_url",
    "resolve",
    "specs_from_csv",
    "specs_from_csv_file",
    "specs_from_machines_file",
]
