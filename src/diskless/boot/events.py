"""Boot events: what each service reports about a client, kept in a bounded in-memory timeline.

Every service (DHCP, TFTP, HTTP, iSCSI) calls :meth:`BootTimeline.record` on the hot path, so it is
a few dict and deque operations, no I/O. The inventory (a later layer) subscribes to persist
events and to learn about unknown MACs; until then the timeline answers "what did this MAC do".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from diskless.boot.machines import format_mac

__all__ = ["BootEvent", "BootStage", "BootTimeline"]


class BootStage(StrEnum):
    DHCP_OFFER = "dhcp-offer"
    DHCP_ACK = "dhcp-ack"
    PROXY_OFFER = "proxy-offer"
    TFTP_SENT = "tftp-sent"
    HTTP_SCRIPT = "http-script"
    HTTP_FILE = "http-file"
    ISCSI_LOGIN = "iscsi-login"
    ISCSI_FIRST_WRITE = "iscsi-first-write"
    ISCSI_LOGOUT = "iscsi-logout"
    DISCOVERED = "discovered"


@dataclass(frozen=True, slots=True)
class BootEvent:
    mac: bytes
    stage: BootStage
    at: float
    """Seconds on the wall clock (``time.time()``), so events merge with logs and captures."""
    detail: str = ""
    known: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "mac": format_mac(self.mac),
            "stage": self.stage.value,
            "at": self.at,
            "detail": self.detail,
            "known": self.known,
        }


Listener = Callable[[BootEvent], None]


def _at(event: BootEvent) -> float:
    return event.at


@dataclass(slots=True)
class BootTimeline:
    """The last ``per_client`` events of each of at most ``clients`` MACs, oldest MAC evicted."""

    per_client: int = 64
    clients: int = 4096
    _events: dict[bytes, deque[BootEvent]] = field(default_factory=dict)
    _listeners: list[Listener] = field(default_factory=list)

    def record(self, event: BootEvent) -> None:
        events = self._events.get(event.mac)
        if events is None:
            if len(self._events) >= self.clients:
                del self._events[next(iter(self._events))]
            events = self._events[event.mac] = deque(maxlen=self.per_client)
        events.append(event)
        for listener in self._listeners:
            listener(event)

    def events(self, mac: bytes) -> list[BootEvent]:
        return list(self._events.get(mac, ()))

    def latest(self) -> list[BootEvent]:
        """The most recent event of every MAC in the timeline, oldest first."""
        return sorted((events[-1] for events in self._events.values() if events), key=_at)

    def recent(self, limit: int) -> list[BootEvent]:
        """The ``limit`` most recent events of all MACs, oldest first."""
        merged = sorted((e for events in self._events.values() for e in events), key=_at)
        return merged[-limit:] if limit > 0 else []

    def discovered(self) -> list[bytes]:
        """MACs that asked to boot without being known, in first-seen order."""
        return [
            mac for mac, events in self._events.items() if any(not event.known for event in events)
        ]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
