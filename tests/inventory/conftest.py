"""Fixtures: every inventory test runs against SQLite and against a real PostgreSQL server.

PostgreSQL comes from ``DISKLESS_TEST_POSTGRES_URL`` (a server where the user may create
databases), or else from a throwaway cluster this session starts with the installed
``initdb``/``pg_ctl`` (Debian's ``postgresql`` package) and stops at the end. Each test gets a
database of its own. In CI (``CI`` set) a missing PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from inventory_support import Clock, PostgresServer
from pg_cluster import PgCluster, find_pg_bindir

from diskless.inventory import Inventory


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
