"""The composition root of ``diskless serve``: settings in, running services out.

:func:`serve` configures logging, lays out the data directory, builds the network services the
settings enable, and runs them in one :class:`asyncio.TaskGroup` until SIGINT or SIGTERM. One
event loop owns every service; a service that fails cancels the others (as ``errgroup`` does in
Go netboot servers), and the failure is logged and turned into a non-zero exit status.

A service is any object with a ``name`` and an ``async def run(self)`` that serves until it is
cancelled and releases what it holds (sockets, open disks) in ``finally``; see :class:`Service`.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol, Self

from diskless import __version__
from diskless.api import ApiService, stats_from_services
from diskless.boot.events import BootEvent, BootTimeline
from diskless.boot.machines import Machine, MachineBook, load_machine_book
from diskless.boot.policy import BootSite
from diskless.boot.site import site_from_settings
from diskless.config import Settings
from diskless.dhcp.endpoint import DhcpService
from diskless.errors import ConfigError, DisklessError
from diskless.exports.endpoint import IscsiService
from diskless.exports.plan import DiskExport, plan_exports
from diskless.http.once import ConsumedInMemory
from diskless.http.service import HttpBootService
from diskless.inventory.endpoint import InventoryService
from diskless.inventory.snapshot import InventorySnapshot
from diskless.observe.log import configure_logging, get_logger
from diskless.storage.disks import DiskSpec
from diskless.storage.library import ImageLibrary
from diskless.tftp.endpoint import TftpService

__all__ = [
    "DataLayout",
    "Service",
    "build_services",
    "prepare_data_dir",
    "run_services",
    "serve",
]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_log = get_logger(__name__)


class Service(Protocol):
    """One long-running part of the server (iSCSI target, DHCP, TFTP, HTTP boot plane).

    A service may also have a ``ready`` :class:`asyncio.Event`, set once its sockets are bound;
    the server announces "ready" only after every such event is set.
    """

    @property
    def name(self) -> str:
        """A short name for logs, e.g. ``"iscsi"``."""

    async def run(self) -> None:
        """Serve until cancelled; release every resource in ``finally``.

        Raising stops the whole server: the other services are cancelled and ``serve`` exits 1.
        Returning means the service is done; the others keep running.
        """


@dataclass(frozen=True, slots=True)
class DataLayout:
    """Where things live under ``data_dir`` (documented in ``docs/operations.md``)."""

    root: Path
    images: Path
    disks: Path
    state: Path

    @classmethod
    def under(cls, data_dir: Path) -> Self:
        return cls(
            root=data_dir,
            images=data_dir / "images",
            disks=data_dir / "disks",
            state=data_dir / "state",
        )


def disk_specs(snapshot: InventorySnapshot) -> dict[str, DiskSpec]:
    """What each machine's disk is assigned to be made of, by disk name (lower case)."""
    return {
        assignment.disk.lower(): DiskSpec(assignment.image, assignment.version, assignment.mode)
        for assignment in snapshot.disks.values()
    }


def prepare_data_dir(data_dir: Path) -> DataLayout:
    """Create the data directory and its top-level folders if missing.

    Raises :class:`ConfigError` naming ``data_dir`` when a folder cannot be created, because the
    fix is to point ``data_dir`` somewhere usable.
    """
    layout = DataLayout.under(data_dir.absolute())
    for folder in (layout.root, layout.images, layout.disks, layout.state):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"data_dir: cannot create {folder}: {reason}") from exc
    return layout


