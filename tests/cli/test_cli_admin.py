"""Discovered MACs, groups, tokens, run-time settings, audit, status, images, disks and the live
event stream, through the CLI against a running API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_api_support import RunningApi, cli, run_cli

from diskless.boot.events import BootEvent, BootStage
from diskless.boot.machines import parse_mac
from diskless.inventory import Sighting

sys.path.insert(0, str(Path(__file__).parents[1] / "api"))
from api_support import add_golden

MAC = "52:54:00:bb:00:01"


def _ok(result: object) -> str:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return result.stdout  # type: ignore[attr-defined,no-any-return]


def test_discovered_list_approve_forget(served: RunningApi) -> None:
    now = time.time()
    served.inventory.record_discovered(
        [
            Sighting(mac=parse_mac(MAC), at=now, arch=7),
            Sighting(mac=parse_mac("52:54:00:bb:00:02"), at=now),
        ]
    )
    _ok(cli(served, "group", "add", "lab"))

    listed = json.loads(_ok(cli(served, "discovered", "list", "--json")))
    assert {row["mac"] for row in listed} == {MAC, "52:54:00:bb:00:02"}
    approved = json.loads(
        _ok(
            cli(served, "discovered", "approve", MAC, "--hostname", "seat-9", "-g", "lab", "--json")
        )
    )
    assert (approved["hostname"], approved["group"]) == ("seat-9", "lab")
    assert "forgot" in _ok(cli(served, "discovered", "forget", "52-54-00-bb-00-02"))
    assert json.loads(_ok(cli(served, "discovered", "list", "--json"))) == []

    bad = cli(served, "discovered", "approve", "not-a-mac")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: mac: must be a MAC address")
    gone = cli(served, "discovered", "forget", MAC)
    assert gone.exit_code == 1
    assert "no discovered MAC" in gone.stderr or "no " in gone.stderr


def test_group_lifecycle(served: RunningApi) -> None:
    _ok(
        cli(served, "group", "add", "lab", "-d", "room 1", "--boot", "local", "-m", "reset-on-boot")
    )
    shown = json.loads(_ok(cli(served, "group", "show", "lab", "--json")))
    assert (shown["boot"], shown["disk_mode"]) == ({"kind": "local"}, "reset-on-boot")
    assert "lab" in _ok(cli(served, "group", "list"))

    changed = json.loads(
        _ok(cli(served, "group", "set", "lab", "--name", "lab2", "--clear", "boot", "--json"))
    )
    assert (changed["name"], changed["boot"]) == ("lab2", None)

    _ok(cli(served, "machine", "add", MAC, "pc01", "-g", "lab2"))
    busy = cli(served, "group", "remove", "lab2", "--yes")
    assert busy.exit_code == 1
    assert len(busy.stderr.strip().splitlines()) == 1
    _ok(cli(served, "machine", "remove", "pc01", "--yes"))
    assert "removed group lab2" in _ok(cli(served, "group", "remove", "lab2", "--yes"))

    bad = cli(served, "group", "add", "Bad Name!")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: name: ")


def test_token_create_list_revoke(served: RunningApi, tmp_path: Path) -> None:
    config = tmp_path / "diskless.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[inventory]\n'
        f'database_url = "sqlite:///{tmp_path / "inventory.sqlite3"}"\n',
        encoding="utf-8",
    )

    made = run_cli("--config", str(config), "token", "create", "viewer", "--read-only")

    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert "shown only now" in made.stderr
    listed = json.loads(_ok(cli(served, "token", "list", "--json")))
    assert {(t["name"], t["read_only"]) for t in listed} == {("admin", False), ("viewer", True)}
    assert _ok(cli(served, "machine", "list", "--json", token=secret)).strip() == "[]"
    refused = cli(served, "group", "add", "lab", token=secret)
    assert refused.exit_code == 1
    assert "read-only" in refused.stderr

    assert "revoked token viewer" in _ok(cli(served, "token", "revoke", "viewer"))
    assert cli(served, "machine", "list", token=secret).exit_code == 1
    taken = run_cli("--config", str(config), "token", "create", "admin")
    assert taken.exit_code == 1
    assert "admin" in taken.stderr


def test_settings_audit_status_images(served: RunningApi) -> None:
    _ok(cli(served, "settings", "set", "wake.group_interfaces", '{"lab": "eth1"}'))
    _ok(cli(served, "settings", "set", "motd", "hello"))
    values = json.loads(_ok(cli(served, "settings", "list", "--json")))
    assert values == {"wake.group_interfaces": {"lab": "eth1"}, "motd": "hello"}
    _ok(cli(served, "settings", "unset", "motd"))
    assert "motd" not in _ok(cli(served, "settings", "list"))
    bad = cli(served, "settings", "set", "Bad-Key", "1")
    assert bad.exit_code == 1
    assert "key" in bad.stderr

    audit = json.loads(_ok(cli(served, "audit", "--json", "-n", "10")))
    assert [entry["action"] for entry in audit][:3] == ["setting.set"] * 3
    assert all(entry["actor"] == "api:admin" for entry in audit[:3])

    add_golden(served.library, "win11", b"golden")
    images = json.loads(_ok(cli(served, "images", "--json")))
    assert [(i["name"], i["latest"]) for i in images] == [("win11", 1)]
    assert "win11" in _ok(cli(served, "images"))

    status = json.loads(_ok(cli(served, "status", "--json")))
    assert (status["status"], status["images"], status["api"]) == ("ok", 1, served.url)


def test_machine_disk_through_the_api(served: RunningApi) -> None:
    add_golden(served.library, "win11", b"golden")
    _ok(cli(served, "machine", "add", MAC, "pc01", "--image", "win11"))

    created = json.loads(_ok(cli(served, "machine", "disk", "create", "pc01", "--json")))
    assert (created["name"], created["image"], created["version"]) == ("pc01", "win11", 1)
    assert "win11" in _ok(cli(served, "machine", "disk", "show", "pc01"))
    assert "reset disk pc01" in _ok(cli(served, "machine", "disk", "reset", "pc01", "--yes"))
    unchanged = cli(served, "machine", "disk", "commit", "pc01", "-n", "patched")
    assert unchanged.exit_code == 1
    assert unchanged.stderr == (
        "error: disk 'pc01' has the same content as win11 v1; nothing to commit\n"
    )
    back = json.loads(
        _ok(cli(served, "machine", "disk", "rollback", "pc01", "-v", "1", "--yes", "--json"))
    )
    assert back["version"] == 1
    missing = cli(served, "machine", "disk", "rollback", "pc01", "-v", "9", "--yes")
    assert missing.exit_code == 1
    assert "9" in missing.stderr


def test_events_follow_prints_each_boot_event_until_interrupted(served: RunningApi) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DISKLESS_")}
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diskless",
            "--api",
            served.url,
            "--token",
            served.token,
            "events",
            "--follow",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while served.api.context.events.clients == 0:
            assert follower.poll() is None, follower.stderr.read() if follower.stderr else ""
            assert time.monotonic() < deadline, "the CLI never subscribed"
            time.sleep(0.05)
        served.record(BootEvent(parse_mac(MAC), BootStage.DHCP_OFFER, 1.5, "198.18.0.170"))
        served.record(BootEvent(parse_mac(MAC), BootStage.ISCSI_LOGIN, 2.5, "pc01"))
        assert follower.stdout is not None
        lines = [json.loads(follower.stdout.readline()) for _ in range(2)]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)

    assert [line["stage"] for line in lines] == ["dhcp-offer", "iscsi-login"]
    assert lines[0]["mac"] == MAC
    assert follower.returncode == 0
    assert "Traceback" not in (follower.stderr.read() if follower.stderr else "")
