"""``diskless discovered ...``: unknown MACs that asked to boot, through the server's API.

Approving one makes it a machine (hostname ``pc-XXXXXX`` unless given); forgetting it drops it
from the list until it asks again.
"""

from __future__ import annotations

from typing import Annotated

import typer

from diskless.cli.client import api_client, api_path
from diskless.cli.image import say
from diskless.cli.output import JsonOption, emit, emit_one
from diskless.cli.targets import parse_target
from diskless.storage.disks import DiskMode

__all__ = ["app"]

app = typer.Typer(help="Unknown MACs waiting for approval.", no_args_is_help=True)

MacArg = Annotated[str, typer.Argument(help="The discovered MAC address.", show_default=False)]


def _path(mac: str, *rest: str) -> str:
    return api_path("discovered", mac, *rest)


@app.command("list")
def list_discovered(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Unknown MACs that asked to boot, most recent first."""
    rows = api_client(ctx).get("/discovered")
    emit(
        rows,
        ["mac", "last_seen", "count", "last_arch", "last_vendor_class", "last_ip", "first_seen"],
        as_json=as_json,
        title="Discovered",
    )


@app.command("approve")
def approve(
    ctx: typer.Context,
    mac: MacArg,
    *,
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname", help="Default: pc- and the MAC's last 6 digits.", show_default=False
        ),
    ] = None,
    group: Annotated[str | None, typer.Option("--group", "-g", show_default=False)] = None,
    ip: Annotated[str | None, typer.Option("--ip", show_default=False)] = None,
    image: Annotated[str | None, typer.Option("--image", "-i", show_default=False)] = None,
    version: Annotated[int | None, typer.Option("--version", "-v", show_default=False)] = None,
    mode: Annotated[DiskMode | None, typer.Option("--mode", "-m", show_default=False)] = None,
    boot: Annotated[
        str | None, typer.Option("--boot", "-b", help="A kind or JSON.", show_default=False)
    ] = None,
    notes: Annotated[str | None, typer.Option("--notes", show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Make a discovered MAC a machine."""
    given = {
        "hostname": hostname,
        "group": group,
        "ip": ip,
        "image": image,
        "image_version": version,
        "disk_mode": mode.value if mode else None,
        "boot": parse_target(boot) if boot is not None else None,
        "notes": notes,
    }
    body = {name: value for name, value in given.items() if value is not None}
    record = api_client(ctx).post(_path(mac, "approve"), body)
    if as_json:
        emit_one(record, as_json=True)
    else:
        say(f"approved {record['mac']} as machine {record['hostname']}")


@app.command("forget")
def forget(ctx: typer.Context, mac: MacArg) -> None:
    """Drop a MAC from the discovered list (it comes back if it asks to boot again)."""
    api_client(ctx).delete(_path(mac))
    say(f"forgot {mac}")
