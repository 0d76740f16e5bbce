"""What the API's routes work on, reachable from each request (``app.state.api``)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from diskless.boot.events import BootTimeline
from diskless.inventory.endpoint import InventoryService
from diskless.inventory.repository import Inventory
from diskless.storage.library import ImageLibrary

from .metrics import ApiMetrics
from .stream import BootEventStream

__all__ = ["ApiContext", "context"]


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

    @property
    def inventory(self) -> Inventory:
        return self.service.inventory


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx
