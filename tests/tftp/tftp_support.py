"""Running a :class:`~diskless.tftp.TftpService` in a thread of the test process, and a raw client.

Real clients (curl, atftp, tftp-hpa) then talk to it over 127.0.0.1 while the test waits on them.
The service's event loop lives in its own thread; :func:`on_loop` reads its state from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from diskless.boot.events import BootTimeline
from diskless.config import BootSettings, TftpSettings
from diskless.tftp import TftpService, VirtualFiles
from diskless.tftp.endpoint import MacResolver

T = TypeVar("T")


@dataclass
class Running:
    service: TftpService
    port: int
    loop: asyncio.AbstractEventLoop

    def on_loop(self, read: Callable[[], T]) -> T:
        """``read()`` run on the service's loop, so it sees a consistent state."""
        future: asyncio.Future[T] = asyncio.run_coroutine_threadsafe(_call(read), self.loop)
        return future.result(10)

    def wait_for(self, condition: Callable[[TftpService], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.on_loop(lambda: condition(self.service)):
                return True
            time.sleep(0.02)
        return False


async def _call(read: Callable[[], T]) -> T:
    return read()


@contextlib.contextmanager
def tftp_in_thread(
    root: Path,
    *,
    ipxe_dir: Path = Path("/usr/lib/ipxe"),
    timeline: BootTimeline | None = None,
    virtual: VirtualFiles | None = None,
    mac_for_address: MacResolver | None = None,
    **settings: object,
) -> Iterator[Running]:
    """Serve on a free loopback port; ``settings`` are :class:`TftpSettings` fields."""
    # Port 0 (any free port) is not a valid setting, so it is put in after validation.
    tftp = TftpSettings.model_validate({"host": "127.0.0.1", **settings}).model_copy(
        update={"port": 0}
    )
    boot = BootSettings(ipxe_dir=ipxe_dir)
    ready = threading.Event()
    box: dict[str, object] = {}
    loop = asyncio.new_event_loop()

    async def main() -> None:
        service = TftpService(tftp, boot, root, timeline, virtual, mac_for_address=mac_for_address)
        _, port = await service.start()
        box["running"] = Running(service, port, loop)
        task = asyncio.create_task(service.run())
        box["task"] = task
        ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="tftp-service", daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in box:
        raise RuntimeError(f"TFTP service did not start: {box.get('error')}")
    running = box["running"]
    assert isinstance(running, Running)
    try:
        yield running
    finally:
        task = box["task"]
        assert isinstance(task, asyncio.Task)
        loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError("TFTP service thread did not stop")
        if "error" in box:
            raise RuntimeError(f"TFTP service failed: {box['error']}")


class RawClient:
    """A bare UDP socket for driving the server by hand (misbehaving clients)."""

    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)

    def send(self, datagram: bytes, to: tuple[str, int] | None = None) -> None:
        self.sock.sendto(datagram, to or self.server)

    def receive(self, timeout: float = 5.0) -> tuple[bytes, tuple[str, int]]:
        self.sock.settimeout(timeout)
        data, address = self.sock.recvfrom(70000)
        return data, (str(address[0]), int(address[1]))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
