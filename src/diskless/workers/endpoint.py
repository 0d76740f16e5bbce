"""Spawned worker processes and the pipe between each and the main process.

A service that spreads its work over processes (``iscsi.workers``, ``tftp.workers``) spawns each
worker with one end of a :func:`multiprocessing.Pipe`. Messages are tuples whose first item names
them. The worker side is the same for every service: it ignores SIGINT and SIGTERM (the main
process decides when to stop), serves until its service ends or the main process sends
``("stop",)`` or goes away, reports its counters as ``("stats", report)`` once a second when they
changed (never per request), and tells a start-up failure as ``("failed", text)``. The main side
stops the workers with :func:`stop_workers`. What else crosses the pipe is each service's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from diskless.config import LoggingSettings
from diskless.errors import DisklessError
from diskless.observe.log import configure_logging, get_logger

__all__ = [
    "Worker",
    "detach",
    "report_changes",
    "run_worker",
    "serve_until_stopped",
    "stop_workers",
]

_log = get_logger(__name__)
Worker = tuple[BaseProcess, Connection]
"""A worker process and the main process's end of its pipe."""
Message = tuple[Any, ...]
STATS_INTERVAL = 1.0
"""Seconds between two looks at a worker's counters."""


def run_worker(
    main: Callable[[], Coroutine[Any, Any, None]],
    connection: Connection,
    logging: LoggingSettings | None,
) -> None:
    """The body of a worker process: run ``main()`` on an event loop of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if logging is not None:
        configure_logging(logging)
    try:
        asyncio.run(main())
    except DisklessError as exc:
        with contextlib.suppress(OSError):
            connection.send(("failed", str(exc)))
        raise SystemExit(1) from exc


async def serve_until_stopped(
    serving: Coroutine[Any, Any, None],
    connection: Connection,
    *,
    on_message: Callable[[Message], None],
    report: Callable[[], object | None],
) -> None:
    """In a worker: run ``serving`` until it ends, or until the main process stops us.

    Messages other than ``("stop",)`` go to ``on_message``; ``report()`` (``None`` while there is
    nothing to report) is sent as ``("stats", ...)`` when it changed since the last one sent.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def from_main() -> None:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            stop.set()  # The main process is gone: stop serving.
            return
        if message[0] == "stop":
            stop.set()
        else:
            on_message(message)

    loop.add_reader(connection.fileno(), from_main)
    serving_task = asyncio.create_task(serving)
    stopping = asyncio.create_task(stop.wait())
    reporting = asyncio.create_task(report_changes(report, connection))
    await asyncio.wait({serving_task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (reporting, serving_task, stopping):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving_task


async def report_changes(report: Callable[[], object | None], connection: Connection) -> None:
    """Send ``("stats", report())`` every :data:`STATS_INTERVAL` seconds when it changed."""
    last: object | None = None
    while True:
        await asyncio.sleep(STATS_INTERVAL)
        current = report()
        if current is None or current == last:
            continue
        try:
            connection.send(("stats", current))
        except (OSError, ValueError):
            return  # The main process is gone; the worker's reader stops it.
        last = current


def detach(workers: Sequence[Worker], loop: asyncio.AbstractEventLoop) -> None:
    """In the main process: stop reading the workers' pipes (before stopping them)."""
    for _process, connection in workers:
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(connection.fileno())


def stop_workers(workers: Sequence[Worker], *, timeout: float, what: str) -> None:
    """Ask every worker to stop, wait up to ``timeout`` seconds for them all, kill the rest.

    Blocking: from a running event loop, call it in a thread (after :func:`detach`). Each worker
    finishes its own shutdown (closes its sockets, flushes its disks) before it exits.
    """
    for _process, connection in workers:
        with contextlib.suppress(OSError, ValueError):
            connection.send(("stop",))
    deadline = time.monotonic() + timeout
    for process, connection in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            _log.error(f"{what} worker did not stop; killing it", pid=process.pid)
            process.kill()
            process.join(5)
        connection.close()
