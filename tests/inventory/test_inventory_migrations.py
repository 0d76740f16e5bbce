"""Alembic: upgrade from an empty database to head, downgrade back to nothing, on both backends."""

from __future__ import annotations

from importlib import resources

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from diskless.inventory import Database, Inventory, MachineSpec
from diskless.inventory.model import Base

TABLES = {
    "inventory_state",
    "groups",
    "machines",
    "discovered",
    "boot_events",
    "audit_log",
    "api_tokens",
    "settings",
}


def _tables(database: Database) -> set[str]:
    return set(inspect(database.engine).get_table_names()) - {"alembic_version"}


def test_upgrade_from_empty_then_downgrade_to_base(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert database.current_revision() is None
        assert _tables(database) == set()

        database.upgrade()

        assert database.current_revision() == database.head_revision() == "0001"
        assert _tables(database) == TABLES

        database.downgrade("base")

        assert database.current_revision() is None
        assert _tables(database) == set()
    finally:
        database.dispose()


def test_migrated_schema_matches_the_model(database_url: str) -> None:
    # Autogenerate finds nothing to do: the migration creates exactly the mapped tables.
    database = Database(database_url)
    try:
        database.upgrade()
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
        assert differences == []
    finally:
        database.dispose()


def test_upgrade_is_idempotent_and_keeps_data(database_url: str) -> None:
    inventory = Inventory.open(database_url)
    try:
        inventory.create_machine(
            MachineSpec(mac="52:54:00:00:00:01", hostname="pc01"), actor="test"
        )
        inventory.database.upgrade()  # a restart: already at head
        assert [machine.hostname for machine in inventory.list_machines()] == ["pc01"]
    finally:
        inventory.close()


def test_downgrade_then_upgrade_again(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.upgrade()
        database.downgrade()
        database.upgrade()
        assert _tables(database) == TABLES
        inventory = Inventory(database)
        assert inventory.serial() == 1
    finally:
        database.dispose()


def test_migrations_ship_inside_the_package() -> None:
    # The wheel includes src/diskless/** as package data; Alembic finds them by package path.
    folder = resources.files("diskless.inventory.migrations")
    assert folder.joinpath("env.py").is_file()
    assert folder.joinpath("script.py.mako").is_file()
    assert folder.joinpath("versions", "r0001_initial.py").is_file()
