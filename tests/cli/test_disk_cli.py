"""``diskless disk ...``: create, list, info, reset, set-mode, commit, rollback, delete."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from diskless.cli.main import app
from diskless.storage.library import ImageLibrary

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DISKLESS_"):
            monkeypatch.delenv(name)


class Cli:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> Any:
        result = self.runner.invoke(
            app, ["--config", str(self.config), *args], env={"COLUMNS": "200"}
        )
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(tmp_path: Path, data_dir: Path) -> Cli:
    config = tmp_path / "diskless.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n[storage]\noverlay_cluster_size = 65536\n'
        "overlay_extended_l2 = false\n"
    )
    source = tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "4M"], check=True)
    subprocess.run(
        ["qemu-io", "-c", "write -P 0xab 0 1M", str(source)], check=True, capture_output=True
    )
    runner = Cli(config)
    runner("image", "import", "win11", str(source))
    return runner


def library(data_dir: Path) -> ImageLibrary:
    return ImageLibrary(data_dir, cluster_size=65536, extended_l2=False)


def write(data_dir: Path, disk: str, offset: int, data: bytes) -> None:
    with library(data_dir).disks.open(disk) as device:
        device.write(offset, data)
        device.flush()


def read(data_dir: Path, disk: str, offset: int, length: int) -> bytes:
    with library(data_dir).disks.open(disk, read_only=True) as device:
        return device.read(offset, length)


def test_create_list_info(cli: Cli) -> None:
    assert (
        "created disk pc01 on win11 v1 (persistent)"
        in cli("disk", "create", "pc01", "--image", "win11").stdout
    )
    created = cli.json(
        "disk", "create", "cafe01", "-i", "win11", "-v", "1", "--mode", "reset-on-boot"
    )
    assert (created["image"], created["version"], created["mode"]) == ("win11", 1, "reset-on-boot")

    listing = cli.json("disk", "list")
    assert [(d["name"], d["mode"]) for d in listing] == [
        ("cafe01", "reset-on-boot"),
        ("pc01", "persistent"),
    ]
    assert all(d["virtual_size"] == 4 << 20 for d in listing)
    table = cli("disk", "list").stdout
    assert "cafe01" in table
    assert "reset-on-boot" in table

    info = cli.json("disk", "info", "pc01")
    assert info["allocated_bytes"] > 0
    assert info["overlay_path"].endswith(".qcow2")
    assert "4.0 MiB (4194304 B)" in cli("disk", "info", "pc01").stdout

    assert "already exists" in cli("disk", "create", "pc01", "-i", "win11", code=1).stderr
    assert "'nope' does not exist" in cli("disk", "info", "nope", code=1).stderr
    bad_mode = cli("disk", "create", "pc02", "-i", "win11", "--mode", "sometimes", code=2)
    assert "sometimes" in bad_mode.stderr


def test_reset_and_set_mode(cli: Cli, data_dir: Path) -> None:
    cli("disk", "create", "pc01", "--image", "win11")
    write(data_dir, "pc01", 0, b"client data")

    assert "refusing without --yes" in cli("disk", "reset", "pc01", code=1).stderr
    assert read(data_dir, "pc01", 0, 11) == b"client data"
    cli("disk", "reset", "pc01", "--yes")
    assert read(data_dir, "pc01", 0, 11) == b"\xab" * 11

    assert cli.json("disk", "set-mode", "pc01", "reset-on-boot")["mode"] == "reset-on-boot"
    assert "is now persistent" in cli("disk", "set-mode", "pc01", "persistent").stdout


def test_busy_disk_is_refused(cli: Cli, data_dir: Path) -> None:
    cli("disk", "create", "pc01", "--image", "win11")
    with library(data_dir).disks.open("pc01"):
        result = cli("disk", "reset", "pc01", "--yes", code=1)
    assert "disk 'pc01' is in use" in result.stderr


def test_commit_and_rollback(cli: Cli, data_dir: Path) -> None:
    cli("disk", "create", "super", "--image", "win11")
    write(data_dir, "super", 2 << 20, b"installed app")

    committed = cli.json("disk", "commit", "super", "--note", "app v1")
    assert committed["version"]["version"] == 2
    assert committed["version"]["source"] == "commit of disk super"
    assert committed["version"]["parent_version"] == 1
    assert committed["disk"]["version"] == 2

    nothing = cli("disk", "commit", "super", code=1)
    assert "nothing to commit" in nothing.stderr

    write(data_dir, "super", 0, b"more")
    kept = cli("disk", "commit", "super", "--image", "win11-lab", "--keep-overlay")
    assert "committed disk super as win11-lab v1" in kept.stdout
    assert cli.json("disk", "info", "super")["version"] == 2

    assert "refusing without --yes" in cli("disk", "rollback", "super", "-v", "1", code=1).stderr
    rolled = cli.json("disk", "rollback", "super", "--version", "1", "--yes")
    assert rolled["version"] == 1
    assert read(data_dir, "super", 2 << 20, 13) == bytes(13)
    assert read(data_dir, "super", 0, 4) == b"\xab" * 4

    to_lab = cli("disk", "rollback", "super", "-v", "1", "--image", "win11-lab", "--yes")
    assert "now on win11-lab v1" in to_lab.stdout
    assert read(data_dir, "super", 0, 4) == b"more"

    versions = cli.json("image", "versions", "win11")
    assert [(v["version"], v["note"], v["disks"]) for v in versions] == [
        (1, "", []),
        (2, "app v1", []),
    ]


def test_delete(cli: Cli, data_dir: Path) -> None:
    cli("disk", "create", "pc01", "--image", "win11")
    assert "refusing without --yes" in cli("disk", "delete", "pc01", code=1).stderr
    assert cli.json("disk", "delete", "pc01", "--yes")["name"] == "pc01"
    assert cli.json("disk", "list") == []
    assert not (data_dir / "disks" / "pc01").exists()
