"""Running an :class:`~diskless.iscsi.endpoint.IscsiPortal` in a thread of the test process.

Real initiators (libiscsi's tools, qemu) then talk to it over 127.0.0.1 while the test waits on
them. The portal's event loop lives in its own thread and is stopped and joined on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from diskless.iscsi.endpoint import IscsiPortal
from diskless.iscsi.target import TargetRegistry


@contextlib.contextmanager
def portal_in_thread(
    targets: TargetRegistry, **portal_options: Any
) -> Iterator[tuple[IscsiPortal, int]]:
    """Serve ``targets`` on a free loopback port; yields the portal and the port.

    ``portal_options`` go to :class:`IscsiPortal` (e.g. ``login_timeout``).
    """
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    box: dict[str, object] = {}
    loop = asyncio.new_event_loop()

    async def main() -> None:
        portal = IscsiPortal(targets, **portal_options)
        addresses = await portal.start("127.0.0.1", 0)
        box["portal"] = portal
        box["port"] = addresses[0][1]
        stop.append(asyncio.Event())
        ready.set()
        serving = asyncio.create_task(portal.serve_forever())
        await stop[0].wait()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await portal.close()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="iscsi-portal", daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in box:
        raise RuntimeError(f"portal did not start: {box.get('error')}")
    try:
        portal = box["portal"]
        assert isinstance(portal, IscsiPortal)
        port = box["port"]
        assert isinstance(port, int)
        yield portal, port
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError("portal thread did not stop")
