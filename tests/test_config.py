"""Settings: embedded defaults, the TOML file, DISKLESS_* overrides, errors that name the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from diskless.config import DEFAULT_DATA_DIR, Settings, load_settings
from diskless.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own DISKLESS_* variables must not change what these tests see.
    for name in list(os.environ):
        if name.startswith("DISKLESS_"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "diskless.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings(None)

    assert settings == Settings()
    assert settings.data_dir == DEFAULT_DATA_DIR
    assert settings.logging.level == "info"
    assert settings.logging.format == "console"
    assert settings.storage.overlay_cluster_size == 131072
    assert settings.storage.overlay_extended_l2 is True


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        data_dir = "/srv/diskless"
        [storage]
        overlay_cluster_size = 65536
        [logging]
        format = "json"
        """,
    )

    settings = load_settings(path)

    assert settings.data_dir == Path("/srv/diskless")
    assert settings.storage.overlay_cluster_size == 65536
    assert settings.logging.format == "json"
    assert settings.logging.level == "info"


def test_relative_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'data_dir = "data"\n')

    assert load_settings(path).data_dir == tmp_path / "data"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, '[logging]\nlevel = "debug"\n')
    monkeypatch.setenv("DISKLESS_LOGGING__LEVEL", "warning")
    monkeypatch.setenv("DISKLESS_STORAGE__OVERLAY_CLUSTER_SIZE", "4096")

    settings = load_settings(path)

    assert settings.logging.level == "warning"
    assert settings.storage.overlay_cluster_size == 4096


def test_the_config_path_variable_is_not_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # DISKLESS_CONFIG is read by the CLI, and must not trip the "unknown key" check.
    monkeypatch.setenv("DISKLESS_CONFIG", "/nonexistent.toml")

    assert load_settings(None) == Settings()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ("[storage]\ntypo = true\n", "storage.typo"),
        ("[logging]\ncolour = true\n", "logging.colour"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert f"{key}: unknown key" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[storage]\noverlay_cluster_size = 1000\n", "storage.overlay_cluster_size"),
        ("[storage]\noverlay_cluster_size = 4194304\n", "storage.overlay_cluster_size"),
        ('[logging]\nlevel = "loud"\n', "logging.level"),
        ('[logging]\nformat = "xml"\n', "logging.format"),
        ("data_dir = 5\n", "data_dir"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError, match=rf"{key}: "):
        load_settings(path)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'bogus = 1\n[logging]\nlevel = "loud"\n')

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "bogus" in str(caught.value)
    assert "logging.level" in str(caught.value)


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISKLESS_LOGGING__LEVEL", "loud")

    with pytest.raises(ConfigError, match=r"logging\.level"):
        load_settings(None)


def test_unparsable_environment_section_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISKLESS_LOGGING", "{not json")

    with pytest.raises(ConfigError, match="logging"):
        load_settings(None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_config(tmp_path, "data_dir = \n")

    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_dotted_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_setting_is_in_the_operations_reference() -> None:
    # The reference table is written by hand; this keeps it from falling behind the model.
    reference = (Path(__file__).parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")

    missing = [
        key
        for key in _dotted_keys(Settings)
        if f"`{key}`" not in reference
        or f"`DISKLESS_{key.upper().replace('.', '__')}`" not in reference
    ]

    assert missing == []
