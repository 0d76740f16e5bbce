"""``diskless group ...``: groups (profiles) whose settings machines inherit, through the API."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from diskless.cli.client import api_client
from diskless.cli.image import say
from diskless.cli.output import JsonOption, emit, emit_one
from diskless.cli.progress import confirm_or_fail
from diskless.cli.targets import request_fields
from diskless.errors import DisklessError
from diskless.storage.disks import DiskMode

__all__ = ["app"]

app = typer.Typer(help="Groups whose settings machines inherit.", no_args_is_help=True)

_HIDE: dict[str, Any] = {"show_default": False}
NameArg = Annotated[str, typer.Argument(help="Group name.", show_default=False)]
DescriptionOpt = Annotated[str | None, typer.Option("--description", "-d", **_HIDE)]
ImageOpt = Annotated[str | None, typer.Option("--image", "-i", help="Golden image.", **_HIDE)]
VersionOpt = Annotated[int | None, typer.Option("--version", "-v", help="Pinned version.", **_HIDE)]
ModeOpt = Annotated[DiskMode | None, typer.Option("--mode", "-m", help="Disk mode.", **_HIDE)]
BootOpt = Annotated[
    str | None, typer.Option("--boot", "-b", help="Boot target: a kind or JSON.", **_HIDE)
]
ChapOpt = Annotated[str | None, typer.Option("--chap-policy", help="none or required.", **_HIDE)]
_CLEARABLE = ("image", "image_version", "disk_mode", "boot", "chap_policy")


def _path(name: str) -> str:
    return f"/groups/{quote(name, safe='')}"


def _row(record: dict[str, Any]) -> dict[str, Any]:
    row = dict(record)
    if isinstance(row.get("boot"), dict):
        row["boot"] = row["boot"].get("kind")
    return row


@app.command("list")
def list_groups(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List groups and how many machines each has."""
    records = api_client(ctx).get("/groups")
    emit(
        records if as_json else [_row(record) for record in records],
        [
            "name",
            "members",
            "image",
            "image_version",
            "disk_mode",
            "boot",
            "chap_policy",
            "description",
        ],
        as_json=as_json,
        title="Groups",
    )


@app.command("show")
def show_group(ctx: typer.Context, name: NameArg, as_json: JsonOption = False) -> None:
    """Show one group."""
    emit_one(api_client(ctx).get(_path(name)), as_json=as_json, title=f"Group {name}")


@app.command("add")
def add_group(
    ctx: typer.Context,
    name: NameArg,
    *,
    description: DescriptionOpt = None,
    image: ImageOpt = None,
    version: VersionOpt = None,
    mode: ModeOpt = None,
    boot: BootOpt = None,
    chap_policy: ChapOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Add a group."""
    body = {"name": name} | request_fields(
        {
            "description": description,
            "image": image,
            "image_version": version,
            "disk_mode": mode,
            "boot": boot,
            "chap_policy": chap_policy,
        }
    )
    record = api_client(ctx).post("/groups", body)
    if as_json:
        emit_one(record, as_json=True)
    else:
        say(f"added group {record['name']}")


@app.command("set")
def set_group(
    ctx: typer.Context,
    name: NameArg,
    *,
    new_name: Annotated[str | None, typer.Option("--name", help="Rename it.", **_HIDE)] = None,
    description: DescriptionOpt = None,
    image: ImageOpt = None,
    version: VersionOpt = None,
    mode: ModeOpt = None,
    boot: BootOpt = None,
    chap_policy: ChapOpt = None,
    clear: Annotated[
        list[str] | None,
        typer.Option("--clear", help=f"Clear a field: {', '.join(_CLEARABLE)}.", **_HIDE),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change the fields given; its machines follow."""
    body = request_fields(
        {
            "name": new_name,
            "description": description,
            "image": image,
            "image_version": version,
            "disk_mode": mode,
            "boot": boot,
            "chap_policy": chap_policy,
        },
        clear=clear or (),
        clearable=_CLEARABLE,
    )
    if not body:
        raise DisklessError("nothing to change: give at least one option (see --help)")
    record = api_client(ctx).patch(_path(name), body)
    if as_json:
        emit_one(record, as_json=True)
    else:
        say(f"updated group {record['name']}")


@app.command("remove")
def remove_group(
    ctx: typer.Context,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove a group that has no machines."""
    confirm_or_fail(f"Remove group {name}?", yes=yes)
    record = api_client(ctx).delete(_path(name))
    if as_json:
        emit_one(record, as_json=True)
    else:
        say(f"removed group {record['name']}")
