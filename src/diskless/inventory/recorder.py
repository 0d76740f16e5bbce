"""The boot plane's activity, collected in memory and written to the inventory in batches.

:class:`InventoryRecorder` subscribes to the :class:`BootTimeline` (``timeline.subscribe(
recorder)``). Each event costs a lock and a dict or deque operation on the hot path; nothing is
written until :meth:`flush` (every ``inventory.flush_interval`` seconds, from
:mod:`diskless.inventory.endpoint`). A DHCP storm therefore turns into one transaction a second:

* an unknown MAC (an event with ``known=False``) is folded into one pending sighting per MAC
  (a count, first and last time, the last arch, vendor class and address seen);
* a known machine's events are kept, at most ``events_per_mac`` per MAC between two flushes
  (the newest);
* at most ``max_macs`` distinct MACs wait in each of the two; more are counted in ``dropped``
  and not kept, so a flood of random MACs costs bounded memory.

A pending event's ``detail`` may carry ``key=value`` words that feed the discovered list:
``arch=7``, ``vendor=PXEClient:Arch:00007:UNDI:003016``, ``ip=198.18.0.5``; a first word that is
an IPv4 address (as in DHCP offer details) is taken as the address.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from diskless.boot.events import BootEvent, BootStage

from .records import Sighting
from .repository import Inventory

__all__ = ["InventoryRecorder", "RecorderBatch"]


@dataclass(slots=True)
class RecorderBatch:
    events: list[BootEvent] = field(default_factory=list)
    sightings: list[Sighting] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.sightings)


def _facts(detail: str) -> tuple[int | None, str | None, IPv4Address | None]:
    arch: int | None = None
    vendor: str | None = None
    ip: IPv4Address | None = None
    for index, word in enumerate(detail.split()):
        key, sep, value = word.partition("=")
        try:
            if not sep:
                if index == 0:
                    ip = IPv4Address(word)
            elif key == "arch":
                arch = int(value, 0)
            elif key == "vendor":
                vendor = value
            elif key == "ip":
                ip = IPv4Address(value)
        except ValueError:
            continue
    return arch, vendor, ip


class InventoryRecorder:
    """Collects boot events and unknown-MAC sightings; thread-safe, bounded, cheap."""

    def __init__(self, *, max_macs: int = 4096, events_per_mac: int = 32) -> None:
        self.max_macs = max_macs
        self.events_per_mac = events_per_mac
        self.dropped = 0
        """Events or sightings not kept because too many MACs were pending."""
        self._lock = threading.Lock()
        self._events: dict[bytes, deque[BootEvent]] = {}
        self._sightings: dict[bytes, Sighting] = {}

    def __call__(self, event: BootEvent) -> None:
        """The :class:`BootTimeline` listener."""
        if event.known:
            self.event(event)
        else:
            # The DHCP responder records DISCOVERED once per request of an unknown MAC, and its
            # offer as another unknown event: only the former counts as a request.
            arch, vendor, ip = _facts(event.detail)
            counted = 1 if event.stage is BootStage.DISCOVERED else 0
            self.sighting(event.mac, event.at, arch=arch, vendor_class=vendor, ip=ip, count=counted)

    def event(self, event: BootEvent) -> None:
        with self._lock:
            queue = self._events.get(event.mac)
            if queue is None:
                if len(self._events) >= self.max_macs:
                    self.dropped += 1
                    return
                queue = self._events[event.mac] = deque(maxlen=self.events_per_mac)
            queue.append(event)

    def sighting(
        self,
        mac: bytes,
        at: float,
        *,
        arch: int | None = None,
        vendor_class: str | None = None,
        ip: IPv4Address | None = None,
        count: int = 1,
    ) -> None:
        """An unknown MAC asked to boot (``count`` requests; 0 just adds facts)."""
        with self._lock:
            pending = self._sightings.get(mac)
            if pending is None:
                if len(self._sightings) >= self.max_macs:
                    self.dropped += 1
                    return
                self._sightings[mac] = Sighting(mac, at, arch, vendor_class, ip, count, at)
                return
            self._sightings[mac] = replace(
                pending,
                at=max(pending.at, at),
                first_at=min(pending.first_at or pending.at, at),
                arch=arch if arch is not None else pending.arch,
                vendor_class=vendor_class if vendor_class is not None else pending.vendor_class,
                ip=ip if ip is not None else pending.ip,
                count=pending.count + count,
            )

    def pending(self) -> int:
        """Events and sightings waiting for the next flush."""
        with self._lock:
            return sum(len(queue) for queue in self._events.values()) + len(self._sightings)

    def drain(self) -> RecorderBatch:
        """Take everything pending (oldest event first)."""
        with self._lock:
            events, self._events = self._events, {}
            sightings, self._sightings = self._sightings, {}
        ordered = sorted((event for queue in events.values() for event in queue), key=_at)
        return RecorderBatch(ordered, list(sightings.values()))

    def flush(self, inventory: Inventory) -> RecorderBatch:
        """Drain and write one batch (blocking: call it from a worker thread)."""
        batch = self.drain()
        if batch.sightings:
            inventory.record_discovered(batch.sightings)
        if batch.events:
            inventory.record_boot_events(batch.events)
        return batch


def _at(event: BootEvent) -> float:
    return event.at
