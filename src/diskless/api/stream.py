"""Live boot events for the server-sent-events route: one bounded queue per listening client.

:class:`BootEventStream` subscribes once to the :class:`BootTimeline`; each event is copied into
every open client queue (a client that falls too far behind loses events rather than slowing the
boot plane, and is told how many with an SSE comment). :meth:`BootEventStream.shutdown` ends every
stream, so the server can stop without waiting for the clients to hang up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from diskless.boot.events import BootEvent, BootTimeline

__all__ = ["BootEventStream"]

_QUEUE_SIZE = 1024


class _Client:
    __slots__ = ("dropped", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[BootEvent | None] = asyncio.Queue(_QUEUE_SIZE)
        self.dropped = 0


class BootEventStream:
    """Fans the timeline's events out to the clients of ``GET /events``."""

    def __init__(self, timeline: BootTimeline, *, keepalive: float = 15.0) -> None:
        self._clients: set[_Client] = set()
        self._closed = False
        self.keepalive = keepalive
        timeline.subscribe(self._publish)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def _publish(self, event: BootEvent) -> None:
        # Called by BootTimeline.record, on the event loop, on the boot plane's hot path.
        for client in self._clients:
            try:
                client.queue.put_nowait(event)
            except asyncio.QueueFull:
                client.dropped += 1

    def shutdown(self) -> None:
        """End every stream now, and refuse new ones."""
        self._closed = True
        for client in self._clients:
            while not client.queue.empty():
                client.queue.get_nowait()
            client.queue.put_nowait(None)

    async def stream(self, mac: bytes | None = None) -> AsyncIterator[str]:
        """SSE text: a ``boot`` event per boot event (of ``mac`` only, if given)."""
        if self._closed:
            return
        client = _Client()
        self._clients.add(client)
        try:
            # Sent at once, so the client knows it is subscribed from here on.
            yield "retry: 3000\n: subscribed\n\n"
            sequence = 0
            while True:
                try:
                    event = await asyncio.wait_for(client.queue.get(), self.keepalive)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is None:
                    return
                if client.dropped:
                    yield f": {client.dropped} events dropped (client too slow)\n\n"
                    client.dropped = 0
                if mac is not None and event.mac != mac:
                    continue
                sequence += 1
                data = json.dumps(event.to_json(), separators=(",", ":"))
                yield f"event: boot\nid: {sequence}\ndata: {data}\n\n"
        finally:
            self._clients.discard(client)
