"""Wake-on-LAN packets on a real (throw-away) network: sent from one namespace, received in
another. Never in the root namespace: every socket here lives in a namespace the test makes
(198.18.0.0/24), and ``eth0`` is the namespace's own veth, not the host's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskless.wol import magic_packet
from netlab import NetLab, require_netns, wait_for_text

RECEIVER = Path(__file__).parent / "wake_receiver.py"
MAC = "52:54:00:18:00:10"
pytestmark = pytest.mark.slow


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_netns()
    with NetLab() as made:
        yield made


def _receiver(lab: NetLab, namespace: str, log: Path, count: int) -> subprocess.Popen[bytes]:
    process = lab.start(namespace, [sys.executable, RECEIVER, str(count)], log=log)
    wait_for_text(log, "ready", timeout=30, process=process)
    return process


def _received(log: Path, process: subprocess.Popen[bytes], count: int) -> list[dict[str, str]]:
    process.wait(30)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert len(lines) == count, log.read_text()
    return [json.loads(line) for line in lines]


def test_sender_broadcasts_out_of_the_named_interface(lab: NetLab, tmp_path: Path) -> None:
    sender = lab.host("a", address="198.18.0.1/24")
    receiver = lab.host("b", address="198.18.0.2/24")
    log = tmp_path / "receiver.log"
    process = _receiver(lab, receiver, log, 1)

    sent = lab.run(
        sender,
        [
            sys.executable,
            "-c",
            "from diskless.wol.endpoint import send_magic_packet as s; "
            "r = s(bytes.fromhex('525400180010'), 'eth0'); print(r.size, r.address, r.port)",
        ],
    )

    assert sent.stdout.split() == ["102", "255.255.255.255", "9"]
    (packet,) = _received(log, process, 1)
    assert bytes.fromhex(packet["payload"]) == magic_packet(bytes.fromhex("525400180010"))
    assert packet["from"] == "198.18.0.1"


def test_machine_wake_through_serve_and_the_cli(lab: NetLab, tmp_path: Path) -> None:
    server_ns = lab.host("srv", address="198.18.0.1/24")
    client_ns = lab.host("pc", address="198.18.0.2/24")
    config = tmp_path / "diskless.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        "[tftp]\nenabled = false\n[http]\nenabled = false\n[iscsi]\nenabled = false\n"
        '[api]\nhost = "127.0.0.1"\nport = 18081\n'
        '[wake]\ninterface = "eth0"\n'
        '[logging]\nformat = "json"\n',
        encoding="utf-8",
    )
    serve_log = tmp_path / "serve.log"
    server = lab.start(
        server_ns, [sys.executable, "-m", "diskless", "serve", "--config", config], log=serve_log
    )
    wait_for_text(serve_log, '"event": "api listening"', timeout=60, process=server)

    def diskless(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "diskless", "--config", str(config), *args]
        return lab.run(server_ns, argv, check=check)

    token = diskless("token", "create", "ops").stdout.strip()
    log = tmp_path / "receiver.log"
    process = _receiver(lab, client_ns, log, 2)
    with_token = ["--token", token]
    diskless(*with_token, "machine", "add", MAC, "pc01")

    woke = json.loads(diskless(*with_token, "machine", "wake", "pc01", "--json").stdout)
    diskless(*with_token, "machine", "wake", "pc01", "--password", "01:02:03:04:05:06")
    missing = diskless(*with_token, "machine", "wake", "pc01", "--interface", "nope0", check=False)

    assert woke["interface"] == "eth0"
    assert (woke["address"], woke["port"], woke["bytes"]) == ("255.255.255.255", 9, 102)
    plain, secure = _received(log, process, 2)
    mac = bytes.fromhex(MAC.replace(":", ""))
    assert bytes.fromhex(plain["payload"]) == magic_packet(mac)
    assert bytes.fromhex(secure["payload"]) == magic_packet(mac, bytes([1, 2, 3, 4, 5, 6]))
    assert missing.returncode == 1
    assert missing.stderr == "error: no network interface 'nope0' on this server\n"
    audit = json.loads(diskless(*with_token, "audit", "--json", "--target", MAC).stdout)
    assert [entry["action"] for entry in audit][:2] == ["machine.wake", "machine.wake"]
    assert lab.stop(server) == 0
