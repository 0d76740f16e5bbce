"""Fixtures: every inventory test runs against SQLite and against a real PostgreSQL server.

PostgreSQL comes from ``DISKLESS_TEST_POSTGRES_URL`` (a server where the user may create
databases), or else from a throwaway cluster this session starts with the installed
``initdb``/``pg_ctl`` (Debian's ``postgresql`` package) and stops at the end. Each test gets a
database of its own. In CI (``CI`` set) a missing PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from pg_cluster import PgCluster, find_pg_bindir
from sqlalchemy import make_url

from diskless.inventory import Inventory

START = 1_800_000_000.0  # 2027-01-15, a fixed "now" for the tests' clock


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class PostgresServer:
    """A server where tests create and drop their own databases."""

    admin_url: str

    def _admin(self) -> psycopg.Connection:
        conninfo = make_url(self.admin_url).set(drivername="postgresql")
        return psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True)

    def url(self, database: str) -> str:
        parsed = make_url(self.admin_url).set(drivername="postgresql+psycopg", database=database)
        return parsed.render_as_string(hide_password=False)

    def create_database(self) -> str:
        name = f"diskless_test_{uuid.uuid4().hex[:12]}"
        with self._admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self._admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate_listeners(self, database: str) -> int:
        """Kill the server side of every connection to ``database`` that is LISTENing."""
        with self._admin() as connection:
            rows = connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND query ILIKE 'LISTEN%%' AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
        return len(rows)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    given = os.environ.get("DISKLESS_TEST_POSTGRES_URL")
    if given:
        yield PostgresServer(given)
        return
    bindir = find_pg_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"CI run without PostgreSQL: {message}; scripts/test installs it")
        pytest.skip(message)
    cluster = PgCluster.start(bindir)
    try:
        yield PostgresServer(cluster.url("postgres"))
    finally:
        cluster.stop()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:
    name = postgres_server.create_database()
    try:
        yield postgres_server, name
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inventory.sqlite3'}"
    server, name = request.getfixturevalue("postgres_database")
    return server.url(name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inventory(database_url: str, clock: Clock) -> Iterator[Inventory]:
    opened = Inventory.open(database_url, clock=clock)
    try:
        yield opened
    finally:
        opened.close()
