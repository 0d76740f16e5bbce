"""Live boot events (SSE), Prometheus metrics, the OpenAPI document, and the API under
``diskless serve``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_support import RunningApi
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from diskless.api import bootstrap_token
from diskless.boot.events import BootEvent, BootStage
from diskless.boot.machines import parse_mac
from diskless.config import Settings

MAC = "52:54:00:aa:00:01"


def _sse_events(lines: object, count: int) -> list[dict[str, object]]:
    """The data of the next ``count`` SSE events of type ``boot``."""
    found: list[dict[str, object]] = []
    kind = None
    for line in lines:  # type: ignore[attr-defined]
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and kind == "boot":
            found.append(json.loads(line.split(":", 1)[1]))
            if len(found) == count:
                return found
    pytest.fail(f"the stream ended after {found}")


def test_sse_delivers_events_recorded_on_the_timeline(api: RunningApi) -> None:
    with (
        api.client().stream("GET", "/events") as everything,
        api.client().stream("GET", "/events", params={"mac": "525400aa0002"}) as one_mac,
    ):
        assert everything.status_code == 200
        assert everything.headers["content-type"].startswith("text/event-stream")
        all_lines, mac_lines = everything.iter_lines(), one_mac.iter_lines()
        # The first comment means the subscription is in place.
        assert next(all_lines).startswith("retry:")
        assert next(mac_lines).startswith("retry:")
        api.record(BootEvent(parse_mac(MAC), BootStage.DHCP_OFFER, 1.5, "192.168.1.50"))
        api.record(BootEvent(parse_mac("52:54:00:aa:00:02"), BootStage.ISCSI_LOGIN, 2.5, "x"))

        first, second = _sse_events(all_lines, 2)
        (only,) = _sse_events(mac_lines, 1)

    assert first == {
        "mac": MAC,
        "stage": "dhcp-offer",
        "at": 1.5,
        "detail": "192.168.1.50",
        "known": True,
    }
    assert second["stage"] == only["stage"] == "iscsi-login"
    bad = api.client().get("/events", params={"mac": "nope"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "mac"]


def test_metrics_parse_and_count(api: RunningApi) -> None:
    client = api.client()
    client.post("/machines", json={"mac": MAC, "hostname": "pc01"})
    api.refresh()
    for _ in range(3):
        api.record(BootEvent(parse_mac(MAC), BootStage.HTTP_SCRIPT, 1_800_000_000.0))
    api.client(token=None).get("/health")  # a round trip: the events above are recorded
    deadline = time.monotonic() + 10
    while client.get("/machines/pc01").json()["last_seen"] is None:  # stored in batches
        assert time.monotonic() < deadline, "last_seen was never stored"
        time.sleep(0.05)

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples[("diskless_boot_events_total", (("stage", "http-script"),))] == 3
    assert samples[("diskless_boot_events_total", (("stage", "iscsi-login"),))] == 0
    assert samples[("diskless_machines", ())] == 1
    assert samples[("diskless_discovered_macs", ())] == 0
    seen = ("diskless_machine_last_seen_timestamp_seconds", (("hostname", "pc01"), ("mac", MAC)))
    assert samples[seen] == 1_800_000_000.0


def test_openapi_document_is_valid_and_tagged(api: RunningApi) -> None:
    document = api.client(token=None).get("/openapi.json").json()

    validate(document)
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    assert all(operation.get("tags") for _, _, operation in operations)
    assert {"/machines", "/machines/{key}/disk/commit", "/events", "/metrics"} <= set(
        document["paths"]
    )
    secured = {path for path, _, operation in operations if operation.get("security")}
    assert "/health" not in secured
    assert "/machines" in secured
    assert document["components"]["securitySchemes"]["token"]["scheme"] == "bearer"


def _event(log: Path, name: str, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if f'"event": "{name}"' in line:
                found: dict[str, object] = json.loads(line)
                return found
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"no {name!r} in the log:\n{log.read_text()[-3000:]}")


@pytest.mark.timeout(120)
def test_serve_runs_the_api_with_service_metrics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = bootstrap_token(Settings(data_dir=data), "operator").token
    config = tmp_path / "diskless.toml"
    config.write_text(
        f'data_dir = "{data}"\n[iscsi]\nhost = "127.0.0.1"\nport = 0\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\n[tftp]\nhost = "127.0.0.1"\nport = 0\n'
        '[api]\nhost = "127.0.0.1"\nport = 0\n[logging]\nformat = "json"\n',
        encoding="utf-8",
    )
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKLESS_")}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "diskless", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _event(log, "ready", server)
        listening = _event(log, "api listening", server)
        url = f"http://127.0.0.1:{listening['port']}"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            created = client.post("/machines", json={"mac": MAC, "hostname": "pc01"})
            assert created.status_code == 201
            metrics = client.get("/metrics").text
        names = {family.name for family in text_string_to_metric_families(metrics)}
        assert {"diskless_tftp_requests", "diskless_iscsi_connections"} <= names
        assert {"diskless_iscsi_sessions", "diskless_boot_events"} <= names
    finally:
        server.terminate()
        status = server.wait(timeout=30)
    assert status == 0, log.read_text()[-3000:]
