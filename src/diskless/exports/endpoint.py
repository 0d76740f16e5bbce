"""The iSCSI service of ``diskless serve``: each machine's disk on a portal, on one or more cores.

A *shard* is one portal with the disks it serves. At start it opens every export's disk through
the :class:`DiskManager` (taking its lock, so ``qemu-img`` or a second server cannot write it) and
makes it a target with LUN 0. A machine that starts to boot (a PXE or iPXE DHCP request, seen in the
boot timeline) begins a new boot of its disk: a reset-on-boot disk is thrown away and recreated
before iPXE logs in, and the sessions of the previous boot, dead with the machine's reboot, are
dropped. Logins, logouts and each boot's first write go to the timeline. On shutdown every disk is
flushed and closed.

With ``iscsi.workers = N > 1`` the shards run in N worker processes (``spawn``ed, one core each):
worker k listens on ``iscsi.port + k`` and serves the disks :func:`iscsi_shard` assigns to it,
which is also the port the machine's iPXE script names, so both boot stages of a machine reach the
one process that has its disk open. The main process keeps the timeline: it tells a worker when
one of its machines boots, and workers send their events back over a pipe. Over the same pipe
each worker reports its portal's counters once a second when they changed (never per command),
and :meth:`IscsiService.portal_stats` sums the latest report of every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from diskless.boot.events import BootEvent, BootStage, BootTimeline
from diskless.boot.policy import iscsi_shard
from diskless.config import Settings
from diskless.errors import ConfigError, DisklessError
from diskless.exports.plan import DiskExport
from diskless.iscsi.endpoint import IscsiPortal, PortalStats
from diskless.iscsi.login import LoginResult
from diskless.iscsi.target import Target, TargetRegistry, disk_target
from diskless.observe.log import get_logger
from diskless.storage.diskhandle import DiskHandle
from diskless.storage.disks import DiskManager, DiskMode
from diskless.storage.errors import ImageBusyError
from diskless.storage.library import ImageLibrary
from diskless.workers import Worker, detach, run_worker, serve_until_stopped, stop_workers

__all__ = ["IscsiService"]

_log = get_logger(__name__)
_BOOT_STAGES = frozenset({BootStage.DHCP_OFFER, BootStage.PROXY_OFFER})
_WORKER_START_TIMEOUT = 60.0
_WORKER_STOP_TIMEOUT = 15.0

Addresses = list[tuple[str, int]]


@dataclass(slots=True)
class _Served:
    export: DiskExport
    handle: DiskHandle
    target: Target


class _Shard:
    """One portal and the disks it serves; everything runs on the caller's event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        disks: DiskManager,
        exports: list[DiskExport],
        record: Callable[[BootEvent], None],
    ) -> None:
        self._host = host
        self._port = port
        self._disks = disks
        self._exports = exports
        self._record_event = record
        self._served: dict[bytes, list[_Served]] = {}
        self._registry = TargetRegistry()
        self._by_target: dict[str, DiskExport] = {}
        self._portal: IscsiPortal | None = None
        self._released: Counter[str] = Counter()
        """Disks closed for admin actions (reset, commit, rollback), each until its last action
        ends (two may overlap; the disk lock lets one run)."""

    async def run(self, on_ready: Callable[[Addresses], None]) -> None:
        try:
            for export in self._exports:
                self._open(export, boot=True)
            self._portal = IscsiPortal(self._registry, on_session=self._session_event)
            try:
                addresses = await self._portal.start(self._host, self._port)
            except OSError as exc:
                raise ConfigError(
                    f"iscsi: cannot listen on {self._host}:{self._port}: {exc.strerror}"
                ) from exc
            on_ready(addresses)
            _log.info(
                "iscsi listening",
                listen=[f"{host}:{port}" for host, port in addresses],
                targets=sorted(target.name for target in self._registry),
            )
            await self._portal.serve_forever()
        finally:
            if self._portal is not None:
                await self._portal.close()
            for served in [s for group in self._served.values() for s in group]:
                self._close(served)

    def serves(self, mac: bytes) -> bool:
        return mac in self._served

    @property
    def portal(self) -> IscsiPortal | None:
        return self._portal

    @property
    def exported(self) -> int:
        """How many disks are open and exported."""
        return sum(len(group) for group in self._served.values())

    def set_exports(self, exports: list[DiskExport]) -> None:
        """Serve exactly ``exports`` from now on: open new disks, close the ones dropped.

        An export whose identity changed (e.g. a new CHAP secret) is closed and opened again,
        which ends its sessions; untouched exports and their sessions are left alone.
        """
        wanted = {export.target_name.casefold(): export for export in exports}
        self._exports = list(exports)
        for mac, group in list(self._served.items()):
            kept = []
            for served in group:
                key = served.export.target_name.casefold()
                same = wanted.get(key)
                if same is not None and same.same_target(served.export):
                    # A new assignment (image version, mode) applies at the machine's next boot.
                    served.export = same
                    self._by_target[key] = same
                    kept.append(served)
                    del wanted[key]
                    continue
                self._drop_sessions({key})
                self._unexport(served)
            if kept:
                self._served[mac] = kept
            else:
                del self._served[mac]
        for export in wanted.values():
            if export.disk not in self._released:
                self._open(export, boot=True)

    def release(self, disk: str) -> str | None:
        """Close ``disk`` for an admin action; the reason it cannot be, if it is in use.

        A disk with an iSCSI session is its running machine's: changing it under the OS would
        corrupt what the OS has cached, so it is refused rather than pulled away.
        """
        names = {
            served.export.target_name.casefold()
            for group in self._served.values()
            for served in group
            if served.export.disk == disk
        }
        if names and self._portal is not None:
            users = [
                session
                for session in self._portal.sessions.sessions()
                if session.target_name is not None and session.target_name.casefold() in names
            ]
            if users:
                initiators = sorted({session.initiator_name for session in users})
                return (
                    f"disk {disk!r} is in use by {len(users)} iSCSI session(s) of "
                    f"{', '.join(initiators)}: shut its machine down first"
                )
        self._released[disk] += 1
        for mac, group in list(self._served.items()):
            kept = [served for served in group if served.export.disk != disk]
            for served in group:
                if served.export.disk == disk:
                    self._unexport(served)
            if kept:
                self._served[mac] = kept
            else:
                del self._served[mac]
        return None

    def restore(self, disk: str) -> None:
        """Export ``disk`` again after :meth:`release` (as it is now: no boot reset)."""
        self._released[disk] -= 1
        if self._released[disk] > 0:
            return
        del self._released[disk]
        for export in self._exports:
            if export.disk == disk and export.target_name.casefold() not in self._by_target:
                self._open(export, boot=False)

    def _drop_sessions(self, names: set[str]) -> None:
        if self._portal is None:
            return
        for session in self._portal.sessions.sessions():
            if session.target_name is not None and session.target_name.casefold() in names:
                self._portal.sessions.release(session)
                session.close()

    def new_boot(self, mac: bytes) -> None:
        """The machine is starting over: its old sessions are dead, its boot begins now."""
        group = self._served.pop(mac, None)
        if group is None or self._portal is None:
            if group is not None:
                self._served[mac] = group
            return
        self._drop_sessions({served.export.target_name.casefold() for served in group})
        kept: list[_Served] = []
        for served in group:
            spec = served.export.spec
            if served.handle.record.mode is DiskMode.RESET_ON_BOOT or (
                spec is not None and spec.mode is not served.handle.record.mode
            ):
                # Reopened at once, within this callback, so no login can find the target
                # missing; connections of the dropped sessions end with the old handle.
                self._close(served)
                self._open(served.export, boot=True)
            else:
                self._arm_first_write(served)
                kept.append(served)
        if kept:
            self._served.setdefault(mac, []).extend(kept)

    def _open(self, export: DiskExport, *, boot: bool) -> None:
        try:
            handle = self._disks.open(export.disk, boot=boot, spec=export.spec)
        except DisklessError as exc:
            # One machine's missing or busy disk must not stop every other machine booting.
            _log.error(
                "disk not exported", machine=export.hostname, disk=export.disk, error=str(exc)
            )
            return
        target = disk_target(handle, export.access, identity_seed=export.disk)
        self._registry.add(target)
        self._by_target[export.target_name.casefold()] = export
        served = _Served(export, handle, target)
        self._arm_first_write(served)
        self._served.setdefault(export.mac, []).append(served)
        _log.info(
            "disk exported",
            machine=export.hostname,
            disk=export.disk,
            target=export.target_name,
            mode=handle.record.mode.value,
            image=f"{handle.record.image} v{handle.record.version}",
        )

    def _unexport(self, served: _Served) -> None:
        key = served.export.target_name.casefold()
        self._registry.remove(served.export.target_name)
        self._by_target.pop(key, None)
        self._close(served)
        _log.info("disk no longer exported", disk=served.export.disk, target=key)

    def _close(self, served: _Served) -> None:
        try:
            served.handle.flush()
        except (OSError, DisklessError) as exc:
            _log.error("flush failed", disk=served.export.disk, error=str(exc))
        served.handle.close()

    def _arm_first_write(self, served: _Served) -> None:
        mac, disk = served.export.mac, served.export.disk

        def first_write() -> None:
            self._record(mac, BootStage.ISCSI_FIRST_WRITE, disk)

        served.handle.on_first_write = first_write

    def _session_event(self, result: LoginResult, started: bool) -> None:
        if result.target is None:
            return
        export = self._by_target.get(result.target.name.casefold())
        if export is None:
            return
        stage = BootStage.ISCSI_LOGIN if started else BootStage.ISCSI_LOGOUT
        self._record(export.mac, stage, f"{result.initiator_name} -> {export.target_name}")

    def _record(self, mac: bytes, stage: BootStage, detail: str) -> None:
        self._record_event(BootEvent(mac, stage, time.time(), detail))
        _log.info(stage.value, detail=detail)


