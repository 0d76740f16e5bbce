"""The inventory as a running service: a live snapshot, refreshed on change, and batched writes.

:class:`InventoryService` holds the current :class:`InventorySnapshot`. Services read it with
:meth:`~InventoryService.book` (a plain attribute read: no I/O, no lock), and code that must act on
a change (re-planning iSCSI exports, say) registers with :meth:`~InventoryService.subscribe`. The
snapshot is reloaded, in a worker thread, when

* a commit in this process changed it (:meth:`Inventory.subscribe` → ``call_soon_threadsafe``);
* on PostgreSQL, a ``NOTIFY diskless_inventory`` arrives from any server's commit; the listener
  has its own autocommit connection, and after every (re)connect it reloads in full, because
  notifications sent while it was away are not replayed;
* every ``poll_interval`` seconds the change serial (one row) is newer than the snapshot's: a
  safety net for missed notifications and for other processes writing a SQLite file.

Bursts are coalesced (one reload serves every change that came in while it ran), and a reload
that fails (database down) keeps the old snapshot: machines keep booting from memory.

The same service writes the :class:`InventoryRecorder`'s batches every ``flush_interval``
seconds, prunes old boot events once an hour, and flushes a last time when stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import psycopg

from diskless.boot.machines import MachineBook
from diskless.config import InventorySettings, Settings
from diskless.observe.log import get_logger

from .database import NOTIFY_CHANNEL
from .recorder import InventoryRecorder
from .repository import Inventory
from .snapshot import InventorySnapshot

__all__ = ["InventoryService", "SnapshotListener"]

_log = get_logger(__name__)

SnapshotListener = Callable[[InventorySnapshot], None]
"""Called on the event loop with each new snapshot."""

_PRUNE_EVERY = 3600.0
_HEALTH_CHECK_EVERY = 30.0


class InventoryService:
    """Keeps the inventory snapshot current and writes the boot plane's activity in batches."""

    name = "inventory"

    def __init__(
        self,
        inventory: Inventory,
        *,
        snapshot: InventorySnapshot | None = None,
        recorder: InventoryRecorder | None = None,
        poll_interval: float = 5.0,
        flush_interval: float = 1.0,
        listen: bool = True,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 30.0,
    ) -> None:
        self.inventory = inventory
        self.recorder = recorder
        self.poll_interval = poll_interval
        self.flush_interval = flush_interval
        self.listen = listen and inventory.database.is_postgresql
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.ready = asyncio.Event()
        """Set once a snapshot is loaded and, on PostgreSQL, the first ``LISTEN`` is in place."""
        self.connects = 0
        """How many times the notification listener has (re)connected."""
        self.reloads = 0
        self._snapshot = snapshot or InventorySnapshot.empty()
        self._loaded = snapshot is not None
        self._listeners: list[SnapshotListener] = []
        self._wake = asyncio.Event()
        self._force = False

    @classmethod
    def from_settings(
        cls,
        inventory: Inventory,
        settings: InventorySettings,
        *,
        snapshot: InventorySnapshot | None = None,
        recorder: InventoryRecorder | None = None,
    ) -> InventoryService:
        return cls(
            inventory,
            snapshot=snapshot,
            recorder=recorder,
            poll_interval=settings.poll_interval,
            flush_interval=settings.flush_interval,
        )

    @classmethod
    def open(cls, settings: Settings) -> InventoryService:
        """Open (and migrate) the inventory ``settings`` name, load the first snapshot, and
        return the service with a recorder (subscribe ``service.recorder`` to the timeline).

        Blocking: call it while building the services, before the event loop serves anything,
        so every service starts from the stored machines.
        """
        inventory = Inventory.from_settings(settings)
        return cls.from_settings(
            inventory,
            settings.inventory,
            snapshot=inventory.load_snapshot(),
            recorder=InventoryRecorder(),
        )

    # -- what the other services read ----------------------------------------------------------

    @property
    def snapshot(self) -> InventorySnapshot:
        return self._snapshot

    def book(self) -> MachineBook:
        """The current machine book (for ``DhcpService(machines=service.book)`` and the like)."""
        return self._snapshot.book

    def subscribe(self, listener: SnapshotListener) -> Callable[[], None]:
        """Call ``listener(snapshot)`` on the event loop after each new snapshot."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def request_reload(self, serial: int | None = None, *, force: bool = False) -> None:
        """Reload soon if ``serial`` is newer than the snapshot (``None`` or ``force``: always)."""
        if force or serial is None:
            self._force = True
            self._wake.set()
        elif serial > self._snapshot.serial:
            self._wake.set()

    async def refresh(self) -> InventorySnapshot:
        """Reload now, publish if it changed, and return the current snapshot."""
        await self._reload(force=True)
        return self._snapshot

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def committed(serial: int) -> None:
            # Runs in whichever thread committed.
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self.request_reload, serial)

        unsubscribe = self.inventory.subscribe(committed)
        listening = asyncio.Event()
        try:
            if not self._loaded:
                await self._reload(force=True)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._refresh_loop(), name="inventory:refresh")
                if self.listen:
                    group.create_task(self._listen_loop(listening), name="inventory:listen")
                    await listening.wait()
                if self.poll_interval > 0:
                    group.create_task(self._poll_loop(), name="inventory:poll")
                if self.recorder is not None:
                    group.create_task(self._flush_loop(self.recorder), name="inventory:flush")
                self.ready.set()
        finally:
            unsubscribe()
            if self.recorder is not None:
                # Shutting down: write what is pending, in this thread (the loop is stopping).
                try:
                    self.recorder.flush(self.inventory)
                except Exception:
                    _log.exception("could not write the last boot events")

    async def _reload(self, *, force: bool) -> None:
        try:
            snapshot = await asyncio.to_thread(self.inventory.load_snapshot)
        except Exception as exc:
            _log.warning("inventory reload failed; keeping the current snapshot", error=str(exc))
            raise
        self.reloads += 1
        changed = snapshot.serial != self._snapshot.serial or not self._loaded
        self._loaded = True
        if changed or force:
            self._snapshot = snapshot
        if changed:
            _log.info(
                "inventory snapshot loaded", serial=snapshot.serial, machines=len(snapshot.book)
            )
            for listener in list(self._listeners):
                try:
                    listener(snapshot)
                except Exception:
                    _log.exception("inventory snapshot listener failed")

    async def _refresh_loop(self) -> None:
        delay = self.reconnect_delay
        while True:
            await self._wake.wait()
            self._wake.clear()
            force, self._force = self._force, False
            try:
                await self._reload(force=force)
            except Exception:
                # Try again later; meanwhile the old snapshot serves.
                self._force = self._force or force
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_reconnect_delay)
                self._wake.set()
            else:
                delay = self.reconnect_delay

    async def _listen_loop(self, listening: asyncio.Event) -> None:
        conninfo = self.inventory.database.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        delay = self.reconnect_delay
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.connects += 1
                    delay = self.reconnect_delay
                    # Notifications sent before LISTEN (while we were away, or between the
                    # first load and now) are lost: reload everything.
                    await self._reload_quietly()
                    listening.set()
                    while True:
                        async for notice in connection.notifies(timeout=_HEALTH_CHECK_EVERY):
                            try:
                                self.request_reload(int(notice.payload))
                            except ValueError:
                                self.request_reload(force=True)
                        # No news for a while: make sure the connection still works.
                        await connection.execute("SELECT 1")
            except (psycopg.Error, OSError) as exc:
                _log.warning(
                    "inventory listener disconnected; reconnecting",
                    error=str(exc),
                    retry_in=delay,
                )
            listening.set()  # do not hold start-up hostage to an unreachable listener
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_reconnect_delay)

    async def _reload_quietly(self) -> None:
        try:
            await self._reload(force=True)
        except Exception:
            self.request_reload(force=True)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                serial = await asyncio.to_thread(self.inventory.serial)
            except Exception as exc:
                _log.debug("inventory poll failed", error=str(exc))
                continue
            self.request_reload(serial)

    async def _flush_loop(self, recorder: InventoryRecorder) -> None:
        pruned = time.monotonic()
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await asyncio.to_thread(recorder.flush, self.inventory)
                if time.monotonic() - pruned >= _PRUNE_EVERY:
                    pruned = time.monotonic()
                    await asyncio.to_thread(self.inventory.prune_boot_events)
            except Exception as exc:
                _log.warning("could not write boot events; this batch is lost", error=str(exc))
