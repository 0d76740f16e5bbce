"""``diskless image ...``: golden images and their immutable, content-addressed versions.

Thin commands over :class:`~diskless.storage.library.ImageLibrary`: each builds the library from
the invocation's settings, calls one operation and prints the result as a table (or ``--json``).
Long operations draw a progress bar on stderr, and only when stderr is a terminal, so JSON on
stdout stays clean for scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from diskless.cli.output import JsonOption, emit, emit_one, fail, get_settings, human_size
from diskless.cli.progress import confirm_or_fail, progress_bar
from diskless.storage.catalog import ImageVersion
from diskless.storage.library import ImageLibrary

__all__ = ["app", "for_people", "library", "say", "version_row"]

app = typer.Typer(help="Golden images and their immutable versions.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Image name, e.g. win11.", show_default=False)]
VersionOpt = Annotated[
    int | None, typer.Option("--version", "-v", help="One version only.", show_default=False)
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def library(ctx: typer.Context) -> ImageLibrary:
    """The image library of this invocation's data directory."""
    return ImageLibrary.from_settings(get_settings(ctx))


def version_row(version: ImageVersion, users: list[str] | None = None) -> dict[str, Any]:
    """One version as a JSON object: every field, plus the disks using it when given."""
    row: dict[str, Any] = {"image": version.image, **version.to_json()}
    if users is not None:
        row["disks"] = users
    return row


def for_people(row: dict[str, Any]) -> dict[str, Any]:
    """A JSON row made readable for a table: sizes in binary units, digests shortened."""
    shown = dict(row)
    for key in ("size", "virtual_size", "allocated_bytes"):
        if isinstance(shown.get(key), int):
            shown[key] = human_size(shown[key])
    if isinstance(shown.get("digest"), str):
        shown["digest"] = shown["digest"].removeprefix("sha256:")[:12]
    return shown


def say(message: str, style: str = "green") -> None:
    """A one-line human confirmation on stdout (soft-wrapped so digests stay copyable)."""
    Console(highlight=False, soft_wrap=True).print(Text(message, style=style))


@app.command("import")
def import_image(
    ctx: typer.Context,
    name: NameArg,
    source: Annotated[
        Path,
        typer.Argument(
            help="Disk image to import: raw, qcow2, VHD, VHDX, VMDK or VDI.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ],
    *,
    note: Annotated[
        str, typer.Option("--note", "-n", help="Free text kept with the version.")
    ] = "",
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="Source format (raw, qcow2, vhd, vhdx, vmdk, vdi); probed when omitted.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Import a disk image as the next version of NAME (created if new)."""
    lib = library(ctx)
    labels = {"convert": f"Converting {source.name}", "hash": "Hashing (sha256)"}
    with progress_bar() as bar:
        version = lib.import_image(
            name, source, fmt=fmt, note=note, progress=bar.phase_callback(labels)
        )
    if as_json:
        emit_one(version_row(version), as_json=True)
    else:
        say(f"imported {version.label} ({human_size(version.size)}, {version.digest})")


@app.command("list")
def list_images(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List images with their latest version and the disks that use them."""
    lib = library(ctx)
    disks = lib.disks.records()
    rows: list[dict[str, Any]] = []
    for record in lib.catalog.records():
        latest = record.latest
        rows.append(
            {
                "name": record.name,
                "versions": [v.version for v in record.versions],
                "latest": latest.version,
                "digest": str(latest.digest),
                "size": latest.size,
                "created": latest.created,
                "disks": sorted(d.name for d in disks if d.image == record.name),
            }
        )
    if as_json:
        emit(rows, [], as_json=True)
        return
    table_rows = [
        for_people({**row, "versions": len(row["versions"]), "disks": len(row["disks"])})
        for row in rows
    ]
    emit(
        table_rows,
        ["name", "versions", "latest", "size", "created", "digest", "disks"],
        as_json=False,
        title="Images",
    )


@app.command("versions")
def list_versions(ctx: typer.Context, name: NameArg, as_json: JsonOption = False) -> None:
    """List the versions of NAME, oldest first."""
    lib = library(ctx)
    record = lib.catalog.get(name)
    disks = lib.disks.users(name)
    rows = []
    for version in record.versions:
        users = sorted(d.name for d in disks if d.version == version.version)
        row = version_row(version, users)
        if version.parent_version is not None:
            row["parent"] = f"{version.parent_image} v{version.parent_version}"
        rows.append(row)
    emit(
        rows if as_json else [for_people(row) for row in rows],
        ["version", "size", "created", "digest", "source", "parent", "note", "disks"],
        as_json=as_json,
        title=f"Versions of {name}",
    )


@app.command("delete")
def delete_image(
    ctx: typer.Context,
    name: NameArg,
    version: VersionOpt = None,
    yes: YesOpt = False,
    as_json: JsonOption = False,
) -> None:
    """Delete one version of NAME, or the whole image; refused while a disk uses it."""
    lib = library(ctx)
    what = f"{name} v{version}" if version is not None else f"image {name} and all its versions"
    # Look it up first: "no such version" beats a confirmation prompt for nothing.
    if version is not None:
        lib.catalog.version(name, version)
    else:
        lib.catalog.get(name)
    confirm_or_fail(f"Delete {what}?", yes=yes)
    if version is not None:
        removed = [lib.delete_version(name, version)]
    else:
        removed = list(lib.delete_image(name).versions)
    if as_json:
        emit([version_row(v) for v in removed], [], as_json=True)
    else:
        say(f"deleted {what}")


@app.command("verify")
def verify_image(
    ctx: typer.Context,
    name: NameArg,
    version: VersionOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Rehash the stored versions of NAME and compare with their digests; exit 1 on a mismatch."""
    lib = library(ctx)
    with progress_bar() as bar:
        results = lib.verify(name, version, progress=bar.phase_callback({}))
    rows = [
        {
            **version_row(result.version),
            "status": "missing" if result.missing else ("ok" if result.ok else "CORRUPT"),
        }
        for result in results
    ]
    emit(
        rows if as_json else [for_people(row) for row in rows],
        ["version", "digest", "size", "status"],
        as_json=as_json,
        title=f"Verification of {name}",
    )
    bad = [r for r in results if not r.ok]
    if bad:
        fail(
            f"{len(bad)} version(s) of {name} do not match their digest: "
            + ", ".join(f"v{r.version.version}" for r in bad)
        )


@app.command("gc")
def collect_garbage(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Remove leftovers of interrupted imports, commits and deletes, and unreferenced blobs."""
    report = library(ctx).gc()
    doc = {
        "staging_files": [str(p) for p in report.staging_files],
        "disk_leftovers": [str(p) for p in report.disk_leftovers],
        "orphan_blobs": [str(d) for d in report.orphan_blobs],
    }
    if as_json:
        emit_one(doc, as_json=True)
    else:
        total = sum(len(v) for v in doc.values())
        say(f"removed {total} leftover(s)")
        for kind, items in doc.items():
            for item in items:
                say(f"  {kind.replace('_', ' ')}: {item}", "default")
