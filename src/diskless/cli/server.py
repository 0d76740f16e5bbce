"""Top-level commands about the running server: ``status``, ``images``, ``audit``, ``events``.

All go through the admin API. ``events`` follows the server-sent boot-event stream until
Ctrl-C (or until the server stops), one line per event.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from diskless.cli.client import api_client
from diskless.cli.image import for_people
from diskless.cli.output import JsonOption, emit, emit_one

__all__ = ["audit", "events", "images", "status"]


def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Is the server up? Its version, and how many machines, discovered MACs, groups, images."""
    client = api_client(ctx)
    health = client.get("/health")
    summary: dict[str, Any] = {"api": client.base_url, **health}
    # /health needs no token; the rest shows what this token can see.
    summary["discovered"] = len(client.get("/discovered"))
    summary["groups"] = len(client.get("/groups"))
    summary["images"] = len(client.get("/images"))
    emit_one(summary, as_json=as_json, title="diskless server")


def images(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Golden images and their versions, as the server sees them."""
    records = api_client(ctx).get("/images")
    if as_json:
        emit(records, [], as_json=True)
        return
    rows = [
        for_people(version) | {"latest": "yes" if version["version"] == image["latest"] else ""}
        for image in records
        for version in image["versions"]
    ]
    emit(
        rows,
        ["image", "version", "latest", "size", "digest", "created", "note"],
        as_json=False,
        title="Images",
    )


def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 50,
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="A MAC, group:NAME, token:NAME or setting:KEY.", show_default=False
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Who changed what, newest first."""
    entries = api_client(ctx).get("/audit", limit=limit, target=target)
    emit(entries, ["at", "actor", "action", "target"], as_json=as_json, title="Audit log")


def _event_line(event: dict[str, Any]) -> str:
    at = datetime.fromtimestamp(float(event.get("at", 0)), UTC).astimezone()
    known = "" if event.get("known", True) else " (unknown machine)"
    detail = f"  {event['detail']}" if event.get("detail") else ""
    return f"{at:%H:%M:%S} {event.get('mac', '?')} {event.get('stage', '?'):<14}{detail}{known}"


def events(
    ctx: typer.Context,
    mac: Annotated[
        str | None, typer.Option("--mac", help="Only this MAC's events.", show_default=False)
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Accepted for habit; the stream is always live."),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Print boot events live as they happen, one per line, until Ctrl-C."""
    del follow  # The API has no replay of past events to show instead; per-MAC history is
    # `diskless machine events KEY`.
    if not as_json:
        typer.echo("following boot events (Ctrl-C to stop)", err=True)
    try:
        for event in api_client(ctx).events(mac=mac):
            if event.kind != "boot" or not isinstance(event.data, dict):
                continue
            line = json.dumps(event.data) if as_json else _event_line(event.data)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return
