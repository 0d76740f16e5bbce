"""A real API server per test: ``ApiService`` and ``InventoryService`` on 127.0.0.1, port 0.

They run in a thread with their own event loop, through ``runtime.run_services`` as
``diskless serve`` runs them, and the tests talk to them over real HTTP with httpx. The inventory
is SQLite or a real PostgreSQL (the inventory tests' fixture: a throwaway cluster, or
``DISKLESS_TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from diskless.api import ApiService
from diskless.boot.events import BootEvent, BootTimeline
from diskless.config import ApiSettings
from diskless.inventory import Inventory, InventoryRecorder
from diskless.inventory.endpoint import InventoryService
from diskless.runtime import run_services
from diskless.storage.library import ImageLibrary

MiB = 1 << 20


def _inventory_fixtures() -> ModuleType:
    # The inventory tests' conftest (and its pg_cluster helper), loaded under another name.
    folder = Path(__file__).parents[1] / "inventory"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("inventory_conftest", folder / "conftest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _inventory_fixtures()
postgres_server = _fixtures.postgres_server
postgres_database = _fixtures.postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inventory.sqlite3'}"
    server, name = request.getfixturevalue("postgres_database")
    url: str = server.url(name)
    return url


@dataclass
class RunningApi:
    """A started server and what it works on."""

    url: str
    token: str
    """An admin (read-write) token."""
    inventory: Inventory
    service: InventoryService
    api: ApiService
    timeline: BootTimeline
    library: ImageLibrary
    loop: asyncio.AbstractEventLoop
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = "admin") -> httpx.Client:
        """A client sending ``token`` (``"admin"``: the admin token; ``None``: no token)."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'admin' else token}"
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def record(self, event: BootEvent) -> None:
        """Record ``event`` on the timeline, in the server's loop (as a boot service would)."""
        self.loop.call_soon_threadsafe(self.timeline.record, event)

    def refresh(self) -> None:
        """Wait until the snapshot reflects every commit so far."""
        asyncio.run_coroutine_threadsafe(self.service.refresh(), self.loop).result(30)


def start_api(
    inventory: Inventory, data_dir: Path, settings: ApiSettings | None = None
) -> tuple[RunningApi, threading.Thread, asyncio.Event]:
    timeline = BootTimeline()
    recorder = InventoryRecorder()
    timeline.subscribe(recorder)
    service = InventoryService(
        inventory,
        snapshot=inventory.load_snapshot(),
        recorder=recorder,
        poll_interval=0,
        flush_interval=0.1,
    )
    library = ImageLibrary(data_dir)
    api = ApiService(
        settings or ApiSettings(host="127.0.0.1", port=0),
        inventory=service,
        timeline=timeline,
        library=library,
    )
    started = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        box["loop"] = asyncio.get_running_loop()
        await run_services([service, api], stop=stop, on_ready=started.set)

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=thread_main, name="api-server", daemon=True)
    thread.start()
    assert started.wait(30), "the API did not start"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    assert api.address is not None
    host, port = api.address
    token = inventory.create_token("admin", actor="test").token
    loop = box["loop"]
    stop = box["stop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert isinstance(stop, asyncio.Event)
    running = RunningApi(
        url=f"http://{host}:{port}",
        token=token,
        inventory=inventory,
        service=service,
        api=api,
        timeline=timeline,
        library=library,
        loop=loop,
    )
    return running, thread, stop


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[RunningApi]:
    inventory = Inventory.open(database_url)
    running, thread, stop = start_api(inventory, tmp_path / "data")
    try:
        yield running
    finally:
        for client in running.clients:
            client.close()
        running.loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        inventory.close()
    assert not thread.is_alive(), "the API did not stop"


def add_golden(library: ImageLibrary, name: str, content: bytes, size: int = 4 * MiB) -> int:
    """A golden version of ``name`` starting with ``content`` (zeros after); its number."""
    raw = library.data_dir.parent / f"{name}-{len(content)}.raw"
    with raw.open("wb") as file:
        file.truncate(size)
        file.write(content)
    digest = library.store.add(raw)
    with library.catalog.locked():
        return library.catalog.add_version(name, digest=digest, size=size, source=str(raw)).version
