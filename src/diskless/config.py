"""The configuration model: one TOML file, validated once at start-up and passed down.

Every service reads its settings from the :class:`Settings` instance it is handed; nothing reads
the environment or the file again later. Environment variables prefixed ``DISKLESS_`` (nested keys
joined with ``__``, e.g. ``DISKLESS_STORAGE__OVERLAY_CLUSTER_SIZE``) override the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from diskless.errors import ConfigError

__all__ = ["LoggingSettings", "Settings", "StorageSettings", "load_settings"]

DEFAULT_DATA_DIR = Path("diskless-data")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSettings(_Section):
    """How new per-machine overlays are laid out."""

    overlay_cluster_size: int = Field(
        default=131072,
        description="qcow2 cluster size of new overlays, a power of two from 4 KiB to 2 MiB",
    )
    overlay_extended_l2: bool = Field(
        default=True,
        description=(
            "Use qcow2 extended L2 entries (32 subclusters per cluster), so a 4 KiB first write "
            "copies at most one subcluster from the golden image instead of a whole cluster"
        ),
    )

    @field_validator("overlay_cluster_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 4096 or value > (2 << 20) or value & (value - 1):
            raise ValueError("must be a power of two between 4096 and 2097152")
        return value


class LoggingSettings(_Section):
    """What the server logs and how each line looks (all logs go to stderr)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level written: debug, info, warning or error"
    )
    format: Literal["console", "json"] = Field(
        default="console",
        description="console: one key=value line per event; json: one JSON object per line",
    )


class Settings(BaseSettings):
    """Everything diskless can be told; every field has an embedded default."""

    model_config = SettingsConfigDict(
        env_prefix="DISKLESS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR,
        description="Holds golden images, per-machine overlays and state",
    )
    storage: StorageSettings = StorageSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs); no .env files or secret dirs.
        return (env_settings, init_settings)


def _explain(error: ErrorDetails) -> str:
    # pydantic's wording for a forbidden extra key reads oddly to an operator editing a file.
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return error["msg"]


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate ``path`` (a TOML file); ``None`` gives the embedded defaults.

    Raises :class:`ConfigError` naming the file and each bad key.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: configuration file not found") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        where = str(path) if path is not None else "configuration"
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {_explain(error)}"
            for error in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from exc
    except SettingsError as exc:
        # An environment variable that does not parse (e.g. malformed JSON for a whole section).
        raise ConfigError(f"environment: {exc}") from exc
    if path is not None and not settings.data_dir.is_absolute():
        # A relative data_dir in a file means relative to that file, not to wherever we started.
        settings = settings.model_copy(update={"data_dir": path.parent / settings.data_dir})
    return settings
