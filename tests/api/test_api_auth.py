"""Bearer tokens over real HTTP: 401 without a valid token, 403 for a read-only token writing,
/health and /openapi.json open, the bootstrap token, and a bind failure named for the operator."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from api_support import RunningApi, start_api

from diskless.api import ApiService, bootstrap_token
from diskless.boot.events import BootTimeline
from diskless.config import ApiSettings, Settings
from diskless.errors import ConfigError
from diskless.inventory import Inventory, InventoryConflictError
from diskless.inventory.endpoint import InventoryService
from diskless.storage.library import ImageLibrary

MACHINE = {"mac": "52:54:00:aa:00:01", "hostname": "pc01", "chap_secret": "s3cret-s3cret"}


def test_health_and_openapi_need_no_token(api: RunningApi) -> None:
    anonymous = api.client(token=None)

    health = anonymous.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert anonymous.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/machines"),
        ("POST", "/machines"),
        ("GET", "/metrics"),
        ("GET", "/events"),
        ("GET", "/tokens"),
        ("DELETE", "/groups/lab"),
        ("GET", "/images"),
    ],
)
def test_a_route_without_a_token_is_401(api: RunningApi, method: str, path: str) -> None:
    response = api.client(token=None).request(method, path)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "token" in response.json()["detail"]


def test_an_unknown_or_revoked_token_is_401(api: RunningApi) -> None:
    assert api.client(token="dl_not-a-real-token").get("/machines").status_code == 401
    assert api.client(token="garbage").get("/machines").status_code == 401
    other = api.inventory.create_token("ci", actor="test").token
    assert api.client(token=other).get("/machines").status_code == 200

    assert api.client().delete("/tokens/ci").status_code == 204

    revoked = api.client(token=other).get("/machines")
    assert revoked.status_code == 401
    assert revoked.json()["detail"] == "invalid or revoked token"


def test_a_read_only_token_reads_but_may_not_write(api: RunningApi) -> None:
    assert api.client().post("/machines", json=MACHINE).status_code == 201
    reader = api.client(
        token=api.inventory.create_token("grafana", read_only=True, actor="t").token
    )

    listed = reader.get("/machines")
    assert listed.status_code == 200
    assert [m["hostname"] for m in listed.json()] == ["pc01"]
    assert listed.json()[0]["chap_secret"] == "********"  # secrets stay with admin tokens
    assert api.client().get("/machines/pc01").json()["chap_secret"] == "s3cret-s3cret"
    for method, path, body in [
        ("POST", "/machines", {**MACHINE, "mac": "52:54:00:aa:00:02", "hostname": "pc02"}),
        ("PATCH", "/machines/pc01", {"notes": "x"}),
        ("DELETE", "/machines/pc01", None),
        ("POST", "/tokens", {"name": "escalate"}),
        ("PUT", "/settings/motd", {"value": "hi"}),
    ]:
        response = reader.request(method, path, json=body)
        assert response.status_code == 403, (method, path)
        assert "read-only" in response.json()["detail"]
    assert api.client().get("/machines/pc01").json()["notes"] == ""
    assert [t["name"] for t in api.client().get("/tokens").json()] == ["admin", "grafana"]


def test_changes_are_audited_under_the_token_name(api: RunningApi) -> None:
    api.client().post("/machines", json=MACHINE)

    entries = api.client().get("/audit", params={"target": "52:54:00:aa:00:01"}).json()

    assert [(e["actor"], e["action"]) for e in entries] == [("api:admin", "machine.create")]
    assert entries[0]["after"]["chap_secret"] == "********"


def test_tokens_made_through_the_api_work_and_are_shown_once(api: RunningApi) -> None:
    created = api.client().post("/tokens", json={"name": "cli", "read_only": False})
    assert created.status_code == 201
    secret = created.json()["token"]

    assert api.client(token=secret).get("/tokens").status_code == 200
    assert all("token" not in t for t in api.client().get("/tokens").json())
    duplicate = api.client().post("/tokens", json={"name": "cli"})
    assert duplicate.status_code == 409
    assert duplicate.json()["field"] == "name"


def test_bootstrap_token_is_accepted_by_a_running_server(api: RunningApi, tmp_path: Path) -> None:
    url = api.inventory.database.url.render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path / "boot", inventory={"database_url": url})

    first = bootstrap_token(settings, "operator")

    assert first.info.name == "operator"
    assert api.client(token=first.token).get("/machines").status_code == 200
    with pytest.raises(InventoryConflictError):
        bootstrap_token(settings, "operator")


def test_bootstrap_token_creates_the_default_sqlite_inventory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fresh")

    made = bootstrap_token(settings, "first", read_only=True)

    inventory = Inventory.from_settings(settings)
    try:
        info = inventory.verify_token(made.token)
    finally:
        inventory.close()
    assert info is not None
    assert info.read_only


def test_a_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        inventory = Inventory.open(f"sqlite:///{tmp_path / 'inv.sqlite3'}")
        try:
            service = ApiService(
                ApiSettings(host="127.0.0.1", port=port),
                inventory=InventoryService(inventory, snapshot=inventory.load_snapshot()),
                timeline=BootTimeline(),
                library=ImageLibrary(tmp_path / "data"),
            )
            with pytest.raises(ConfigError, match=rf"api: cannot listen on 127.0.0.1:{port}"):
                asyncio.run(service.run())
        finally:
            inventory.close()


def test_the_server_stops_while_a_client_follows_the_events(tmp_path: Path) -> None:
    inventory = Inventory.open(f"sqlite:///{tmp_path / 'inv.sqlite3'}")
    running, thread, stop = start_api(inventory, tmp_path / "data")
    try:
        with running.client().stream("GET", "/events") as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            next(lines)
            running.loop.call_soon_threadsafe(stop.set)
            thread.join(15)
            assert not thread.is_alive()
            rest = list(lines)  # the stream ended instead of hanging
        assert all(not line.startswith("event:") for line in rest)
    finally:
        for client in running.clients:
            client.close()
        inventory.close()
