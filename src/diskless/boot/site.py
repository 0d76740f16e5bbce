"""The :class:`BootSite` a deployment's settings describe, for a given server address and port."""

from __future__ import annotations

from ipaddress import IPv4Address

from diskless.boot.arch import Firmware
from diskless.boot.policy import BootSite, default_unknown_menu
from diskless.config import BootSettings

__all__ = ["ISCSI_PORT", "boot_loaders", "site_from_settings"]

ISCSI_PORT = 3260


def boot_loaders(boot: BootSettings) -> dict[Firmware, str]:
    """The iPXE program configured for each firmware family (families left unset boot nothing)."""
    configured = {
        Firmware.BIOS: boot.bios_file,
        Firmware.UEFI_X64: boot.uefi_x64_file,
        Firmware.UEFI_IA32: boot.uefi_ia32_file,
        Firmware.UEFI_ARM64: boot.uefi_arm64_file,
    }
    return {firmware: name for firmware, name in configured.items() if name}


def site_from_settings(
    boot: BootSettings,
    server: IPv4Address,
    http_port: int,
    iscsi_port: int = ISCSI_PORT,
    iscsi_workers: int = 1,
) -> BootSite:
    """The site clients see when they reach our HTTP boot plane at ``server:http_port``.

    ``boot.server_address``, when set, wins over ``server`` (e.g. behind address translation).
    """
    return BootSite(
        server=boot.server_address or server,
        http_port=http_port,
        loaders=boot_loaders(boot),
        unknown_target=default_unknown_menu() if boot.unknown_clients == "menu" else None,
        iqn_prefix=boot.iqn_prefix,
        iscsi_port=iscsi_port,
        iscsi_workers=iscsi_workers,
        menu_timeout=boot.menu_timeout,
    )