@dataclass(slots=True)
class BootState:
    """What every boot service shares: where the machine snapshot comes from, and the timeline.

    With ``boot.machines_file`` set, the machines are that file, read once at start; otherwise
    they come from the inventory database, and :attr:`inventory` keeps the snapshot current.
    """

    timeline: BootTimeline
    machines: MachineBook
    inventory: InventoryService | None = None
    dhcp: DhcpService | None = None

    def machine_book(self) -> MachineBook:
        if self.inventory is not None:
            return self.inventory.book()
        return self.machines

    def exports(self, iqn_prefix: str) -> list[DiskExport]:
        """The disks to export now, with their assignments when they come from the inventory."""
        if self.inventory is None:
            return plan_exports(self.machines, iqn_prefix)
        snapshot = self.inventory.snapshot
        return plan_exports(snapshot.book, iqn_prefix, disk_specs(snapshot))

    def mac_for_address(self, address: str) -> bytes | None:
        """The MAC behind ``address``: a reservation, else a DHCP lease (TFTP knows only the IP)."""
        try:
            machine = self.machine_book().by_ip(IPv4Address(address))
        except ValueError:
            return None
        if machine is not None:
            return machine.mac
        return None if self.dhcp is None else self.dhcp.mac_for_address(address)

    def consume_next_boot_once(self, machine: Machine) -> None:
        """The HTTP plane served ``machine``'s override: forget it in the database too."""
        inventory = self.inventory
        if inventory is None:
            return
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(inventory.inventory.consume_next_boot_once, machine.mac)
        )
        task.add_done_callback(_log_consume_failure)


def _log_consume_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("next-boot-once not consumed in the inventory", error=str(task.exception()))


def boot_state(settings: Settings) -> BootState:
    """The machine source these settings name (the file, or the inventory database)."""
    timeline = BootTimeline()
    if settings.logging.level in ("debug", "info"):
        # Subscribed only when the lines are written: formatting one costs more than a DHCP
        # answer, and a filtered structlog call still builds its event.
        timeline.subscribe(_log_boot_event)
    if settings.boot.machines_file is not None:
        return BootState(timeline, load_machine_book(settings.boot.machines_file))
    inventory = InventoryService.open(settings)
    if inventory.recorder is not None:
        timeline.subscribe(inventory.recorder)
    return BootState(timeline, inventory.book(), inventory)


def build_services(settings: Settings, layout: DataLayout) -> list[Service]:
    """The network services these settings enable, in start order.

    DHCP runs only when ``dhcp.interface`` names an interface. The iSCSI portal starts before DHCP,
    so the disks are exported before any machine is told to boot from them. The admin API runs
    when ``api.enabled`` and the machines come from the inventory (not a machines file).
    """
    state = boot_state(settings)
    library = ImageLibrary.from_settings(settings)
    services: list[Service] = []
    if state.inventory is not None:
        services.append(state.inventory)
    iscsi: IscsiService | None = None
    if settings.iscsi.enabled:
        iscsi = IscsiService(
            settings=settings,
            disks=library.disks,
            exports=state.exports(settings.boot.iqn_prefix),
            timeline=state.timeline,
        )
        services.append(iscsi)
        if state.inventory is not None:
            state.inventory.subscribe(
                lambda snapshot: iscsi.apply_exports(
                    plan_exports(snapshot.book, settings.boot.iqn_prefix, disk_specs(snapshot))
                )
            )
    if settings.http.enabled:
        services.append(
            HttpBootService(
                settings.http,
                settings.boot,
                root=settings.http.root or layout.root / "http",
                machines=state.machine_book,
                timeline=state.timeline,
                next_boot_once=ConsumedInMemory(on_consumed=state.consume_next_boot_once),
                site=functools.lru_cache(maxsize=64)(functools.partial(_site, settings)),
            )
        )
    if settings.tftp.enabled:
        services.append(
            TftpService(
                settings.tftp,
                settings.boot,
                settings.tftp.root or layout.root / "tftp",
                timeline=state.timeline,
                mac_for_address=state.mac_for_address,
                logging=settings.logging,
            )
        )
    if settings.dhcp.interface is not None:
        state.dhcp = DhcpService(
            settings=settings.dhcp,
            site=lambda server: _site(settings, server, settings.http.port),
            machines=state.machine_book,
            state_dir=layout.state,
            timeline=state.timeline,
        )
        services.append(state.dhcp)
    if settings.api.enabled and state.inventory is not None:
        services.append(
            ApiService(
                settings.api,
                inventory=state.inventory,
                timeline=state.timeline,
                library=library,
                stats=stats_from_services(list(services)),
                wake_interface=settings.wake.interface or settings.dhcp.interface,
                release_disk=iscsi.released if iscsi is not None else None,
            )
        )
    return services


