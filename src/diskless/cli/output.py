"""What every ``diskless`` command shares: its context object, its options, and how it prints.

A command prints results on stdout, either as a rich table (the default) or as JSON (``--json``),
and prints failures on stderr as one red line before exiting non-zero. Commands never touch
globals: the root app puts a :class:`CliState` on ``ctx.obj``, and a command asks it for the
validated :class:`~diskless.config.Settings`, loaded once, on first use, from ``--config`` /
``DISKLESS_CONFIG`` (or the embedded defaults) with ``DISKLESS_*`` overrides applied.

A sub-command written against this module looks like::

    @app.command("list")
    def list_images(ctx: typer.Context, as_json: JsonOption = False) -> None:
        settings = get_settings(ctx)
        rows = [{"name": ..., "size": ...} for ... in ...]
        emit(rows, ["name", "size"], as_json=as_json, title="Images")

Raising any :class:`~diskless.errors.DisklessError` from a command is enough to report an expected
failure: the root app turns it into one line on stderr and exit status 1 (2 for a
:class:`~diskless.errors.ConfigError`), never a traceback. :func:`fail` is for failures the command
detects itself.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from diskless.config import Settings, load_settings

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "CliState",
    "ConfigOption",
    "JsonOption",
    "emit",
    "emit_one",
    "fail",
    "get_settings",
    "get_state",
    "human_size",
]

EXIT_FAILURE = 1
"""An expected failure: bad input, missing object, busy disk."""

EXIT_CONFIG = 2
"""The configuration is unusable; the same status click uses for a command-line usage error."""

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="DISKLESS_CONFIG",
        help="TOML configuration file (default: built-in defaults plus DISKLESS_* variables).",
        dir_okay=False,
        show_default=False,
    ),
]
"""The ``--config PATH`` option; the root app takes it, and ``serve`` repeats it for convenience."""

JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print JSON instead of a table."),
]
"""The ``--json`` flag every listing or show command offers; pass its value to :func:`emit`."""


@dataclass
class CliState:
    """Per-invocation state the root app stores on ``ctx.obj``."""

    config_path: Path | None = None
    api_url: str | None = None
    """The admin API's base URL from ``--api`` / ``DISKLESS_API_URL`` (else from the settings)."""
    api_token: str | None = None
    """The token from ``--token`` (else the ``api.token`` setting)."""
    _settings: Settings | None = field(default=None, init=False, repr=False)

    @property
    def settings(self) -> Settings:
        """The validated settings, loaded on first use; raises ConfigError naming the bad key."""
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    def use_config(self, path: Path | None) -> None:
        """Switch to ``path`` (a command's own ``--config``) unless it is ``None``."""
        if path is not None and path != self.config_path:
            self.config_path = path
            self._settings = None


def get_state(ctx: typer.Context) -> CliState:
    """The invocation's :class:`CliState`, created with defaults when a sub-app runs on its own."""
    return ctx.ensure_object(CliState)


def get_settings(ctx: typer.Context) -> Settings:
    """The validated settings for this invocation (see :class:`CliState`)."""
    return get_state(ctx).settings


def fail(message: str, *, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with ``code``."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(Text(f"error: {message}", style="bold red"))
    raise typer.Exit(code)


def emit(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    as_json: bool,
    title: str | None = None,
) -> None:
    """Print ``rows`` as a table of ``columns``, or with ``as_json`` as a JSON array.

    JSON output carries every key of every row, not only ``columns``: scripts get all the data,
    people get the columns that fit a terminal.
    """
    if as_json:
        _print_json([dict(row) for row in rows])
        return
    table = Table(title=title, header_style="bold", title_justify="left")
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    if not rows:
        table.caption = "(none)"
    _stdout().print(table)


def emit_one(obj: Mapping[str, Any], *, as_json: bool, title: str | None = None) -> None:
    """Print one object as a two-column key/value table, or with ``as_json`` as a JSON object.

    Nested mappings are shown in the table under dotted keys (``overlay.size``).
    """
    if as_json:
        _print_json(dict(obj))
        return
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in _flatten(obj):
        table.add_row(Text(key), _cell(value))
    _stdout().print(table)


def human_size(size: int) -> str:
    """``size`` bytes in binary units for a table cell, e.g. ``20.0 GiB``; exact below 1 KiB."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _stdout() -> Console:
    # Built per call, so it writes to whatever sys.stdout is now (CliRunner swaps it).
    return Console(file=sys.stdout, highlight=False)


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default, ensure_ascii=False))
    sys.stdout.write("\n")


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, f"{name}."))
        else:
            items.append((name, value))
    return items


def _cell(value: object) -> Text:
    # Text, not str: rich would read "[...]" in a file name as markup.
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, datetime):
        return Text(value.isoformat(timespec="seconds"))
    if isinstance(value, enum.Enum):
        return Text(str(value.value))
    if isinstance(value, list | tuple):
        return Text(", ".join(str(item) for item in value))
    if isinstance(value, Mapping):
        return Text(json.dumps(value, default=_json_default, ensure_ascii=False))
    return Text(str(value))