@dataclass(slots=True)
class IscsiService:
    """The machines' disks on the iSCSI portal(s) (``name = "iscsi"``)."""

    settings: Settings
    disks: DiskManager
    exports: list[DiskExport]
    timeline: BootTimeline | None = None
    name: str = "iscsi"
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    addresses: Addresses = field(default_factory=list)
    """Where the portals listen, once ``ready`` is set."""
    _shard: _Shard | None = None
    _workers: list[Worker] = field(default_factory=list)
    _worker_stats: dict[int, tuple[PortalStats, int, int]] = field(default_factory=dict)
    _releases: dict[tuple[int, str], asyncio.Future[str | None]] = field(default_factory=dict)

    async def run(self) -> None:
        if self.settings.iscsi.workers > 1:
            await self._run_workers()
            return
        shard = self._shard = _Shard(
            self.settings.iscsi.host,
            self.settings.iscsi.port,
            self.disks,
            self.exports,
            record=self._record,
        )
        if self.timeline is not None:
            self.timeline.subscribe(
                lambda event: shard.new_boot(event.mac) if event.stage in _BOOT_STAGES else None
            )
        await shard.run(self._on_ready)

    def apply_exports(self, exports: list[DiskExport]) -> None:
        """The machines changed: serve ``exports`` from now on (in whichever process owns each)."""
        self.exports = list(exports)
        if self._shard is not None:
            self._shard.set_exports(self.exports)
        count = len(self._workers)
        for index, (_, connection) in enumerate(self._workers):
            group = [e for e in self.exports if iscsi_shard(e.target_name, count) == index]
            with contextlib.suppress(OSError, ValueError):
                connection.send(("exports", group))

    @contextlib.asynccontextmanager
    async def released(self, disk: str) -> AsyncIterator[None]:
        """``disk`` closed by the portal that serves it for the ``with`` block, then exported
        again: how an admin action (reset, commit, rollback) reaches a disk that is exported but
        whose machine is off. Raises :class:`ImageBusyError` while an iSCSI session uses it."""
        if self._shard is not None:
            problem = self._shard.release(disk)
            if problem is not None:
                raise ImageBusyError(problem)
            try:
                yield
            finally:
                self._shard.restore(disk)
            return
        owner = self._worker_of(disk)
        if owner is None:
            yield  # Not exported (or not started): nothing holds it.
            return
        connection = self._workers[owner][1]
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._releases[(owner, disk)] = answer
        try:
            connection.send(("release", disk))
            problem = await asyncio.wait_for(answer, _WORKER_START_TIMEOUT)
        finally:
            self._releases.pop((owner, disk), None)
        if problem is not None:
            raise ImageBusyError(problem)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                connection.send(("restore", disk))

    def _worker_of(self, disk: str) -> int | None:
        count = len(self._workers)
        for export in self.exports:
            if export.disk == disk and count:
                return iscsi_shard(export.target_name, count)
        return None

    def portal_stats(self) -> tuple[PortalStats, int, int] | None:
        """The portal's counters, its open sessions and the disks exported, for metrics.

        ``None`` before the portal starts. With worker processes: the sums of their last
        reports (at most a second or so old), once one has reported.
        """
        if self._worker_stats:
            total = PortalStats()
            sessions = exported = 0
            for stats, open_sessions, disks in self._worker_stats.values():
                for name, value in asdict(stats).items():
                    setattr(total, name, getattr(total, name) + value)
                sessions += open_sessions
                exported += disks
            return total, sessions, exported
        shard = self._shard
        portal = None if shard is None else shard.portal
        if shard is None or portal is None:
            return None
        return portal.stats, len(portal.sessions.sessions()), shard.exported

    def _on_ready(self, addresses: Addresses) -> None:
        self.addresses = addresses
        self.ready.set()

    def _record(self, event: BootEvent) -> None:
        if self.timeline is not None:
            self.timeline.record(event)

    # -- worker processes ----------------------------------------------------------------------

    async def _run_workers(self) -> None:
        count = self.settings.iscsi.workers
        groups: list[list[DiskExport]] = [[] for _ in range(count)]
        for export in self.exports:
            groups[iscsi_shard(export.target_name, count)].append(export)
        context = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        workers = self._workers
        started: list[asyncio.Future[Addresses]] = []
        try:
            for index, group in enumerate(groups):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_worker_main,
                    args=(self.settings, index, group, child_end),
                    name=f"diskless-iscsi-{index}",
                    daemon=True,
                )
                process.start()
                child_end.close()
                workers.append((process, parent_end))
                future: asyncio.Future[Addresses] = loop.create_future()
                started.append(future)
                loop.add_reader(parent_end.fileno(), self._from_worker, index, parent_end, future)
            done, pending = await asyncio.wait(started, timeout=_WORKER_START_TIMEOUT)
            if pending:
                raise DisklessError("iscsi: a worker process did not start in time")
            self._on_ready([address for future in done for address in future.result()])

            def forward(event: BootEvent) -> None:
                if event.stage in _BOOT_STAGES:
                    # Every worker is told: it ignores a MAC it does not serve, and the owner
                    # of a machine added since the start is not in a table built then.
                    for _, connection in workers:
                        connection.send(("boot", event.mac))

            if self.timeline is not None:
                self.timeline.subscribe(forward)
            _log.info("iscsi workers running", workers=count, listen=self.addresses)
            # Serve until cancelled, or until a worker dies (its machines would lose their disks).
            await asyncio.gather(
                *(loop.run_in_executor(None, process.join) for process, _ in workers)
            )
            raise DisklessError("iscsi: a worker process exited")
        finally:
            await self._stop_workers(workers)

    def _from_worker(
        self, index: int, connection: Connection, started: asyncio.Future[Addresses]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            message = connection.recv()
        except (EOFError, OSError):
            loop.remove_reader(connection.fileno())
            if not started.done():
                started.set_exception(DisklessError(f"iscsi: worker {index} exited at start"))
            return
        kind = message[0]
        if kind == "ready" and not started.done():
            started.set_result(message[1])
        elif kind == "failed" and not started.done():
            started.set_exception(ConfigError(message[1]))
        elif kind == "event":
            self._record(message[1])
        elif kind == "stats":
            self._worker_stats[index] = message[1]
        elif kind == "released":
            answer = self._releases.get((index, message[1]))
            if answer is not None and not answer.done():
                answer.set_result(message[2])

    async def _stop_workers(self, workers: list[Worker]) -> None:
        detach(workers, asyncio.get_running_loop())
        # Each worker flushes and closes its disks before it exits: wait off the loop.
        await asyncio.to_thread(stop_workers, workers, timeout=_WORKER_STOP_TIMEOUT, what="iscsi")


def _worker_main(
    settings: Settings, index: int, exports: list[DiskExport], connection: Connection
) -> None:
    """A worker process: one shard on ``iscsi.port + index``, steered over ``connection``."""
    run_worker(lambda: _worker(settings, index, exports, connection), connection, settings.logging)


async def _worker(
    settings: Settings, index: int, exports: list[DiskExport], connection: Connection
) -> None:
    shard = _Shard(
        settings.iscsi.host,
        settings.iscsi.port + index,
        ImageLibrary.from_settings(settings).disks,
        exports,
        record=lambda event: connection.send(("event", event)),
    )

    def from_main(message: tuple[Any, ...]) -> None:
        if message[0] == "boot":
            shard.new_boot(message[1])
        elif message[0] == "exports":
            shard.set_exports(message[1])
        elif message[0] == "release":
            connection.send(("released", message[1], shard.release(message[1])))
        elif message[0] == "restore":
            shard.restore(message[1])

    def report() -> tuple[PortalStats, int, int] | None:
        portal = shard.portal
        if portal is None:
            return None
        # A copy: the pickled report must not alias the live counters.
        return (
            PortalStats(**asdict(portal.stats)),
            len(portal.sessions.sessions()),
            shard.exported,
        )

    await serve_until_stopped(
        shard.run(lambda addresses: connection.send(("ready", addresses))),
        connection,
        on_message=from_main,
        report=report,
    )
