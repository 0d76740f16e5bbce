"""Running an :class:`~diskless.http.HttpBootService` in a thread of the test process.

Real clients (curl) then talk to it over 127.0.0.1 while the test waits on them. The service's
event loop lives in its own thread; leaving the context cancels the service the way
``diskless serve`` does and joins the thread, re-raising whatever the service raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from diskless.http import HttpBootService


@dataclass(frozen=True)
class Served:
    host: str
    port: int

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.contextmanager
def serving(service: HttpBootService) -> Iterator[Served]:
    """Run ``service`` until the block ends; yields where it listens."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        task = asyncio.create_task(service.run())
        box["task"] = task
        listening = asyncio.ensure_future(service.listening())
        done, _ = await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if listening in done:
            box["where"] = listening.result()
        else:
            listening.cancel()
        ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=run, name="http-boot-plane", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the HTTP boot plane did not start in 10 s")
    try:
        if "where" not in box:
            thread.join(10)
            raise RuntimeError(f"the HTTP boot plane did not start: {box.get('error')!r}")
        host, port = box["where"]  # type: ignore[misc]
        yield Served(str(host), int(port))
    finally:
        task = box.get("task")
        if isinstance(task, asyncio.Task) and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("the HTTP boot plane did not stop in 10 s after cancel")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes


def curl(url: str, *options: str, timeout: float = 30.0) -> Fetched:
    """Fetch ``url`` with curl (a client nobody here wrote); status, headers and body."""
    done = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--include",
            "--max-time",
            str(timeout),
            *options,
            url,
        ],
        capture_output=True,
        check=True,
        timeout=timeout + 5,
    )
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Fetched(status, headers, body)
