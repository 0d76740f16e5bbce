"""A real admin API for the CLI tests, and a way to run ``diskless`` against it.

The server is the API tests' (``api_support.start_api``: uvicorn and the inventory service on
127.0.0.1, port 0, in a thread) over SQLite; PostgreSQL is the API tests' business, the CLI only
speaks HTTP. Commands run in-process with typer's ``CliRunner``, with ``--api`` and ``--token``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).parents[1] / "api"))

from api_support import RunningApi, start_api

from diskless.cli.main import app
from diskless.config import LoggingSettings
from diskless.inventory import Inventory
from diskless.observe.log import configure_logging

__all__ = ["RunningApi", "clean_environment", "cli", "run_cli", "served"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DISKLESS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RunningApi]:
    """A running API over a fresh SQLite inventory in ``tmp_path``."""
    # The server's thread logs while CliRunner has swapped sys.stdout for the command's output:
    # send its log lines to the process's real stderr, as `diskless serve` does.
    assert sys.__stderr__ is not None
    configure_logging(LoggingSettings(), stream=sys.__stderr__)
    inventory = Inventory.open(f"sqlite:///{tmp_path / 'inventory.sqlite3'}")
    running, thread, stop = start_api(inventory, tmp_path / "data")
    try:
        yield running
    finally:
        for client in running.clients:
            client.close()
        running.loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        inventory.close()
    assert not thread.is_alive(), "the API did not stop"


def run_cli(*args: str, url: str | None = None, token: str | None = None) -> Result:
    """``diskless [--api URL] [--token TOKEN] ARGS...`` in-process."""
    head: list[str] = []
    if url is not None:
        head += ["--api", url]
    if token is not None:
        head += ["--token", token]
    return CliRunner().invoke(app, [*head, *args])


def cli(api: RunningApi, *args: str, token: str | None = None) -> Result:
    """``diskless ARGS...`` against ``api`` with its admin token (or ``token``)."""
    return run_cli(*args, url=api.url, token=token if token is not None else api.token)