def _log_boot_event(event: BootEvent) -> None:
    # One line per boot step: the live boot status an operator follows with `journalctl -f`
    # (and what the end-to-end tests read) until the API streams it.
    _log.info("boot event", **event.to_json())


def _site(settings: Settings, server: IPv4Address, http_port: int) -> BootSite:
    return site_from_settings(
        settings.boot, server, http_port, settings.iscsi.port, settings.iscsi.workers
    )


async def run_services(
    services: Sequence[Service],
    *,
    stop: asyncio.Event,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run every service until ``stop`` is set, then cancel each and wait for it to finish.

    ``on_ready`` is called once every service that has a ``ready`` event has set it (its sockets
    are bound), or has ended. If a service raises, the others are cancelled and the error
    propagates in an :class:`ExceptionGroup`.
    """
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(_supervise(service), name=f"service:{service.name}")
            for service in services
        ]
        for service, task in zip(services, tasks, strict=True):
            ready: asyncio.Event | None = getattr(service, "ready", None)
            if ready is not None and not task.done():
                waiter = asyncio.ensure_future(ready.wait())
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        if on_ready is not None:
            on_ready()
        await stop.wait()
        for task in tasks:
            task.cancel()


def serve(settings: Settings) -> int:
    """Run the server with ``settings`` until SIGINT or SIGTERM; returns the exit status.

    0 after a clean shutdown, 1 when a service failed. Start-up problems (an unusable
    ``data_dir``) raise :class:`ConfigError` before anything runs.
    """
    configure_logging(settings.logging)
    layout = prepare_data_dir(settings.data_dir)
    _log.info("diskless starting", version=__version__, data_dir=str(layout.root))
    _log_data_dir(layout)
    services = build_services(settings, layout)
    try:
        asyncio.run(_serve_until_signalled(services))
    except ExceptionGroup as group:
        _log_failures(group)
        return 1
    finally:
        for service in services:
            if isinstance(service, InventoryService):
                service.inventory.close()
    _log.info("diskless stopped")
    return 0


async def _serve_until_signalled(services: Sequence[Service]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop(signum: signal.Signals) -> None:
        if not stop.is_set():
            _log.info("shutting down", signal=signum.name)
        stop.set()

    try:
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, request_stop, signum)
        if not services:
            _log.info(
                "no network services are enabled yet in this version: "
                "disks are managed with `diskless disk`"
            )

        def announce() -> None:
            # Logged once the handlers are in place and every service listens: whoever waits
            # for "ready" may connect or signal now.
            _log.info("ready", services=[service.name for service in services])

        await run_services(services, stop=stop, on_ready=announce)
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def _supervise(service: Service) -> None:
    _log.info("service starting", service=service.name)
    try:
        await service.run()
    finally:
        _log.info("service stopped", service=service.name)


def _log_data_dir(layout: DataLayout) -> None:
    # Counted from the on-disk layout rather than through the storage catalog, so a damaged
    # catalog entry cannot stop the server from starting; the storage code reports those itself.
    images = sum(1 for _ in (layout.images / "catalog").glob("*.json"))
    disks = sum(1 for _ in layout.disks.glob("*/disk.json"))
    _log.info(
        "data directory ready",
        images=images,
        disks=disks,
        images_dir=str(layout.images),
        disks_dir=str(layout.disks),
        state_dir=str(layout.state),
    )


def _log_failures(group: BaseExceptionGroup[BaseException]) -> None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            _log_failures(exc)
        elif isinstance(exc, DisklessError):
            _log.error("service failed", error=str(exc))
        else:
            # Anything that is not a DisklessError is a bug: keep the traceback.
            _log.error("service crashed", exc_info=exc)
