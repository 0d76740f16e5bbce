"""``diskless machine ...``: the inventory's machines, through the running server's admin API.

Each command is one or two API requests (:mod:`diskless.cli.client`); the server validates and
audits. A machine is named by MAC (any spelling) or hostname. The machine's disk commands live
in :mod:`diskless.cli.machine_disk` (``diskless machine disk ...``); the local ``diskless disk``
commands work on the data directory directly, without the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from diskless.cli import machine_disk
from diskless.cli.client import ApiError, api_client, api_path
from diskless.cli.image import say
from diskless.cli.output import JsonOption, emit, emit_one
from diskless.cli.progress import confirm_or_fail
from diskless.cli.targets import (
    CmdlineOpt,
    DiskOpt,
    FolderOpt,
    InitrdOpt,
    KernelOpt,
    UrlOpt,
    request_fields,
    target_from_options,
)
from diskless.errors import ConfigError, DisklessError
from diskless.storage.disks import DiskMode

__all__ = ["app", "machine_path", "machine_row"]

app = typer.Typer(help="Machines in the inventory, through the server's API.", no_args_is_help=True)
app.add_typer(machine_disk.app, name="disk")

KeyArg = Annotated[str, typer.Argument(help="MAC address or hostname.", show_default=False)]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
_HIDE: dict[str, Any] = {"show_default": False}
IpOpt = Annotated[str | None, typer.Option("--ip", help="Reserved IPv4 address.", **_HIDE)]
GroupOpt = Annotated[str | None, typer.Option("--group", "-g", help="Group to inherit.", **_HIDE)]
ImageOpt = Annotated[str | None, typer.Option("--image", "-i", help="Golden image.", **_HIDE)]
VersionOpt = Annotated[
    int | None, typer.Option("--version", "-v", help="Image version (default: latest).", **_HIDE)
]
ModeOpt = Annotated[
    DiskMode | None, typer.Option("--mode", "-m", help="persistent or reset-on-boot.", **_HIDE)
]
BootOpt = Annotated[
    str | None,
    typer.Option("--boot", "-b", help="Boot target: a kind (local, ...) or JSON.", **_HIDE),
]
InitiatorOpt = Annotated[
    str | None, typer.Option("--initiator-name", help="iSCSI initiator name.", **_HIDE)
]
ChapOpt = Annotated[
    str | None, typer.Option("--chap-secret", help="CHAP secret (12-255 chars).", **_HIDE)
]
NotesOpt = Annotated[str | None, typer.Option("--notes", help="Free text.", **_HIDE)]

# What fits a terminal; --json has every field.
_TABLE = ["hostname", "mac", "ip", "group", "image", "disk_mode", "boot", "last_seen"]


def machine_path(key: str, *rest: str) -> str:
    """``/machines/KEY/...``, KEY escaped."""
    return api_path("machines", key, *rest)


def _kind(target: object) -> object:
    if isinstance(target, dict):
        return target.get("kind")
    return target


def machine_row(record: dict[str, Any]) -> dict[str, Any]:
    """A machine record made readable for a table: boot targets by kind."""
    row = dict(record)
    row["boot"] = _kind(row.get("boot"))
    row["next_boot_once"] = _kind(row.get("next_boot_once"))
    return row


def _say_or_json(record: dict[str, Any], message: str, *, as_json: bool) -> None:
    if as_json:
        emit_one(record, as_json=True)
    else:
        say(message)


@app.command("list")
def list_machines(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the machines the server knows."""
    records = api_client(ctx).get("/machines")
    rows = records if as_json else [machine_row(record) for record in records]
    emit(rows, _TABLE, as_json=as_json, title="Machines")


@app.command("show")
def show_machine(ctx: typer.Context, key: KeyArg, as_json: JsonOption = False) -> None:
    """Show one machine: its fields as stored (blank ones come from its group)."""
    record = api_client(ctx).get(machine_path(key))
    emit_one(record, as_json=as_json, title=f"Machine {record['hostname']}")


