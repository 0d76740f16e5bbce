"""The root ``diskless`` command: global options, ``config show``/``check``, error reporting."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diskless import __version__, runtime
from diskless.cli.main import app
from diskless.config import Settings
from diskless.errors import DisklessError, NotFoundError


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DISKLESS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "diskless.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in ("serve", "image", "disk", "config"):
        assert command in result.output
    assert "--config" in result.output


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])

    assert result.exit_code == 0
    assert result.output.strip() == f"diskless {__version__}"


def test_config_show_json_gives_the_defaults(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "show", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == Settings().model_dump(mode="json")


def test_config_show_reads_the_global_config_option(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path, '[logging]\nlevel = "debug"\n')

    result = runner.invoke(app, ["--config", str(path), "config", "show", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["logging"]["level"] == "debug"


def test_config_path_comes_from_the_environment(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, '[logging]\nformat = "json"\n')
    monkeypatch.setenv("DISKLESS_CONFIG", str(path))

    result = runner.invoke(app, ["config", "show", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["logging"]["format"] == "json"


def test_config_show_toml_reads_back_unchanged(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(
        tmp_path, 'data_dir = "/srv/d \\"x\\""\n[storage]\noverlay_cluster_size = 65536\n'
    )

    result = runner.invoke(app, ["--config", str(path), "config", "show"])

    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout) == Settings(
        data_dir=Path('/srv/d "x"'), storage={"overlay_cluster_size": 65536}
    ).model_dump(mode="json", exclude_none=True)
    # Each key carries its description, so the output doubles as a commented template.
    assert "# Holds golden images" in result.stdout


def test_config_check_accepts_a_good_file(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path, 'data_dir = "data"\n')

    result = runner.invoke(app, ["config", "check", str(path)])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: ok"


def test_config_check_names_the_bad_key(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path, "[storage]\noverlay_clustre_size = 65536\n")

    result = runner.invoke(app, ["config", "check", str(path)])

    assert result.exit_code == 2
    assert "storage.overlay_clustre_size" in result.stderr
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_bad_global_config_fails_before_the_command_runs(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path, '[logging]\nlevel = "loud"\n')

    result = runner.invoke(app, ["--config", str(path), "config", "show"])

    assert result.exit_code == 2
    assert "logging.level" in result.stderr
    assert result.stdout == ""


def test_serve_reports_a_bad_config_key_with_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path, "listen = 1\n")

    result = runner.invoke(app, ["serve", "--config", str(path)])

    assert result.exit_code == 2
    assert "listen: unknown key" in result.stderr


@pytest.mark.parametrize("error", [DisklessError("disk pc01 is busy"), NotFoundError("no pc01")])
def test_expected_failure_is_one_line_and_exit_1(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, error: DisklessError
) -> None:
    def failing_serve(settings: Settings) -> int:
        raise error

    monkeypatch.setattr(runtime, "serve", failing_serve)

    result = runner.invoke(app, ["serve"])

    assert result.exit_code == 1
    assert result.stderr == f"error: {error}\n"


def test_serve_exit_status_is_the_runtime_status(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Settings] = []

    def fake_serve(settings: Settings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(runtime, "serve", fake_serve)
    path = write_config(tmp_path, 'data_dir = "/srv/x"\n')

    result = runner.invoke(app, ["serve", "--config", str(path)])

    assert result.exit_code == 0, result.output
    assert [settings.data_dir for settings in seen] == [Path("/srv/x")]
