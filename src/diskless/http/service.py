"""The HTTP boot plane as a service of ``diskless serve``: it binds its listener and serves."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from ipaddress import IPv4Address
from pathlib import Path

from aiohttp import web

from diskless.boot import BootSite, BootTimeline, MachineBook, boot_loaders, site_from_settings
from diskless.config import BootSettings, HttpSettings
from diskless.errors import ConfigError
from diskless.http.app import BootPlane, HttpStats, SiteLookup, build_app
from diskless.http.jail import FileJail
from diskless.http.once import ConsumedInMemory, NextBootOnceStore
from diskless.observe.log import get_logger

__all__ = ["HttpBootService"]

_log = get_logger("diskless.http")
# How long a shutdown waits for responses in flight (a 100 MiB file takes well under a second).
_SHUTDOWN_GRACE = 2.0
_LISTEN_BACKLOG = 1024
_ACCESS_LOG = logging.getLogger("diskless.http.access")


class HttpBootService:
    """Serves the boot plane's routes (:mod:`diskless.http.app`) until cancelled.

    ``machines`` is called on every script request, so a new :class:`MachineBook` snapshot
    takes effect at once. ``site`` gives the :class:`BootSite` for the local address and port a
    request arrived on; by default it comes from ``boot`` (``boot.server_address`` when set,
    else that local address). ``next_boot_once`` is told when an override is served (default:
    :class:`ConsumedInMemory`).
    """

    name = "http"

    def __init__(
        self,
        settings: HttpSettings,
        boot: BootSettings,
        *,
        root: Path,
        machines: Callable[[], MachineBook],
        timeline: BootTimeline,
        site: SiteLookup | None = None,
        next_boot_once: NextBootOnceStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._plane = BootPlane(
            machines=machines,
            site_for=site if site is not None else _site_lookup(boot),
            timeline=timeline,
            next_boot_once=next_boot_once if next_boot_once is not None else ConsumedInMemory(),
            files=FileJail(root),
            ipxe_dir=boot.ipxe_dir,
            ipxe_programs=frozenset(boot_loaders(boot).values()),
            clock=clock,
        )
        self._listening: asyncio.Future[tuple[str, int]] | None = None
        self.ready = asyncio.Event()
        """Set once the listener is bound (``diskless serve`` announces "ready" after it)."""

    @property
    def stats(self) -> HttpStats:
        """The boot plane's request counters (read by ``/metrics``)."""
        return self._plane.stats

    async def listening(self) -> tuple[str, int]:
        """The (host, port) the service listens on, once it does (tests bind port 0)."""
        if self._listening is None:
            self._listening = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._listening)

    async def run(self) -> None:
        if self._listening is None:
            self._listening = asyncio.get_running_loop().create_future()
        access_log = (
            logging.getLogger("diskless.http.access") if self._settings.access_log else None
        )
        runner = web.AppRunner(
            build_app(self._plane),
            handle_signals=False,
            access_log=access_log,
            shutdown_timeout=_SHUTDOWN_GRACE,
        )
        await runner.setup()
        try:
            site = web.TCPSite(
                runner,
                self._settings.host,
                self._settings.port,
                backlog=_LISTEN_BACKLOG,
                reuse_address=True,
            )
            try:
                await site.start()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                where = f"{self._settings.host}:{self._settings.port}"
                raise ConfigError(f"http: cannot listen on {where}: {reason}") from exc
            host, port = runner.addresses[0][:2]
            _log.info(
                "http boot plane listening", host=host, port=port, root=str(self._plane.files.root)
            )
            if not self._listening.done():
                self._listening.set_result((host, port))
            self.ready.set()
            await asyncio.Event().wait()  # serve until cancelled
        finally:
            await runner.cleanup()


def _site_lookup(boot: BootSettings) -> SiteLookup:
    @lru_cache(maxsize=64)
    def site_for(address: IPv4Address, port: int) -> BootSite:
        return site_from_settings(boot, address, port)

    return site_for