@app.command("add")
def add_machine(
    ctx: typer.Context,
    mac: Annotated[str, typer.Argument(help="MAC address, e.g. 52:54:00:18:00:10.")],
    hostname: Annotated[str, typer.Argument(help="Hostname (also its disk's name).")],
    *,
    ip: IpOpt = None,
    group: GroupOpt = None,
    image: ImageOpt = None,
    version: VersionOpt = None,
    mode: ModeOpt = None,
    boot: BootOpt = None,
    initiator_name: InitiatorOpt = None,
    chap_secret: ChapOpt = None,
    notes: NotesOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Add a machine; fields left out come from its group."""
    body = {"mac": mac, "hostname": hostname}
    body |= request_fields(
        {
            "ip": ip,
            "group": group,
            "image": image,
            "image_version": version,
            "disk_mode": mode,
            "boot": boot,
            "initiator_name": initiator_name,
            "chap_secret": chap_secret,
            "notes": notes,
        }
    )
    record = api_client(ctx).post("/machines", body)
    _say_or_json(record, f"added machine {record['hostname']} ({record['mac']})", as_json=as_json)


_CLEARABLE = (
    "ip",
    "group",
    "image",
    "image_version",
    "disk_mode",
    "boot",
    "next_boot_once",
    "initiator_name",
    "chap_secret",
)


@app.command("set")
def set_machine(
    ctx: typer.Context,
    key: KeyArg,
    *,
    mac: Annotated[str | None, typer.Option("--mac", help="New MAC address.", **_HIDE)] = None,
    hostname: Annotated[
        str | None, typer.Option("--hostname", help="New hostname.", **_HIDE)
    ] = None,
    ip: IpOpt = None,
    group: GroupOpt = None,
    image: ImageOpt = None,
    version: VersionOpt = None,
    mode: ModeOpt = None,
    boot: BootOpt = None,
    initiator_name: InitiatorOpt = None,
    chap_secret: ChapOpt = None,
    notes: NotesOpt = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            help="Clear a field, so the group's value applies (repeatable): "
            f"{', '.join(_CLEARABLE)}.",
            **_HIDE,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change the fields given; the others stay as they are."""
    body = request_fields(
        {
            "mac": mac,
            "hostname": hostname,
            "ip": ip,
            "group": group,
            "image": image,
            "image_version": version,
            "disk_mode": mode,
            "boot": boot,
            "initiator_name": initiator_name,
            "chap_secret": chap_secret,
            "notes": notes,
        },
        clear=clear or (),
        clearable=_CLEARABLE,
    )
    if not body:
        raise DisklessError("nothing to change: give at least one option (see --help)")
    record = api_client(ctx).patch(machine_path(key), body)
    _say_or_json(record, f"updated machine {record['hostname']}", as_json=as_json)


@app.command("remove")
def remove_machine(
    ctx: typer.Context, key: KeyArg, yes: YesOpt = False, as_json: JsonOption = False
) -> None:
    """Remove a machine from the inventory (its disk stays; `diskless disk delete` removes it)."""
    client = api_client(ctx)
    record = client.get(machine_path(key))
    confirm_or_fail(f"Remove machine {record['hostname']} ({record['mac']})?", yes=yes)
    record = client.delete(machine_path(key))
    _say_or_json(record, f"removed machine {record['hostname']}", as_json=as_json)


@app.command("import")
def import_machines(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="CSV file, first row the column names.")],
    on_conflict: Annotated[
        str,
        typer.Option("--on-conflict", help="A MAC already known: error, skip or update.", **_HIDE),
    ] = "error",
    as_json: JsonOption = False,
) -> None:
    """Add machines from a CSV file in one transaction: all of them, or none.

    Columns: mac,hostname,ip,group,image,version,mode,boot,initiator_name,chap_secret,notes
    (mac and hostname required, any order; empty cells mean "from the group").
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: CSV file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        result = api_client(ctx).post("/machines/import", {"csv": text, "on_conflict": on_conflict})
    except ApiError as exc:
        # The server names the CSV "csv"; the operator knows it by its file name.
        message = str(exc)
        if message.startswith("csv: "):
            message = f"{path}: {message.removeprefix('csv: ')}"
        raise ApiError(message, exc.status) from None
    if as_json:
        emit_one(result, as_json=True)
        return
    say(
        f"{path}: {len(result['created'])} created, {len(result['updated'])} updated, "
        f"{len(result['skipped'])} skipped"
    )
    if result["groups_created"]:
        say(f"new groups: {', '.join(result['groups_created'])}", "default")


@app.command("boot")
def set_boot(
    ctx: typer.Context,
    key: KeyArg,
    target: Annotated[
        str | None,
        typer.Argument(
            help="sanboot, local, netbootxyz, linux, winpe, chain, menu, or a JSON object.",
            show_default=False,
        ),
    ] = None,
    *,
    kernel: KernelOpt = None,
    initrd: InitrdOpt = None,
    cmdline: CmdlineOpt = None,
    folder: FolderOpt = None,
    url: UrlOpt = None,
    disk: DiskOpt = None,
    inherit: Annotated[
        bool, typer.Option("--inherit", help="Clear it: boot what the group boots.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Set what the machine boots, e.g. `machine boot pc01 linux --kernel k --initrd i`."""
    if inherit == (target is not None):
        raise DisklessError("give a boot TARGET, or --inherit to use the group's")
    body: dict[str, Any] | None = None
    if target is not None:
        body = target_from_options(
            target,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            folder=folder,
            url=url,
            disk=disk,
        )
    record = api_client(ctx).put(machine_path(key, "boot"), {"target": body})
    shown = _kind(record["boot"]) or "the group's target"
    _say_or_json(record, f"machine {record['hostname']} boots {shown}", as_json=as_json)


