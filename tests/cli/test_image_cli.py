"""``diskless image ...``: import, list, versions, verify, delete, gc — tables and ``--json``."""

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

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DISKLESS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "diskless.toml"
    path.write_text('data_dir = "data"\n[storage]\noverlay_cluster_size = 65536\n')
    return path


@pytest.fixture
def vhdx(tmp_path: Path) -> Path:
    path = tmp_path / "golden.vhdx"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(path), "4M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "vhdx", "-c", "write -P 0xab 0 1M", str(path)],
        check=True,
        capture_output=True,
    )
    return path


class Cli:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> Any:
        # Wide enough that rich never wraps a cell the assertions look for.
        result = self.runner.invoke(
            app, ["--config", str(self.config), *args], env={"COLUMNS": "200"}
        )
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(config: Path) -> Cli:
    return Cli(config)


def test_import_list_versions(cli: Cli, vhdx: Path, tmp_path: Path) -> None:
    human = cli("image", "import", "win11", str(vhdx), "--note", "base install")
    assert "imported win11 v1 (4.0 MiB, sha256:" in human.stdout

    imported = cli.json("image", "import", "win11", str(vhdx), "--format", "raw")
    assert imported["version"] == 2
    assert imported["source"] == str(vhdx)
    assert imported["digest"].startswith("sha256:")

    listing = cli.json("image", "list")
    assert [(i["name"], i["versions"], i["latest"]) for i in listing] == [("win11", [1, 2], 2)]
    table = cli("image", "list").stdout
    assert "win11" in table
    assert " MiB " in table

    versions = cli.json("image", "versions", "win11")
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["note"] == "base install"
    assert versions[0]["disks"] == []
    assert "base install" in cli("image", "versions", "win11").stdout
    blob = tmp_path / "data/images/blobs/sha256" / (versions[0]["digest"][7:] + ".raw")
    assert blob.is_file()


def test_import_errors_are_one_line(cli: Cli, tmp_path: Path, vhdx: Path) -> None:
    top = tmp_path / "top.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(vhdx), "-F", "vhdx", str(top)],
        check=True,
    )
    result = cli("image", "import", "win11", str(top), code=1)
    assert result.stderr.startswith("error: ")
    assert "has a backing file" in result.stderr
    assert "Traceback" not in result.stderr

    bad_name = cli("image", "import", "Win/11", str(vhdx), code=1)
    assert "invalid image name 'Win/11'" in bad_name.stderr
    assert "image 'nope' does not exist" in cli("image", "versions", "nope", code=1).stderr


def test_verify_reports_corruption(cli: Cli, vhdx: Path, tmp_path: Path) -> None:
    version = cli.json("image", "import", "win11", str(vhdx))
    assert cli.json("image", "verify", "win11")[0]["status"] == "ok"

    blob = tmp_path / "data/images/blobs/sha256" / (version["digest"][7:] + ".raw")
    blob.chmod(0o644)
    with blob.open("r+b") as file:
        file.write(b"bitrot")

    result = cli("image", "verify", "win11", code=1)
    assert "CORRUPT" in result.stdout
    assert "do not match their digest: v1" in result.stderr


def test_delete_needs_yes_and_refuses_in_use(cli: Cli, vhdx: Path) -> None:
    cli("image", "import", "win11", str(vhdx))
    cli("disk", "create", "pc01", "--image", "win11")

    no_yes = cli("image", "delete", "win11", code=1)
    assert "refusing without --yes" in no_yes.stderr
    in_use = cli("image", "delete", "win11", "--version", "1", "--yes", code=1)
    assert "win11 v1 is in use by disk(s): pc01" in in_use.stderr

    cli("disk", "delete", "pc01", "--yes")
    deleted = cli.json("image", "delete", "win11", "--yes")
    assert [v["version"] for v in deleted] == [1]
    assert cli.json("image", "list") == []
    missing = cli("image", "delete", "win11", "--yes", code=1)
    assert "image 'win11' does not exist" in missing.stderr


def test_gc(cli: Cli, tmp_path: Path) -> None:
    staging = tmp_path / "data/images/blobs/staging"
    staging.mkdir(parents=True)
    (staging / ".tmp-blob.raw.dead").write_bytes(b"left by a crash")

    report = cli.json("image", "gc")

    assert report["staging_files"] == [str(staging / ".tmp-blob.raw.dead")]
    assert "removed 0 leftover(s)" in cli("image", "gc").stdout
