"""``diskless export``: serve one disk image over iSCSI until interrupted.

A standalone target for trying a disk with any initiator (iPXE ``sanboot``, ``iscsiadm``, Windows,
``qemu-img``, libiscsi's tools) and the contract the project's interop tests run against.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from diskless.cli.output import get_state
from diskless.errors import ConfigError
from diskless.iscsi.chap import ChapCredentials
from diskless.iscsi.discovery import TargetAccess
from diskless.iscsi.endpoint import IscsiPortal
from diskless.iscsi.target import TargetRegistry, disk_target
from diskless.observe.log import configure_logging, get_logger
from diskless.storage.images import open_image

__all__ = ["export", "serve_targets"]

_log = get_logger(__name__)
DEFAULT_PORT = 3260


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``[V6]:PORT`` or a bare IPv6 address → (host, port)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") or str(DEFAULT_PORT)
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, str(DEFAULT_PORT)
    try:
        number = int(port)
    except ValueError as exc:
        raise ConfigError(f"--listen {value!r}: port must be a number") from exc
    if not 0 <= number <= 65535:
        raise ConfigError(f"--listen {value!r}: port out of range")
    return host or "0.0.0.0", number


def export(  # noqa: PLR0917 -- typer maps each parameter to a CLI option
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="Raw or qcow2 image (a qcow2 overlay brings its backing chain).")
    ],
    listen: Annotated[
        str, typer.Option(help="Address to listen on, HOST:PORT.")
    ] = f"0.0.0.0:{DEFAULT_PORT}",
    target_name: Annotated[
        str, typer.Option(help="iSCSI qualified name of the target.")
    ] = "iqn.2026-11.org.diskless:export",
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse writes (DATA PROTECT).")
    ] = False,
    chap_user: Annotated[str | None, typer.Option(help="Require CHAP with this user name.")] = None,
    chap_secret: Annotated[str | None, typer.Option(help="The initiator's CHAP secret.")] = None,
    mutual_chap_user: Annotated[
        str | None, typer.Option(help="Target name for mutual CHAP.")
    ] = None,
    mutual_chap_secret: Annotated[
        str | None, typer.Option(help="Target secret for mutual CHAP.")
    ] = None,
    allow_initiator: Annotated[
        list[str] | None,
        typer.Option(help="Initiator name allowed to log in (repeatable; default: any)."),
    ] = None,
) -> None:
    """Serve one image as LUN 0 of an iSCSI target until interrupted."""
    settings = get_state(ctx).settings
    configure_logging(settings.logging)
    host, port = parse_listen(listen)
    if (chap_user is None) != (chap_secret is None):
        raise ConfigError("--chap-user and --chap-secret go together")
    if (mutual_chap_user is None) != (mutual_chap_secret is None):
        raise ConfigError("--mutual-chap-user and --mutual-chap-secret go together")
    chap = ChapCredentials(chap_user, chap_secret.encode()) if chap_user and chap_secret else None
    mutual = (
        ChapCredentials(mutual_chap_user, mutual_chap_secret.encode())
        if mutual_chap_user and mutual_chap_secret
        else None
    )
    access = TargetAccess(
        name=target_name,
        allowed_initiators=frozenset(allow_initiator or ()),
        chap=chap,
        mutual_chap=mutual,
    )
    device = open_image(path, read_only=read_only)
    try:
        target = disk_target(device, access, identity_seed=str(path.resolve()), read_only=read_only)
        asyncio.run(serve_targets(TargetRegistry([target]), host, port))
    finally:
        device.close()


async def serve_targets(targets: TargetRegistry, host: str, port: int) -> None:
    """Serve ``targets`` on ``host:port`` until SIGINT or SIGTERM, then close every session."""
    portal = IscsiPortal(targets)
    addresses = await portal.start(host, port)
    for target in targets:
        _log.info(
            "exporting",
            target=target.name,
            lun=0,
            size=target.logical_unit.device.size,
            listen=[f"{a}:{p}" for a, p in addresses],
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    serving = asyncio.create_task(portal.serve_forever())
    try:
        await stop.wait()
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await portal.close()
        _log.info("export stopped")