@app.command("image")
def set_image(
    ctx: typer.Context,
    key: KeyArg,
    image: Annotated[str, typer.Argument(help="Golden image name.", show_default=False)],
    *,
    version: VersionOpt = None,
    mode: ModeOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Assign the machine's golden image (latest version unless --version) and disk mode."""
    body = {"image": image, "version": version, "mode": mode.value if mode else None}
    record = api_client(ctx).put(machine_path(key, "image"), body)
    pinned = f" v{record['image_version']}" if record["image_version"] else " (latest)"
    _say_or_json(
        record, f"machine {record['hostname']} uses {record['image']}{pinned}", as_json=as_json
    )


@app.command("once")
def next_boot_once(
    ctx: typer.Context,
    key: KeyArg,
    target: Annotated[
        str | None,
        typer.Argument(help="Target booted once: a kind or a JSON object.", show_default=False),
    ] = None,
    *,
    kernel: KernelOpt = None,
    initrd: InitrdOpt = None,
    cmdline: CmdlineOpt = None,
    folder: FolderOpt = None,
    url: UrlOpt = None,
    disk: DiskOpt = None,
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel a pending one.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Boot TARGET at the machine's next boot only, then its usual target again."""
    if cancel == (target is not None):
        raise DisklessError("give a boot TARGET, or --cancel to drop the pending one")
    client = api_client(ctx)
    if cancel:
        record = client.delete(machine_path(key, "next-boot-once"))
        message = f"machine {record['hostname']}: next-boot-once cancelled"
        _say_or_json(record, message, as_json=as_json)
        return
    assert target is not None
    body = target_from_options(
        target, kernel=kernel, initrd=initrd, cmdline=cmdline, folder=folder, url=url, disk=disk
    )
    record = client.put(machine_path(key, "next-boot-once"), {"target": body})
    _say_or_json(
        record,
        f"machine {record['hostname']} boots {body['kind']} once, at its next boot",
        as_json=as_json,
    )


@app.command("events")
def machine_events(
    ctx: typer.Context,
    key: KeyArg,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """The machine's stored boot events, oldest first: its boot timeline."""
    events = api_client(ctx).get(machine_path(key, "boot-events"), limit=limit)
    emit(events, ["at", "stage", "detail"], as_json=as_json, title=f"Boot events of {key}")


@app.command("wake")
def wake_machine(
    ctx: typer.Context,
    key: KeyArg,
    interface: Annotated[
        str | None,
        typer.Option(
            "--interface", help="Server interface to send from (default: configured).", **_HIDE
        ),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option("--password", help="SecureOn password (6 bytes as a MAC).", **_HIDE),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Wake the machine: the server broadcasts a magic packet out of one interface."""
    body = {"interface": interface, "password": password}
    sent = api_client(ctx).post(machine_path(key, "wake"), body)
    _say_or_json(
        sent,
        f"sent a Wake-on-LAN packet for {sent['hostname']} ({sent['mac']}) out of "
        f"{sent['interface']} to {sent['address']}:{sent['port']}",
        as_json=as_json,
    )
