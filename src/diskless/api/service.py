"""The admin API as a service of ``diskless serve``: uvicorn on its own listener.

The listener is bound here (so a port in use is a :class:`ConfigError` naming ``api.host`` and
``api.port``) and handed to uvicorn, whose signal handling is switched off: ``diskless serve``
owns SIGINT and SIGTERM and stops services by cancelling them. On cancel the live event streams
are ended, uvicorn stops accepting, and requests in flight get a short grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from diskless.boot.events import BootTimeline
from diskless.config import ApiSettings
from diskless.errors import ConfigError, DisklessError
from diskless.inventory.endpoint import InventoryService
from diskless.observe.log import get_logger
from diskless.storage.library import ImageLibrary

from .app import build_app
from .context import ApiContext, DiskRelease
from .metrics import ApiMetrics, StatsReader
from .stream import BootEventStream

__all__ = ["ApiService"]

_log = get_logger("diskless.api")
_SHUTDOWN_GRACE = 3.0
_BACKLOG = 128


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers (the runtime's handlers stay in place)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiService:
    """Serves the REST API (``name = "api"``) until cancelled."""

    name = "api"

    def __init__(
        self,
        settings: ApiSettings,
        *,
        inventory: InventoryService,
        timeline: BootTimeline,
        library: ImageLibrary,
        stats: StatsReader | None = None,
        wake_interface: str | None = None,
        release_disk: DiskRelease | None = None,
    ) -> None:
        self.settings = settings
        self.context = ApiContext(
            service=inventory,
            timeline=timeline,
            library=library,
            events=BootEventStream(timeline),
            metrics=ApiMetrics(timeline, stats),
            wake_interface=wake_interface,
        )
        if release_disk is not None:
            self.context.release_disk = release_disk
        self.app = build_app(self.context)
        self.ready = asyncio.Event()
        """Set once the listener is bound and uvicorn serves."""
        self.address: tuple[str, int] | None = None
        """Where the API listens, once ``ready`` is set (``api.port = 0`` picks a port)."""

    def _bind(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(_BACKLOG)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"api: cannot listen on {host}:{port}: {reason} (set api.host / api.port, "
                "or api.enabled = false)"
            ) from exc
        sock.setblocking(False)
        return sock

    async def run(self) -> None:
        sock = self._bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=int(_SHUTDOWN_GRACE),
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="api:uvicorn")
        try:
            while not server.started:
                if task.done():
                    await task
                    raise DisklessError("api: the server stopped while starting")
                await asyncio.sleep(0.01)
            address = sock.getsockname()
            self.address = (str(address[0]), int(address[1]))
            _log.info("api listening", host=self.address[0], port=self.address[1])
            self.ready.set()
            await asyncio.shield(task)
            raise DisklessError("api: the server stopped")
        finally:
            self.context.events.shutdown()
            server.should_exit = True
            if not task.done():
                done, _ = await asyncio.wait({task}, timeout=_SHUTDOWN_GRACE + 2)
                if not done:
                    server.force_exit = True
                    task.cancel()
                    await asyncio.wait({task})
            sock.close()
