"""``diskless disk ...``: per-machine copy-on-write disks over golden image versions.

Thin commands over :class:`~diskless.storage.disks.DiskManager`. Commands that throw away a
client's writes (``reset``, ``rollback``, ``delete``) ask first, or need ``--yes`` when no one is
at the terminal. A disk that is being served is refused with a "busy" error, never waited for.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from diskless.cli.image import for_people, library, say, version_row
from diskless.cli.output import JsonOption, emit, emit_one, human_size
from diskless.cli.progress import confirm_or_fail, progress_bar
from diskless.errors import DisklessError
from diskless.storage.disks import DiskInfo, DiskMode, DiskRecord

__all__ = ["app"]

app = typer.Typer(help="Per-machine copy-on-write disks.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Disk name, e.g. pc01.", show_default=False)]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ImageOpt = Annotated[
    str | None,
    typer.Option("--image", "-i", help="Image name (default: the disk's own).", show_default=False),
]


def _record_doc(record: DiskRecord) -> dict[str, Any]:
    doc = record.to_json()
    del doc["schema"]
    return doc


def _info_doc(info: DiskInfo) -> dict[str, Any]:
    return info.to_json()


@app.command("create")
def create_disk(
    ctx: typer.Context,
    name: NameArg,
    *,
    image: Annotated[
        str, typer.Option("--image", "-i", help="Golden image to start from.", show_default=False)
    ],
    version: Annotated[
        int | None,
        typer.Option(
            "--version", "-v", help="Image version (default: latest).", show_default=False
        ),
    ] = None,
    mode: Annotated[
        DiskMode, typer.Option("--mode", "-m", help="What happens to writes across boots.")
    ] = DiskMode.PERSISTENT,
    as_json: JsonOption = False,
) -> None:
    """Create disk NAME: an empty overlay over IMAGE (latest version unless --version)."""
    record = library(ctx).disks.create(name, image, version, mode=mode)
    if as_json:
        emit_one(_record_doc(record), as_json=True)
    else:
        say(f"created disk {name} on {record.image} v{record.version} ({record.mode.value})")


@app.command("list")
def list_disks(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List disks with their image version, mode and space used by their writes."""
    disks = library(ctx).disks
    rows = []
    for name in disks.names():
        try:
            info = disks.info(name)
        except DisklessError:  # one broken disk must not hide the others
            rows.append({"name": name, "image": "?", "status": "unreadable"})
            continue
        rows.append(_info_doc(info))
    emit(
        rows if as_json else [for_people(row) for row in rows],
        ["name", "image", "version", "mode", "allocated_bytes", "virtual_size", "updated"],
        as_json=as_json,
        title="Disks",
    )


@app.command("info")
def disk_info(ctx: typer.Context, name: NameArg, as_json: JsonOption = False) -> None:
    """Show disk NAME: its image version, mode, files and allocated bytes."""
    doc = _info_doc(library(ctx).disks.info(name))
    if not as_json:
        doc["allocated_bytes"] = (
            f"{human_size(doc['allocated_bytes'])} ({doc['allocated_bytes']} B)"
        )
        doc["virtual_size"] = f"{human_size(doc['virtual_size'])} ({doc['virtual_size']} B)"
    emit_one(doc, as_json=as_json, title=f"Disk {name}")


@app.command("reset")
def reset_disk(
    ctx: typer.Context, name: NameArg, yes: YesOpt = False, as_json: JsonOption = False
) -> None:
    """Discard every write of disk NAME (back to its golden version)."""
    disks = library(ctx).disks
    record = disks.get(name)
    confirm_or_fail(f"Discard all writes of disk {name}?", yes=yes)
    record = disks.reset(name)
    if as_json:
        emit_one(_record_doc(record), as_json=True)
    else:
        say(f"reset disk {name} to {record.image} v{record.version}")


@app.command("delete")
def delete_disk(
    ctx: typer.Context, name: NameArg, yes: YesOpt = False, as_json: JsonOption = False
) -> None:
    """Delete disk NAME and all its writes."""
    disks = library(ctx).disks
    disks.get(name)
    confirm_or_fail(f"Delete disk {name} and all its writes?", yes=yes)
    record = disks.delete(name)
    if as_json:
        emit_one(_record_doc(record), as_json=True)
    else:
        say(f"deleted disk {name}")


@app.command("set-mode")
def set_mode(
    ctx: typer.Context,
    name: NameArg,
    mode: Annotated[DiskMode, typer.Argument(help="persistent or reset-on-boot.")],
    as_json: JsonOption = False,
) -> None:
    """Make disk NAME keep its writes (persistent) or lose them at every boot (reset-on-boot)."""
    record = library(ctx).disks.set_mode(name, mode)
    if as_json:
        emit_one(_record_doc(record), as_json=True)
    else:
        say(f"disk {name} is now {record.mode.value}")


@app.command("rollback")
def rollback_disk(
    ctx: typer.Context,
    name: NameArg,
    *,
    version: Annotated[
        int, typer.Option("--version", "-v", help="Version to go to.", show_default=False)
    ],
    image: ImageOpt = None,
    yes: YesOpt = False,
    as_json: JsonOption = False,
) -> None:
    """Put disk NAME on another version of its image; its current writes are discarded."""
    lib = library(ctx)
    record = lib.disks.get(name)
    target = lib.catalog.version(image or record.image, version)
    confirm_or_fail(
        f"Move disk {name} from {record.image} v{record.version} to {target.label} "
        "and discard all its writes?",
        yes=yes,
    )
    record = lib.disks.rollback(name, version, image=image)
    if as_json:
        emit_one(_record_doc(record), as_json=True)
    else:
        say(f"disk {name} is now on {record.image} v{record.version} (writes discarded)")


@app.command("commit")
def commit_disk(
    ctx: typer.Context,
    name: NameArg,
    *,
    image: ImageOpt = None,
    note: Annotated[
        str, typer.Option("--note", "-n", help="Free text kept with the version.")
    ] = "",
    keep_overlay: Annotated[
        bool,
        typer.Option(
            "--keep-overlay",
            help="Leave the disk on its old version with its writes, instead of moving it to "
            "the new version with an empty overlay.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Turn disk NAME's content into a new golden version (old versions stay untouched)."""
    disks = library(ctx).disks
    with progress_bar() as bar:
        result = disks.commit(
            name,
            image=image,
            note=note,
            keep_overlay=keep_overlay,
            progress=bar.callback(f"Committing {name}"),
        )
    if as_json:
        emit_one(
            {"version": version_row(result.version), "disk": _record_doc(result.disk)},
            as_json=True,
        )
    else:
        say(
            f"committed disk {name} as {result.version.label} "
            f"({human_size(result.version.size)}, {result.version.digest})"
        )
        if not keep_overlay:
            say(f"disk {name} is now on {result.disk.image} v{result.disk.version}", "default")
