"""The database behind the inventory: engine set-up, sessions and Alembic migrations.

SQLite (the stdlib driver) is the default: one file at ``<data_dir>/state/inventory.sqlite3``, in
WAL mode so readers never wait for the writer, with every write transaction started with
``BEGIN IMMEDIATE`` so two writers queue on the lock instead of failing on an upgrade deadlock.
PostgreSQL (``postgresql+psycopg://…``) is for several boot servers sharing one inventory; its
``LISTEN/NOTIFY`` drives their snapshot refresh (:mod:`diskless.inventory.endpoint`).

Sessions are synchronous. Admin changes are rare and small, so the async server runs them in a
worker thread (``asyncio.to_thread``); nothing on the boot hot path touches the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from diskless.errors import ConfigError

__all__ = [
    "NOTIFY_CHANNEL",
    "Database",
    "default_database_url",
]

NOTIFY_CHANNEL = "diskless_inventory"
"""PostgreSQL channel a commit that changes the machine snapshot notifies (payload: serial)."""

MIGRATIONS = "diskless.inventory:migrations"
# Taken for the whole migration transaction, so boot servers starting together on one
# PostgreSQL run the migrations one after the other.
_MIGRATION_LOCK = 0x6469_736B_6C65  # "diskle"

_SQLITE_BUSY_TIMEOUT_MS = 10_000


def default_database_url(data_dir: Path) -> str:
    """``sqlite:///<data_dir>/state/inventory.sqlite3`` (absolute)."""
    path = (data_dir / "state" / "inventory.sqlite3").absolute()
    return URL.create("sqlite", database=str(path)).render_as_string()


class Database:
    """An engine for one inventory database, with read and write sessions and migrations."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"inventory.database_url: not a database URL: {url!r}") from exc
        backend = parsed.get_backend_name()
        if backend not in {"sqlite", "postgresql"}:
            raise ConfigError(
                f"inventory.database_url: {backend!r} is not supported: use sqlite or postgresql"
            )
        if backend == "postgresql" and parsed.drivername == "postgresql":
            # psycopg 3 is the driver we ship; SQLAlchemy's bare default is psycopg2.
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        self.backend = backend
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError(
                        f"inventory.database_url: cannot create the folder of {database}: "
                        f"{exc.strerror}"
                    ) from exc
            # The pool hands a connection to one thread at a time; the server's worker threads
            # share the pool.
            connect_args["check_same_thread"] = False
        self.engine: Engine = create_engine(
            parsed, echo=echo, connect_args=connect_args, pool_pre_ping=backend == "postgresql"
        )
        if backend == "sqlite":
            _tune_sqlite(self.engine)
        # Write sessions run on an engine view whose transactions start with BEGIN IMMEDIATE on
        # SQLite; on PostgreSQL the option is ignored.
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )

    @property
    def is_postgresql(self) -> bool:
        return self.backend == "postgresql"

    def display_url(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (rolled back at the end)."""
        with self._reader() as session:
            # Closing the session rolls its (autobegun) transaction back.
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session committed at the end of the block, rolled back if it raises."""
        with self._writer() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    # -- migrations ----------------------------------------------------------------------------

    def _alembic_config(self, connection: Connection) -> Config:
        config = Config()
        config.set_main_option("script_location", MIGRATIONS)
        config.attributes["connection"] = connection
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema up to ``revision`` (run at start; a no-op when already there)."""
        with self.engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
            if self.is_postgresql:
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            command.upgrade(self._alembic_config(connection), revision)

    def downgrade(self, revision: str = "base") -> None:
        """Migrate the schema down to ``revision`` (``base``: drop every inventory table)."""
        with self.engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
            if self.is_postgresql:
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            command.downgrade(self._alembic_config(connection), revision)

    def current_revision(self) -> str | None:
        """The schema's revision, ``None`` for an empty database."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision this version of diskless ships."""
        with self.engine.connect() as connection:
            script = ScriptDirectory.from_config(self._alembic_config(connection))
            return script.get_current_head()


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN, instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")
