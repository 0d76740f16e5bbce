"""``/metrics`` beyond the API itself: the HTTP boot plane's counters, the iSCSI counters summed
over worker processes (under a real ``diskless serve``), and each machine's latest boot stage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import RunningApi
from prometheus_client.parser import text_string_to_metric_families

from diskless.api import bootstrap_token
from diskless.boot.events import BootEvent, BootStage
from diskless.boot.machines import parse_mac
from diskless.config import Settings

MAC = "52:54:00:bb:00:01"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_latest_boot_stage_of_each_known_machine(api: RunningApi) -> None:
    client = api.client()
    assert client.post("/machines", json={"mac": MAC, "hostname": "pc01"}).status_code == 201
    api.refresh()
    mac = parse_mac(MAC)
    api.record(BootEvent(mac, BootStage.DHCP_OFFER, 1_800_000_000.0, "192.0.2.10"))
    api.record(BootEvent(mac, BootStage.ISCSI_LOGIN, 1_800_000_001.0, "login"))
    unknown = parse_mac("52:54:00:bb:00:99")
    api.record(BootEvent(unknown, BootStage.DISCOVERED, 1_800_000_002.0, "", known=False))
    api.client(token=None).get("/health")  # a round trip: the events above are recorded

    samples = _samples(client.get("/metrics").text)
    status = client.get("/boot-status", params={"limit": 2}).json()

    stages = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "diskless_machine_boot_stage"
    }
    # One series, the latest stage; the unknown MAC gets none (the series stay bounded).
    assert stages == {(("hostname", "pc01"), ("mac", MAC), ("stage", "iscsi-login")): 1.0}
    assert [(e["mac"], e["stage"]) for e in status["latest"]] == [
        (MAC, "iscsi-login"),
        ("52:54:00:bb:00:99", "discovered"),
    ]
    assert [e["stage"] for e in status["recent"]] == ["iscsi-login", "discovered"]


def _free_port_pair() -> int:
    """A port p with p + 1 free too (iSCSI worker k listens on iscsi.port + k)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports")


def _logged(log: Path, name: str, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if f'"event": "{name}"' in line:
                found: dict[str, object] = json.loads(line)
                return found
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"no {name!r} in the log:\n{log.read_text()[-3000:]}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[httpx.Client, str, int, Path]]:
    """``diskless serve`` with two iSCSI workers: an API client, the HTTP plane's URL, the
    first worker's port and the data directory."""
    data = tmp_path / "data"
    token = bootstrap_token(Settings(data_dir=data), "operator").token
    iscsi_port = _free_port_pair()
    config = tmp_path / "diskless.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        f'[iscsi]\nhost = "127.0.0.1"\nport = {iscsi_port}\nworkers = 2\n'
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
        _logged(log, "ready", server)
        api_port = _logged(log, "api listening", server)["port"]
        http_port = _logged(log, "http boot plane listening", server)["port"]
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=30
        ) as client:
            yield client, f"http://127.0.0.1:{http_port}", iscsi_port, data
    finally:
        server.terminate()
        status = server.wait(timeout=60)
    assert status == 0, log.read_text()[-3000:]


@pytest.mark.timeout(180)
def test_serve_counts_http_requests_and_iscsi_worker_connections(
    serve: tuple[httpx.Client, str, int, Path],
) -> None:
    client, http_url, iscsi_port, data = serve
    assert client.post("/machines", json={"mac": MAC, "hostname": "pc01"}).status_code == 201
    (data / "http").mkdir(exist_ok=True)
    (data / "http" / "hello.txt").write_bytes(b"x" * 1000)
    with httpx.Client(base_url=http_url, timeout=30) as plane:
        assert plane.get("/boot.ipxe").status_code == 200
        # The API's change reaches the boot plane through a new snapshot, within moments.
        deadline = time.monotonic() + 10
        while plane.get(f"/boot/{MAC}.ipxe").status_code != 200:
            assert time.monotonic() < deadline, "the machine never reached the boot plane"
            time.sleep(0.1)
        assert plane.get("/files/hello.txt").status_code == 200
        assert plane.head("/files/hello.txt").status_code == 200
        assert plane.get("/files/missing").status_code == 404
        assert plane.get("/ipxe/not-configured.efi").status_code == 404
        assert plane.get("/nowhere").status_code == 404
    # One TCP connection to each worker; workers report their counters once a second.
    for port in (iscsi_port, iscsi_port + 1):
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass

    deadline = time.monotonic() + 20
    while True:
        samples = _samples(client.get("/metrics").text)
        if samples.get(("diskless_iscsi_connections_total", ())) == 2:
            break
        assert time.monotonic() < deadline, "the workers' connections never reached /metrics"
        time.sleep(0.2)

    requests = {
        dict(labels)["route"]: value
        for (name, labels), value in samples.items()
        if name == "diskless_http_requests_total"
    }
    # /boot.ipxe, and /boot/<mac>.ipxe once or more (the first tries may precede the snapshot).
    assert requests["script"] >= 2
    assert (requests["file"], requests["ipxe"], requests["other"]) == (3, 1, 1)
    responses = {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "diskless_http_responses_total"
    }
    assert responses["4xx"] == 3 + (requests["script"] - 2)
    assert responses["2xx"] == 4
    assert samples[("diskless_http_scripts_rendered_total", ())] == 2
    # hello.txt once (HEAD sends no body), the two scripts and the 404 reasons.
    assert samples[("diskless_http_bytes_sent_total", ())] > 1000
    assert samples[("diskless_iscsi_sessions", ())] == 0
