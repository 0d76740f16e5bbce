"""What the API's routes work on, reachable from each request (``app.state.api``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from fastapi import Request

from diskless.boot.events import BootTimeline
from diskless.inventory.endpoint import InventoryService
from diskless.inventory.repository import Inventory
from diskless.storage.library import ImageLibrary

from .metrics import ApiMetrics
from .stream import BootEventStream

__all__ = ["ApiContext", "DiskRelease", "context"]

DiskRelease = Callable[[str], AbstractAsyncContextManager[None]]
"""Closes a disk in the service that exports it for the ``async with`` block (the iSCSI
service's ``released``); raises ``ImageBusyError`` while a machine uses it."""


@contextlib.asynccontextmanager
async def _nothing_to_release(disk: str) -> AsyncIterator[None]:
    del disk  # No service exports disks (iSCSI is off): the disk lock alone protects it.
    yield


@dataclass(slots=True)
class ApiContext:
    service: InventoryService
    """The live inventory: its repository and the current snapshot."""
    timeline: BootTimeline
    library: ImageLibrary
    events: BootEventStream
    metrics: ApiMetrics
    wake_interface: str | None = None
    """The server's Wake-on-LAN interface (``wake.interface``, else ``dhcp.interface``)."""
    release_disk: DiskRelease = _nothing_to_release

    @property
    def inventory(self) -> Inventory:
        return self.service.inventory


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx
