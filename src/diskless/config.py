"""The configuration model: one TOML file, validated once at start-up and passed down.

Every service reads its settings from the :class:`Settings` instance it is handed; nothing reads
the environment or the file again later. Environment variables prefixed ``DISKLESS_`` (nested keys
joined with ``__``, e.g. ``DISKLESS_STORAGE__OVERLAY_CLUSTER_SIZE``) override the file.
"""

from __future__ import annotations

import tomllib
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from diskless.errors import ConfigError

__all__ = [
    "ApiSettings",
    "BootSettings",
    "DhcpSettings",
    "HttpSettings",
    "InventorySettings",
    "IscsiSettings",
    "LoggingSettings",
    "Settings",
    "StorageSettings",
    "TftpSettings",
    "load_settings",
]

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


class BootSettings(_Section):
    """What clients are told to boot: the iPXE programs, the machines and unknown clients."""

    ipxe_dir: Path = Field(
        default=Path("/usr/lib/ipxe"),
        description="Directory holding the iPXE programs (Debian's `ipxe` package installs here)",
    )
    bios_file: str = Field(
        default="undionly.kpxe", description="Boot program for BIOS PXE clients (option 93 = 0)"
    )
    uefi_x64_file: str = Field(
        default="ipxe.efi",
        description="Boot program for x64 UEFI PXE clients (option 93 = 7 or 9), or snponly.efi",
    )
    uefi_ia32_file: str | None = Field(
        default=None, description="Boot program for 32-bit UEFI clients (option 93 = 6), if any"
    )
    uefi_arm64_file: str | None = Field(
        default=None,
        description="Boot program for ARM64 UEFI clients (option 93 = 11), e.g. an arm64 ipxe.efi",
    )
    machines_file: Path | None = Field(
        default=None,
        description="TOML file listing the known machines (MAC, name, address, boot target)",
    )
    unknown_clients: Literal["ignore", "menu"] = Field(
        default="menu",
        description=(
            "What an unknown MAC gets: ignore (no answer at all), or menu (boot the default "
            "menu and be recorded as discovered)"
        ),
    )
    iqn_prefix: str = Field(
        default="iqn.2026-11.org.diskless",
        description="Prefix of the iSCSI names derived for each machine's target and initiator",
    )
    server_address: IPv4Address | None = Field(
        default=None,
        description=(
            "Address clients use to reach this server's HTTP, TFTP and iSCSI services; by default "
            "the DHCP interface's address, or the address a client's request arrived on"
        ),
    )
    menu_timeout: int = Field(
        default=10, ge=0, description="Seconds the default menu waits before its default item"
    )


class DhcpSettings(_Section):
    """The DHCP service: off unless an interface is named (a DHCP server never binds 'all')."""

    interface: str | None = Field(
        default=None,
        description="Network interface to serve DHCP on; no interface means no DHCP service",
    )
    mode: Literal["full", "proxy"] = Field(
        default="proxy",
        description=(
            "full: hand out addresses from the pool; proxy: answer only PXE clients, beside a "
            "DHCP server we do not control (UDP 67 and 4011)"
        ),
    )
    pool_start: IPv4Address | None = Field(
        default=None, description="First address of the dynamic pool (full mode)"
    )
    pool_end: IPv4Address | None = Field(
        default=None, description="Last address of the dynamic pool (full mode)"
    )
    subnet_mask: IPv4Address | None = Field(
        default=None, description="Subnet mask handed out; by default the interface's own"
    )
    routers: list[IPv4Address] = Field(default=[], description="Default gateways (option 3)")
    dns_servers: list[IPv4Address] = Field(default=[], description="DNS servers (option 6)")
    domain_name: str | None = Field(default=None, description="Domain name (option 15)")
    lease_time: int = Field(
        default=3600, ge=60, description="Lease time in seconds for dynamic addresses"
    )
    port: int = Field(default=67, ge=1, le=65535, description="Server port (67; tests move it)")
    proxy_port: int = Field(
        default=4011, ge=1, le=65535, description="PXE boot-server port of proxy mode (4011)"
    )


class TftpSettings(_Section):
    """The read-only TFTP server that hands out the iPXE programs."""

    enabled: bool = Field(default=True, description="Run the TFTP server")
    host: str = Field(default="0.0.0.0", description="Address to listen on")
    port: int = Field(
        default=69, ge=0, le=65535, description="UDP port to listen on (0: any free port)"
    )
    root: Path | None = Field(
        default=None,
        description=(
            "Extra files served besides the iPXE programs, jailed to this directory "
            "(default: <data_dir>/tftp)"
        ),
    )
    max_block_size: int = Field(
        default=65464,
        ge=8,
        le=65464,
        description=(
            "Largest blksize granted (RFC 2348, 8-65464); lower it to the path MTU minus 32 "
            "(1468 on Ethernet) if a network drops IP fragments"
        ),
    )
    max_window_size: int = Field(
        default=64,
        ge=1,
        le=1024,
        description=(
            "Largest windowsize granted (RFC 7440); a transfer's window is also kept within 256 KiB"
        ),
    )
    timeout: float = Field(
        default=1.0,
        gt=0,
        le=255,
        description=(
            "Seconds before an unacknowledged window is first resent, when the client asks for "
            "no timeout (RFC 2349); the wait doubles on each retry, up to 8 times this"
        ),
    )
    retries: int = Field(
        default=5,
        ge=0,
        le=100,
        description="Retransmissions of one window before a silent client's transfer is dropped",
    )
    max_transfers: int = Field(
        default=256,
        ge=1,
        description=(
            "Transfers served at once; further requests are refused until one ends (each holds "
            "two sockets and a file: keep it under a third of the open-file limit)"
        ),
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Processes serving transfers, each with its own thread and core; the kernel spreads "
            "the clients' requests over them (SO_REUSEPORT)"
        ),
    )


class HttpSettings(_Section):
    """The HTTP boot plane: per-machine iPXE scripts and large boot files (clients only)."""

    enabled: bool = Field(default=True, description="Run the HTTP boot plane")
    host: str = Field(default="0.0.0.0", description="Address to listen on")
    port: int = Field(
        default=8080, ge=0, le=65535, description="TCP port to listen on (0: any free port)"
    )
    root: Path | None = Field(
        default=None,
        description=(
            "Static boot assets (kernels, initrds, WinPE files), jailed to this directory "
            "(default: <data_dir>/http)"
        ),
    )
    access_log: bool = Field(
        default=False,
        description="Log every HTTP request (off by default: it costs throughput); errors are "
        "always logged",
    )


class IscsiSettings(_Section):
    """The iSCSI portal serving each machine's disk to its own initiator."""

    enabled: bool = Field(default=True, description="Run the iSCSI target")
    host: str = Field(default="0.0.0.0", description="Address to listen on")
    port: int = Field(
        default=3260, ge=0, le=65535, description="TCP port to listen on (0: any free port)"
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Worker processes serving the disks, one core each; worker k listens on port + k "
            "and each machine's disk always lives on the same worker"
        ),
    )

    @model_validator(mode="after")
    def _fixed_port_for_workers(self) -> IscsiSettings:
        if self.workers > 1 and self.port == 0:
            raise ValueError("workers > 1 needs a fixed port (worker k listens on port + k)")
        if self.port + self.workers - 1 > 65535:
            raise ValueError("port + workers - 1 must be at most 65535")
        return self


class InventorySettings(_Section):
    """The inventory database: machines, groups, discovered MACs, boot events, tokens."""

    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the inventory database, e.g. postgresql://diskless@db/diskless "
            "when several boot servers share one; none: SQLite at <data_dir>/state/"
            "inventory.sqlite3"
        ),
    )
    poll_interval: float = Field(
        default=5.0,
        ge=0,
        description=(
            "Seconds between checks of the change serial, which catch changes a notification "
            "missed (another process on SQLite); 0 turns polling off"
        ),
    )
    flush_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between batched writes of boot events and discovered MACs",
    )
    boot_events_per_machine: int = Field(
        default=200, ge=1, description="Boot events kept per MAC (the oldest are dropped)"
    )
    boot_event_days: int = Field(
        default=30, ge=1, description="Days after which boot events are dropped"
    )
    discovered_limit: int = Field(
        default=1000,
        ge=1,
        description="Discovered MACs kept waiting for approval (the least recently seen dropped)",
    )


class ApiSettings(_Section):
    """The admin REST API: its own listener, apart from the boot plane (docs/operations.md)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Run the admin REST API (only with the inventory database, not with boot.machines_file)"
        ),
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; keep it on loopback or an admin network",
    )
    port: int = Field(
        default=8081, ge=0, le=65535, description="TCP port to listen on (0: any free port)"
    )
    token: SecretStr | None = Field(
        default=None,
        description=(
            "API token the diskless command sends to the server; give it in the environment "
            "(DISKLESS_API__TOKEN) rather than in the file"
        ),
    )


class WakeSettings(_Section):
    """Wake-on-LAN: the interface magic packets are broadcast from (never every interface)."""

    interface: str | None = Field(
        default=None,
        description=(
            "Network interface Wake-on-LAN packets leave by; default: dhcp.interface "
            "(the run-time setting wake.group_interfaces can name one per group)"
        ),
    )


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
    boot: BootSettings = BootSettings()
    dhcp: DhcpSettings = DhcpSettings()
    tftp: TftpSettings = TftpSettings()
    http: HttpSettings = HttpSettings()
    iscsi: IscsiSettings = IscsiSettings()
    inventory: InventorySettings = InventorySettings()
    api: ApiSettings = ApiSettings()
    wake: WakeSettings = WakeSettings()
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
    if path is not None:
        settings = _anchor_paths(settings, path.parent)
    return settings


def _anchor_paths(settings: Settings, base: Path) -> Settings:
    """Make the file's relative paths relative to the file, not to wherever we started."""

    def anchored(value: Path | None) -> Path | None:
        return base / value if value is not None and not value.is_absolute() else value

    return settings.model_copy(
        update={
            "data_dir": anchored(settings.data_dir),
            "boot": settings.boot.model_copy(
                update={
                    "ipxe_dir": anchored(settings.boot.ipxe_dir),
                    "machines_file": anchored(settings.boot.machines_file),
                }
            ),
            "tftp": settings.tftp.model_copy(update={"root": anchored(settings.tftp.root)}),
            "http": settings.http.model_copy(update={"root": anchored(settings.http.root)}),
        }
    )
