"""``diskless machine disk ...``: a machine's copy-on-write disk, through the server's API.

Unlike ``diskless disk``, which opens the data directory itself, these go through the running
server: it knows which disk a machine boots (its sanboot disk, else its hostname), refuses a
disk it is serving (409, busy), and audits the change.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from diskless.cli.client import api_client, api_path
from diskless.cli.image import for_people, say
from diskless.cli.output import JsonOption, emit_one
from diskless.cli.progress import confirm_or_fail
from diskless.storage.disks import DiskMode

__all__ = ["app"]

app = typer.Typer(help="A machine's disk, through the server's API.", no_args_is_help=True)

KeyArg = Annotated[str, typer.Argument(help="MAC address or hostname.", show_default=False)]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ImageOpt = Annotated[
    str | None,
    typer.Option("--image", "-i", help="Image name (default: the disk's own).", show_default=False),
]


def _path(key: str, action: str = "") -> str:
    return api_path("machines", key, "disk", *([action] if action else []))


def _show(doc: dict[str, Any], message: str, *, as_json: bool) -> None:
    if as_json:
        emit_one(doc, as_json=True)
    else:
        say(message)


@app.command("show")
def show_disk(ctx: typer.Context, key: KeyArg, as_json: JsonOption = False) -> None:
    """Show the machine's disk: image, version, mode, space its writes use."""
    doc = api_client(ctx).get(_path(key))
    emit_one(doc if as_json else for_people(doc), as_json=as_json, title=f"Disk of {key}")


@app.command("create")
def create_disk(
    ctx: typer.Context,
    key: KeyArg,
    *,
    image: ImageOpt = None,
    version: Annotated[
        int | None, typer.Option("--version", "-v", help="Image version.", show_default=False)
    ] = None,
    mode: Annotated[
        DiskMode | None, typer.Option("--mode", "-m", help="Disk mode.", show_default=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create the machine's disk from its assigned image (or --image)."""
    body = {"image": image, "version": version, "mode": mode.value if mode else None}
    doc = api_client(ctx).post(_path(key), {k: v for k, v in body.items() if v is not None})
    _show(doc, f"created disk {doc['name']} on {doc['image']} v{doc['version']}", as_json=as_json)


@app.command("reset")
def reset_disk(
    ctx: typer.Context, key: KeyArg, yes: YesOpt = False, as_json: JsonOption = False
) -> None:
    """Throw away everything the machine wrote (back to its golden version)."""
    confirm_or_fail(f"Discard all writes of {key}'s disk?", yes=yes)
    doc = api_client(ctx).post(_path(key, "reset"))
    _show(doc, f"reset disk {doc['name']} to {doc['image']} v{doc['version']}", as_json=as_json)


@app.command("commit")
def commit_disk(
    ctx: typer.Context,
    key: KeyArg,
    *,
    image: ImageOpt = None,
    note: Annotated[str, typer.Option("--note", "-n", help="Kept with the version.")] = "",
    keep_overlay: Annotated[
        bool, typer.Option("--keep-overlay", help="Leave the disk on its old version.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Make the machine's disk content its image's next version."""
    body = {"image": image, "note": note, "keep_overlay": keep_overlay}
    doc = api_client(ctx).post(_path(key, "commit"), body)
    version = doc["version"]
    message = f"committed {key}'s disk as {version['image']} v{version['version']}"
    _show(doc, message, as_json=as_json)


@app.command("rollback")
def rollback_disk(
    ctx: typer.Context,
    key: KeyArg,
    *,
    version: Annotated[
        int, typer.Option("--version", "-v", help="Version to go to.", show_default=False)
    ],
    image: ImageOpt = None,
    yes: YesOpt = False,
    as_json: JsonOption = False,
) -> None:
    """Put the machine's disk on another version; its current writes are discarded."""
    confirm_or_fail(f"Move {key}'s disk to version {version} and discard its writes?", yes=yes)
    doc = api_client(ctx).post(_path(key, "rollback"), {"version": version, "image": image})
    _show(doc, f"disk {doc['name']} is now on {doc['image']} v{doc['version']}", as_json=as_json)
