"""``diskless settings ...``: run-time settings stored in the inventory, through the API.

These are the values an operator changes while the server runs (``wake.group_interfaces``,
for one), apart from the file and environment settings ``diskless config`` shows.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

import typer

from diskless.cli.client import api_client
from diskless.cli.image import say
from diskless.cli.output import JsonOption, emit, emit_one

__all__ = ["app"]

app = typer.Typer(help="Run-time settings stored in the inventory.", no_args_is_help=True)

KeyArg = Annotated[str, typer.Argument(help="Setting key, e.g. wake.group_interfaces.")]


def _value(text: str) -> Any:
    # JSON when it parses (numbers, objects, true), the text itself otherwise: `eth1` is "eth1".
    try:
        return json.loads(text)
    except ValueError:
        return text


@app.command("list")
def list_settings(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show every run-time setting."""
    values = api_client(ctx).get("/settings")
    if as_json:
        emit_one(values, as_json=True)
        return
    rows = [{"key": key, "value": json.dumps(value)} for key, value in sorted(values.items())]
    emit(rows, ["key", "value"], as_json=False, title="Run-time settings")


@app.command("set")
def set_setting(
    ctx: typer.Context,
    key: KeyArg,
    value: Annotated[str, typer.Argument(help='A JSON value (e.g. {"lab": "eth1"}) or text.')],
) -> None:
    """Set one run-time setting."""
    api_client(ctx).put(f"/settings/{quote(key, safe='')}", {"value": _value(value)})
    say(f"set {key}")


@app.command("unset")
def unset_setting(ctx: typer.Context, key: KeyArg) -> None:
    """Delete one run-time setting."""
    api_client(ctx).delete(f"/settings/{quote(key, safe='')}")
    say(f"unset {key}")
