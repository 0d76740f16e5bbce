"""The iSCSI service of ``diskless serve``: each machine's disk on one portal.

At start every planned export's disk is opened through the :class:`DiskManager` (taking its lock,
so ``qemu-img`` or a second server cannot write it) and becomes a target with LUN 0. A machine that
starts to boot (a PXE or iPXE DHCP request, seen in the boot timeline) begins a new boot of its
disk: a reset-on-boot disk is thrown away and recreated before iPXE logs in, and the sessions of
the previous boot, dead with the machine's reboot, are dropped. Logins, logouts and each boot's
first write go to the timeline. On shutdown every disk is flushed and closed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from diskless.boot.events import BootEvent, BootStage, BootTimeline
from diskless.config import IscsiSettings
from diskless.errors import ConfigError, DisklessError
from diskless.exports.plan import DiskExport
from diskless.iscsi.endpoint import IscsiPortal
from diskless.iscsi.login import LoginResult
from diskless.iscsi.target import Target, TargetRegistry, disk_target
from diskless.observe.log import get_logger
from diskless.storage.diskhandle import DiskHandle
from diskless.storage.disks import DiskManager, DiskMode

__all__ = ["IscsiService"]

_log = get_logger(__name__)
_BOOT_STAGES = frozenset({BootStage.DHCP_OFFER, BootStage.PROXY_OFFER})


@dataclass(slots=True)
class _Served:
    export: DiskExport
    handle: DiskHandle
    target: Target


@dataclass(slots=True)
class IscsiService:
    """The iSCSI portal serving the planned exports (``name = "iscsi"``)."""

    settings: IscsiSettings
    disks: DiskManager
    exports: list[DiskExport]
    timeline: BootTimeline | None = None
    name: str = "iscsi"
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _served: dict[bytes, list[_Served]] = field(default_factory=dict)
    _registry: TargetRegistry = field(default_factory=TargetRegistry)
    _portal: IscsiPortal | None = None
    _by_target: dict[str, DiskExport] = field(default_factory=dict)
    addresses: list[tuple[str, int]] = field(default_factory=list)
    """Where the portal listens, once ``ready`` is set."""

    async def run(self) -> None:
        try:
            for export in self.exports:
                self._open(export, boot=True)
            self._portal = IscsiPortal(self._registry, on_session=self._session_event)
            try:
                self.addresses = await self._portal.start(self.settings.host, self.settings.port)
            except OSError as exc:
                raise ConfigError(
                    f"iscsi: cannot listen on {self.settings.host}:{self.settings.port}: "
                    f"{exc.strerror}"
                ) from exc
            if self.timeline is not None:
                self.timeline.subscribe(self._boot_event)
            self.ready.set()
            _log.info(
                "iscsi listening",
                listen=[f"{host}:{port}" for host, port in self.addresses],
                targets=sorted(target.name for target in self._registry),
            )
            await self._portal.serve_forever()
        finally:
            if self._portal is not None:
                await self._portal.close()
            for served in [s for group in self._served.values() for s in group]:
                self._close(served)

    # -- disks ----------------------------------------------------------------------------------

    def _open(self, export: DiskExport, *, boot: bool) -> None:
        try:
            handle = self.disks.open(export.disk, boot=boot)
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
        )

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

    # -- boots ----------------------------------------------------------------------------------

    def _boot_event(self, event: BootEvent) -> None:
        if event.stage in _BOOT_STAGES and event.mac in self._served:
            self._new_boot(event.mac)

    def _new_boot(self, mac: bytes) -> None:
        """The machine is starting over: its old sessions are dead, its boot begins now."""
        assert self._portal is not None
        group = self._served.pop(mac)
        names = {served.export.target_name.casefold() for served in group}
        for session in self._portal.sessions.sessions():
            if session.target_name is not None and session.target_name.casefold() in names:
                self._portal.sessions.release(session)
                session.close()
        kept: list[_Served] = []
        for served in group:
            if served.handle.record.mode is DiskMode.RESET_ON_BOOT:
                # Reopened at once, within this callback, so no login can find the target
                # missing; connections of the dropped sessions end with the old handle.
                self._close(served)
                self._open(served.export, boot=True)
            else:
                self._arm_first_write(served)
                kept.append(served)
        if kept:
            self._served.setdefault(mac, []).extend(kept)

    def _session_event(self, result: LoginResult, started: bool) -> None:
        if result.target is None:
            return
        export = self._by_target.get(result.target.name.casefold())
        if export is None:
            return
        stage = BootStage.ISCSI_LOGIN if started else BootStage.ISCSI_LOGOUT
        self._record(export.mac, stage, f"{result.initiator_name} -> {export.target_name}")

    def _record(self, mac: bytes, stage: BootStage, detail: str) -> None:
        if self.timeline is not None:
            self.timeline.record(BootEvent(mac, stage, time.time(), detail))
        _log.info(stage.value, detail=detail)
