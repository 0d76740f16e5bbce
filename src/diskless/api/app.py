"""The FastAPI application: routes, tags and error mapping of the admin REST API.

Every route runs the synchronous inventory and storage operations in a worker thread
(:func:`asyncio.to_thread`), so the event loop, which also serves DHCP, TFTP, HTTP and iSCSI,
never waits on the database or on a disk. Changes are audited under the caller's token name
(``api:<name>``). Read-only tokens see CHAP secrets masked.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from diskless import __version__
from diskless.boot.events import BootEvent
from diskless.boot.machines import format_mac, parse_mac
from diskless.inventory.importer import specs_from_csv
from diskless.inventory.records import (
    AuditEntry,
    DiscoveredMac,
    GroupPatch,
    GroupRecord,
    GroupSpec,
    MachinePatch,
    MachineRecord,
    MachineSpec,
    NewToken,
    TokenInfo,
)
from diskless.inventory.snapshot import DiskAssignment, InventorySnapshot
from diskless.storage.disks import DiskMode
from diskless.wol import parse_secureon, resolve_interface
from diskless.wol.endpoint import send_magic_packet

from .auth import Caller, CallerDep, authorize
from .console import console
from .context import ApiContext, context
from .errors import install_error_handlers, invalid
from .models import (
    ApproveBody,
    BootBody,
    CommitBody,
    CommitOut,
    DiskCreateBody,
    DiskOut,
    HealthOut,
    ImageBody,
    ImageOut,
    ImportBody,
    ImportOut,
    ModeBody,
    RollbackBody,
    SettingBody,
    TokenBody,
    VersionOut,
    WakeBody,
    WakeOut,
)

__all__ = ["build_app"]

Ctx = Annotated[ApiContext, Depends(context)]
Limit = Annotated[int, Query(ge=1, le=10_000)]

TAGS = [
    {"name": "machines", "description": "Known machines: boot target, image, disk mode"},
    {"name": "wake", "description": "Wake-on-LAN: a magic packet out of one named interface"},
    {"name": "disks", "description": "A machine's copy-on-write disk: reset, commit, rollback"},
    {"name": "discovered", "description": "Unknown MACs that asked to boot"},
    {"name": "groups", "description": "Profiles whose settings machines inherit"},
    {"name": "images", "description": "Golden images and their versions"},
    {"name": "events", "description": "Boot events: stored per MAC, and live (SSE)"},
    {"name": "settings", "description": "Run-time settings stored in the inventory"},
    {"name": "audit", "description": "Who changed what"},
    {"name": "tokens", "description": "API tokens (stored hashed)"},
    {"name": "server", "description": "Health and Prometheus metrics"},
]

_MASK = "********"
_SNAPSHOT_WAIT = 5.0


class BootEventOut(BaseModel):
    mac: str
    stage: str
    at: float
    detail: str
    known: bool

    @classmethod
    def of(cls, event: BootEvent) -> BootEventOut:
        return cls.model_validate(event.to_json())


class BootStatusOut(BaseModel):
    latest: list[BootEventOut]
    """The latest event of each MAC seen since the server started, oldest first."""
    recent: list[BootEventOut]
    """The most recent events of all MACs, oldest first."""


def _view(record: MachineRecord, caller: Caller) -> MachineRecord:
    if caller.read_only and record.chap_secret:
        return record.model_copy(update={"chap_secret": _MASK})
    return record


def _mac_param(value: str, location: str = "path") -> bytes:
    try:
        return parse_mac(value)
    except ValueError:
        raise invalid(location, "mac", "must be a MAC address such as 52:54:00:18:00:10") from None


# -- machines -----------------------------------------------------------------------------------

machines = APIRouter(prefix="/machines", tags=["machines"])


@machines.get("", summary="List machines")
async def list_machines(ctx: Ctx, caller: CallerDep) -> list[MachineRecord]:
    records = await asyncio.to_thread(ctx.inventory.list_machines)
    return [_view(record, caller) for record in records]


@machines.post("", status_code=201, summary="Add a machine")
async def create_machine(ctx: Ctx, caller: CallerDep, spec: MachineSpec) -> MachineRecord:
    record = await asyncio.to_thread(ctx.inventory.create_machine, spec, actor=caller.actor)
    return _view(record, caller)


@machines.post("/import", summary="Add machines from CSV text or a list, all or none")
async def import_machines(ctx: Ctx, caller: CallerDep, body: ImportBody) -> ImportOut:
    def run() -> ImportOut:
        # A bad CSV cell is a 422 whose field names the line and column ("csv: line 3.mac").
        specs = specs_from_csv(body.csv, source="csv") if body.csv is not None else body.machines
        assert specs is not None  # ImportBody holds exactly one of the two
        result = ctx.inventory.import_machines(
            specs, actor=caller.actor, on_conflict=body.on_conflict
        )
        return ImportOut(
            created=result.created,
            updated=result.updated,
            skipped=result.skipped,
            groups_created=result.groups_created,
        )

    return await asyncio.to_thread(run)


@machines.get("/{key}", summary="One machine, by MAC or hostname")
async def get_machine(ctx: Ctx, caller: CallerDep, key: str) -> MachineRecord:
    return _view(await asyncio.to_thread(ctx.inventory.get_machine, key), caller)


@machines.patch("/{key}", summary="Change the fields given (null clears a field)")
async def update_machine(
    ctx: Ctx, caller: CallerDep, key: str, patch: MachinePatch
) -> MachineRecord:
    record = await asyncio.to_thread(ctx.inventory.update_machine, key, patch, actor=caller.actor)
    return _view(record, caller)


@machines.delete("/{key}", summary="Remove a machine (its disk stays)")
async def delete_machine(ctx: Ctx, caller: CallerDep, key: str) -> MachineRecord:
    record = await asyncio.to_thread(ctx.inventory.delete_machine, key, actor=caller.actor)
    return _view(record, caller)


@machines.put("/{key}/image", summary="Assign the golden image, version and disk mode")
async def set_image(ctx: Ctx, caller: CallerDep, key: str, body: ImageBody) -> MachineRecord:
    record = await asyncio.to_thread(
        ctx.inventory.set_image,
        key,
        body.image,
        body.version,
        body.mode.value if body.mode is not None else None,
        actor=caller.actor,
    )
    return _view(record, caller)


@machines.put("/{key}/mode", summary="Set the disk mode (null: the group's)")
async def set_mode(ctx: Ctx, caller: CallerDep, key: str, body: ModeBody) -> MachineRecord:
    mode = body.mode.value if body.mode is not None else None
    record = await asyncio.to_thread(ctx.inventory.set_disk_mode, key, mode, actor=caller.actor)
    return _view(record, caller)


@machines.put("/{key}/boot", summary="Set the boot target (null: the group's)")
async def set_boot(ctx: Ctx, caller: CallerDep, key: str, body: BootBody) -> MachineRecord:
    record = await asyncio.to_thread(ctx.inventory.set_boot, key, body.target, actor=caller.actor)
    return _view(record, caller)


@machines.put("/{key}/next-boot-once", summary="Boot a target once, then the usual one")
async def set_next_boot_once(
    ctx: Ctx, caller: CallerDep, key: str, body: BootBody
) -> MachineRecord:
    record = await asyncio.to_thread(
        ctx.inventory.set_next_boot_once, key, body.target, actor=caller.actor
    )
    return _view(record, caller)


@machines.delete("/{key}/next-boot-once", summary="Cancel a pending next-boot-once")
async def cancel_next_boot_once(ctx: Ctx, caller: CallerDep, key: str) -> MachineRecord:
    record = await asyncio.to_thread(
        ctx.inventory.set_next_boot_once, key, None, actor=caller.actor
    )
    return _view(record, caller)


@machines.get("/{key}/boot-events", tags=["events"], summary="The machine's stored boot events")
async def machine_boot_events(
    ctx: Ctx, caller: CallerDep, key: str, limit: Limit = 100
) -> list[BootEventOut]:
    record = await asyncio.to_thread(ctx.inventory.get_machine, key)
    events = await asyncio.to_thread(ctx.inventory.boot_events, record.mac, limit=limit)
    return [BootEventOut.of(event) for event in events]


@machines.post("/{key}/wake", tags=["wake"], summary="Send the machine a Wake-on-LAN packet")
async def wake_machine(
    ctx: Ctx, caller: CallerDep, key: str, body: WakeBody | None = None
) -> WakeOut:
    body = body or WakeBody()
    record = await asyncio.to_thread(ctx.inventory.get_machine, key)
    run_time = await asyncio.to_thread(ctx.inventory.settings)
    group_interfaces = run_time.get("wake.group_interfaces")
    interface, chosen_by = resolve_interface(
        explicit=body.interface,
        group=record.group,
        group_interfaces=group_interfaces if isinstance(group_interfaces, dict) else {},
        default=ctx.wake_interface,
    )
    password = parse_secureon(body.password) if body.password is not None else b""
    sent = await asyncio.to_thread(
        send_magic_packet, record.mac_bytes, interface, password=password
    )
    out = WakeOut(
        mac=record.mac,
        hostname=record.hostname,
        interface=sent.interface,
        interface_from=chosen_by,
        address=sent.address,
        port=sent.port,
        bytes=sent.size,
    )
    await asyncio.to_thread(
        ctx.inventory.record_action,
        caller.actor,
        "machine.wake",
        record.mac,
        detail=out.model_dump(exclude={"mac", "hostname"}),
    )
    return out


# -- disks --------------------------------------------------------------------------------------

disks = APIRouter(prefix="/machines/{key}/disk", tags=["disks"])


async def _current_snapshot(ctx: ApiContext) -> InventorySnapshot:
    """The snapshot once the inventory service has loaded every change committed so far (it
    reloads on each local commit); the one it has after a few seconds otherwise."""
    serial = await asyncio.to_thread(ctx.inventory.serial)
    deadline = asyncio.get_running_loop().time() + _SNAPSHOT_WAIT
    while ctx.service.snapshot.serial < serial:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.02)
    return ctx.service.snapshot


async def _disk_of(ctx: ApiContext, key: str) -> tuple[str, DiskAssignment | None]:
    """The name of the disk the machine boots (its sanboot disk, else its hostname) and its
    resolved assignment, from a snapshot at least as new as the database: a change just made
    through the API (a new image, a new group) counts at once."""
    record = await asyncio.to_thread(ctx.inventory.get_machine, key)
    snapshot = await _current_snapshot(ctx)
    assignment = snapshot.disks.get(record.mac_bytes)
    return (assignment.disk if assignment is not None else record.hostname), assignment


async def _disk_out(ctx: ApiContext, name: str) -> DiskOut:
    return DiskOut.of(await asyncio.to_thread(ctx.library.disks.info, name))


@disks.get("", summary="The machine's disk: image, version, mode, overlay size")
async def disk_info(ctx: Ctx, caller: CallerDep, key: str) -> DiskOut:
    name, _ = await _disk_of(ctx, key)
    return await _disk_out(ctx, name)


@disks.post("", status_code=201, summary="Create the machine's disk from its image")
async def create_disk(
    ctx: Ctx, caller: CallerDep, key: str, body: DiskCreateBody | None = None
) -> DiskOut:
    name, assignment = await _disk_of(ctx, key)
    body = body or DiskCreateBody()
    image = body.image or (assignment.image if assignment is not None else None)
    if image is None:
        raise invalid("body", "image", "the machine has no image: give one or assign one")
    version = body.version
    if version is None and body.image is None and assignment is not None:
        version = assignment.version
    mode = body.mode or (assignment.mode if assignment is not None else DiskMode.PERSISTENT)
    await asyncio.to_thread(ctx.library.disks.create, name, image, version, mode=mode)
    return await _disk_out(ctx, name)


@disks.post("/reset", summary="Throw away everything the machine wrote")
async def reset_disk(ctx: Ctx, caller: CallerDep, key: str) -> DiskOut:
    name, _ = await _disk_of(ctx, key)
    async with ctx.release_disk(name):
        await asyncio.to_thread(ctx.library.disks.reset, name)
    return await _disk_out(ctx, name)


@disks.post("/commit", summary="Make the disk's content the image's next version")
async def commit_disk(ctx: Ctx, caller: CallerDep, key: str, body: CommitBody) -> CommitOut:
    name, _ = await _disk_of(ctx, key)
    async with ctx.release_disk(name):
        result = await asyncio.to_thread(
            ctx.library.disks.commit,
            name,
            image=body.image,
            note=body.note,
            keep_overlay=body.keep_overlay,
        )
    return CommitOut(version=VersionOut.of(result.version), disk=await _disk_out(ctx, name))


@disks.post("/rollback", summary="Put the disk on another version (its writes are discarded)")
async def rollback_disk(ctx: Ctx, caller: CallerDep, key: str, body: RollbackBody) -> DiskOut:
    name, _ = await _disk_of(ctx, key)
    async with ctx.release_disk(name):
        await asyncio.to_thread(ctx.library.disks.rollback, name, body.version, image=body.image)
    return await _disk_out(ctx, name)


# -- discovered MACs ----------------------------------------------------------------------------

discovered = APIRouter(prefix="/discovered", tags=["discovered"])


@discovered.get("", summary="Unknown MACs waiting for approval, most recent first")
async def list_discovered(ctx: Ctx, caller: CallerDep) -> list[DiscoveredMac]:
    return await asyncio.to_thread(ctx.inventory.list_discovered)


@discovered.post("/{mac}/approve", status_code=201, summary="Make a discovered MAC a machine")
async def approve(
    ctx: Ctx, caller: CallerDep, mac: str, body: ApproveBody | None = None
) -> MachineRecord:
    address = _mac_param(mac)
    body = body or ApproveBody()
    fields = body.model_dump(exclude_unset=True, exclude={"hostname", "group", "ip"})
    record = await asyncio.to_thread(
        lambda: ctx.inventory.approve_discovered(
            address,
            hostname=body.hostname,
            group=body.group,
            ip=body.ip,
            actor=caller.actor,
            **fields,
        )
    )
    return _view(record, caller)


@discovered.delete("/{mac}", status_code=204, summary="Forget a discovered MAC")
async def forget(ctx: Ctx, caller: CallerDep, mac: str) -> Response:
    address = _mac_param(mac)
    await asyncio.to_thread(ctx.inventory.forget_discovered, address, actor=caller.actor)
    return Response(status_code=204)


# -- groups -------------------------------------------------------------------------------------

groups = APIRouter(prefix="/groups", tags=["groups"])


@groups.get("", summary="List groups")
async def list_groups(ctx: Ctx, caller: CallerDep) -> list[GroupRecord]:
    return await asyncio.to_thread(ctx.inventory.list_groups)


@groups.post("", status_code=201, summary="Add a group")
async def create_group(ctx: Ctx, caller: CallerDep, spec: GroupSpec) -> GroupRecord:
    return await asyncio.to_thread(ctx.inventory.create_group, spec, actor=caller.actor)


@groups.get("/{name}", summary="One group")
async def get_group(ctx: Ctx, caller: CallerDep, name: str) -> GroupRecord:
    return await asyncio.to_thread(ctx.inventory.get_group, name)


@groups.patch("/{name}", summary="Change the fields given (null clears a field)")
async def update_group(ctx: Ctx, caller: CallerDep, name: str, patch: GroupPatch) -> GroupRecord:
    return await asyncio.to_thread(ctx.inventory.update_group, name, patch, actor=caller.actor)


@groups.delete("/{name}", summary="Remove an empty group")
async def delete_group(ctx: Ctx, caller: CallerDep, name: str) -> GroupRecord:
    return await asyncio.to_thread(ctx.inventory.delete_group, name, actor=caller.actor)


# -- images -------------------------------------------------------------------------------------

images = APIRouter(prefix="/images", tags=["images"])


@images.get("", summary="Golden images and their versions")
async def list_images(ctx: Ctx, caller: CallerDep) -> list[ImageOut]:
    records = await asyncio.to_thread(ctx.library.catalog.records)
    return [ImageOut.of(record) for record in records]


@images.get("/{name}", summary="One image and its versions")
async def get_image(ctx: Ctx, caller: CallerDep, name: str) -> ImageOut:
    return ImageOut.of(await asyncio.to_thread(ctx.library.catalog.get, name))


# -- boot events --------------------------------------------------------------------------------

events = APIRouter(tags=["events"])


@events.get("/boot-events/{mac}", summary="Stored boot events of any MAC, oldest first")
async def boot_events(
    ctx: Ctx, caller: CallerDep, mac: str, limit: Limit = 100
) -> list[BootEventOut]:
    address = _mac_param(mac)
    stored = await asyncio.to_thread(ctx.inventory.boot_events, address, limit=limit)
    return [BootEventOut.of(event) for event in stored]


@events.get(
    "/boot-status",
    summary="Live boot status: each MAC's latest event and the most recent events since start",
)
async def boot_status(ctx: Ctx, caller: CallerDep, limit: Limit = 100) -> BootStatusOut:
    # From the in-memory timeline (this server's run), not the database: it is what /events
    # continues, so a console loads this once and then follows the stream.
    return BootStatusOut(
        latest=[BootEventOut.of(event) for event in ctx.timeline.latest()],
        recent=[BootEventOut.of(event) for event in ctx.timeline.recent(limit)],
    )


@events.get(
    "/events",
    summary="Live boot events (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "One `boot` event per boot event, its data the event as JSON",
        }
    },
)
async def live_events(
    ctx: Ctx,
    caller: CallerDep,
    mac: Annotated[str | None, Query(description="Only this MAC's events")] = None,
) -> StreamingResponse:
    only = _mac_param(mac, "query") if mac is not None else None
    return StreamingResponse(
        ctx.events.stream(only),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# -- settings, audit, tokens --------------------------------------------------------------------

settings = APIRouter(prefix="/settings", tags=["settings"])


@settings.get("", summary="Run-time settings")
async def get_settings(ctx: Ctx, caller: CallerDep) -> dict[str, Any]:
    return await asyncio.to_thread(ctx.inventory.settings)


@settings.put("/{key}", summary="Set one setting (null deletes it)")
async def put_setting(ctx: Ctx, caller: CallerDep, key: str, body: SettingBody) -> dict[str, Any]:
    await asyncio.to_thread(ctx.inventory.set_setting, key, body.value, actor=caller.actor)
    return await asyncio.to_thread(ctx.inventory.settings)


@settings.delete("/{key}", summary="Delete one setting")
async def delete_setting(ctx: Ctx, caller: CallerDep, key: str) -> dict[str, Any]:
    await asyncio.to_thread(ctx.inventory.set_setting, key, None, actor=caller.actor)
    return await asyncio.to_thread(ctx.inventory.settings)


audit = APIRouter(prefix="/audit", tags=["audit"])


@audit.get("", summary="Admin changes, newest first")
async def audit_log(
    ctx: Ctx,
    caller: CallerDep,
    limit: Limit = 100,
    target: Annotated[
        str | None, Query(description="A MAC, group:NAME, token:NAME or setting:KEY")
    ] = None,
) -> list[AuditEntry]:
    return await asyncio.to_thread(ctx.inventory.audit_log, limit=limit, target=target)


tokens = APIRouter(prefix="/tokens", tags=["tokens"])


@tokens.get("", summary="API tokens (names, never the secrets)")
async def list_tokens(ctx: Ctx, caller: CallerDep) -> list[TokenInfo]:
    return await asyncio.to_thread(ctx.inventory.list_tokens)


@tokens.post("", status_code=201, summary="A new token; its secret is shown only here")
async def create_token(ctx: Ctx, caller: CallerDep, body: TokenBody) -> NewToken:
    return await asyncio.to_thread(
        ctx.inventory.create_token, body.name, read_only=body.read_only, actor=caller.actor
    )


@tokens.delete("/{name}", status_code=204, summary="Revoke a token")
async def revoke_token(ctx: Ctx, caller: CallerDep, name: str) -> Response:
    await asyncio.to_thread(ctx.inventory.revoke_token, name, actor=caller.actor)
    return Response(status_code=204)


# -- server -------------------------------------------------------------------------------------

server = APIRouter(tags=["server"])


@server.get("/health", summary="Liveness, without a token")
async def health(ctx: Ctx) -> HealthOut:
    snapshot = ctx.service.snapshot
    return HealthOut(
        status="ok",
        version=__version__,
        inventory_serial=snapshot.serial,
        machines=len(snapshot.book),
    )


@server.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    dependencies=[Depends(authorize)],
)
async def metrics(ctx: Ctx) -> Response:
    found = await asyncio.to_thread(ctx.inventory.list_discovered)
    ctx.metrics.discovered.set(len(found))
    known = await asyncio.to_thread(ctx.inventory.list_machines)
    ctx.metrics.last_seen.clear()
    for record in known:
        if record.last_seen is not None:
            ctx.metrics.last_seen.labels(record.mac, record.hostname).set(
                record.last_seen.timestamp()
            )
    book = ctx.service.snapshot.book
    ctx.metrics.machines.set(len(book))
    # Only machines in the inventory get a series: unknown MACs would make it unbounded.
    ctx.metrics.boot_stage.clear()
    for event in ctx.timeline.latest():
        machine = book.by_mac(event.mac)
        if machine is not None:
            ctx.metrics.boot_stage.labels(
                format_mac(event.mac), machine.hostname, event.stage.value
            ).set(1)
    ctx.metrics.event_clients.set(ctx.events.clients)
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def build_app(ctx: ApiContext) -> FastAPI:
    """The API app over ``ctx``, with the web console at ``/console/`` (no docs UI: only the
    OpenAPI document)."""
    app = FastAPI(
        title="diskless admin API",
        version=__version__,
        description=(
            "Manage the machines, images and disks of a diskless boot server. Every route but "
            "/health and /openapi.json needs `Authorization: Bearer <token>`; read-only tokens "
            "may only read."
        ),
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = ctx
    install_error_handlers(app)
    for router in (
        machines,
        disks,
        discovered,
        groups,
        images,
        events,
        settings,
        audit,
        tokens,
    ):
        app.include_router(router, dependencies=[Depends(authorize)])
    app.include_router(server)
    app.include_router(console)
    return app
