"""Helpers the inventory tests import by name (a clock, the PostgreSQL server handle).

Kept out of ``conftest.py``: two test folders each have a ``conftest`` module, and
``from conftest import`` would pick whichever was loaded first.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg
from sqlalchemy import make_url

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
