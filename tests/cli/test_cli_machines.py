"""``diskless machine ...`` against a running API: every command, its JSON, and its failures."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from cli_api_support import RunningApi, cli, run_cli

from diskless.boot.events import BootEvent, BootStage
from diskless.boot.machines import parse_mac

MAC = "52:54:00:aa:00:01"


def _add_pc01(api: RunningApi) -> None:
    assert cli(api, "group", "add", "lab").exit_code == 0
    result = cli(api, "machine", "add", MAC, "pc01", "--ip", "192.168.1.50", "--group", "lab")
    assert result.exit_code == 0, result.output


def _json(result: object) -> object:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def test_add_list_show_set_remove(served: RunningApi) -> None:
    _add_pc01(served)

    listed = _json(cli(served, "machine", "list", "--json"))
    assert [(m["hostname"], m["mac"], m["group"]) for m in listed] == [("pc01", MAC, "lab")]
    table = cli(served, "machine", "list")
    assert table.exit_code == 0
    assert "pc01" in table.stdout
    shown = _json(cli(served, "machine", "show", "525400AA0001", "--json"))
    assert shown["ip"] == "192.168.1.50"

    changed = _json(
        cli(served, "machine", "set", "pc01", "--notes", "room 2", "--clear", "ip", "--json")
    )
    assert (changed["notes"], changed["ip"]) == ("room 2", None)

    removed = cli(served, "machine", "remove", "pc01", "--yes")
    assert removed.exit_code == 0, removed.output
    assert "removed machine pc01" in removed.stdout
    assert _json(cli(served, "machine", "list", "--json")) == []


def test_boot_image_once_and_events(served: RunningApi) -> None:
    _add_pc01(served)

    linux = _json(
        cli(
            served,
            "machine",
            "boot",
            "pc01",
            "linux",
            "--kernel",
            "debian/linux",
            "--initrd",
            "debian/initrd.gz",
            "--cmdline",
            "quiet",
            "--json",
        )
    )
    assert linux["boot"] == {
        "kind": "linux",
        "kernel": "debian/linux",
        "initrd": ["debian/initrd.gz"],
        "cmdline": "quiet",
    }
    chain = cli(served, "machine", "boot", "pc01", '{"kind": "chain", "url": "http://x/y"}')
    assert chain.exit_code == 0, chain.output
    assert "boots chain" in chain.stdout
    inherit = _json(cli(served, "machine", "boot", "pc01", "--inherit", "--json"))
    assert inherit["boot"] is None

    image = _json(
        cli(served, "machine", "image", "pc01", "win11", "-v", "2", "-m", "reset-on-boot", "--json")
    )
    assert (image["image"], image["image_version"], image["disk_mode"]) == (
        "win11",
        2,
        "reset-on-boot",
    )

    once = _json(cli(served, "machine", "once", "pc01", "local", "--json"))
    assert once["next_boot_once"] == {"kind": "local"}
    cancelled = _json(cli(served, "machine", "once", "--cancel", "pc01", "--json"))
    assert cancelled["next_boot_once"] is None

    served.inventory.record_boot_events(
        [
            BootEvent(parse_mac(MAC), BootStage.DHCP_OFFER, 100.0, "192.168.1.50"),
            BootEvent(parse_mac(MAC), BootStage.ISCSI_LOGIN, 101.0, "pc01"),
        ]
    )
    events = _json(cli(served, "machine", "events", "pc01", "--json"))
    assert [event["stage"] for event in events] == ["dhcp-offer", "iscsi-login"]
    table = cli(served, "machine", "events", "pc01")
    assert "iscsi-login" in table.stdout


def test_csv_import_adds_every_machine(served: RunningApi, tmp_path: Path) -> None:
    csv = tmp_path / "machines.csv"
    csv.write_text(
        "mac,hostname,group,boot\n"
        "52:54:00:18:00:10,seat-01,classroom,local\n"
        "52:54:00:18:00:11,seat-02,classroom,\n",
        encoding="utf-8",
    )

    result = cli(served, "machine", "import", str(csv))

    assert result.exit_code == 0, result.output
    assert "2 created" in result.stdout
    names = [m["hostname"] for m in _json(cli(served, "machine", "list", "--json"))]
    assert sorted(names) == ["seat-01", "seat-02"]
    again = _json(cli(served, "machine", "import", str(csv), "--on-conflict", "skip", "--json"))
    assert len(again["skipped"]) == 2


def test_csv_import_with_a_bad_line_names_it_and_adds_nothing(
    served: RunningApi, tmp_path: Path
) -> None:
    csv = tmp_path / "machines.csv"
    csv.write_text(
        "mac,hostname\n52:54:00:18:00:10,seat-01\n52:54:00:18:00,seat-02\n", encoding="utf-8"
    )

    result = cli(served, "machine", "import", str(csv))

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {csv}: line 3.mac: ")
    assert _json(cli(served, "machine", "list", "--json")) == []


def test_a_missing_csv_file_is_a_clear_error(served: RunningApi, tmp_path: Path) -> None:
    result = cli(served, "machine", "import", str(tmp_path / "nope.csv"))

    assert result.exit_code == 2
    assert "CSV file not found" in result.stderr


def test_a_bad_token_is_refused_with_a_hint(served: RunningApi) -> None:
    result = cli(served, "machine", "list", token="not-a-token")

    assert result.exit_code == 1
    assert "invalid or revoked token" in result.stderr
    assert "DISKLESS_API__TOKEN" in result.stderr
    assert "Traceback" not in result.output


def test_the_token_comes_from_the_environment(served: RunningApi, monkeypatch: object) -> None:
    monkeypatch.setenv("DISKLESS_API__TOKEN", served.token)  # type: ignore[attr-defined]
    monkeypatch.setenv("DISKLESS_API_URL", served.url)  # type: ignore[attr-defined]

    result = run_cli("machine", "list", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_an_unknown_machine_is_404_in_one_line(served: RunningApi) -> None:
    for args in (
        ("machine", "show", "pc99"),
        ("machine", "boot", "pc99", "local"),
        ("machine", "once", "pc99", "local"),
        ("machine", "events", "pc99"),
        ("machine", "wake", "pc99"),
        ("machine", "disk", "show", "pc99"),
    ):
        result = cli(served, *args)
        assert result.exit_code == 1, args
        assert result.stderr == "error: no machine 'pc99'\n", args


def test_a_bad_field_is_named(served: RunningApi) -> None:
    _add_pc01(served)

    bad_host = cli(served, "machine", "add", "52:54:00:aa:00:02", "Not_A_Host")
    bad_ip = cli(served, "machine", "set", "pc01", "--ip", "300.1.1.1")
    bad_kernel = cli(served, "machine", "boot", "pc01", "linux")
    bad_kind = cli(served, "machine", "boot", "pc01", "teleport")
    taken = cli(served, "machine", "add", "52:54:00:aa:00:02", "pc01")

    assert bad_host.exit_code == 1
    assert bad_host.stderr.startswith("error: hostname: ")
    assert bad_ip.stderr.startswith("error: ip: ")
    assert "target.linux.kernel: Field required" in bad_kernel.stderr
    assert "unknown kind 'teleport'" in bad_kind.stderr
    assert taken.exit_code == 1
    assert "hostname" in taken.stderr
    assert len(taken.stderr.strip().splitlines()) == 1


def test_nothing_to_change_and_contradictions_are_refused(served: RunningApi) -> None:
    _add_pc01(served)

    assert "nothing to change" in cli(served, "machine", "set", "pc01").stderr
    both = cli(served, "machine", "once", "pc01", "local", "--cancel")
    assert both.exit_code == 1
    assert "--cancel" in both.stderr
    assert "--clear colour" in cli(served, "machine", "set", "pc01", "--clear", "colour").stderr


def test_a_server_that_is_not_running_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    result = run_cli("machine", "list", url=f"http://127.0.0.1:{port}", token="x")

    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: cannot reach the diskless API at http://127.0.0.1:{port}"
    )
    assert "connection refused" in result.stderr
    assert "diskless serve" in result.stderr


def test_the_url_comes_from_the_api_settings(served: RunningApi, tmp_path: Path) -> None:
    port = served.url.rsplit(":", 1)[1]
    config = tmp_path / "diskless.toml"
    config.write_text(f'[api]\nhost = "0.0.0.0"\nport = {port}\n', encoding="utf-8")

    result = run_cli("--config", str(config), "--token", served.token, "machine", "list")

    assert result.exit_code == 0, result.output
