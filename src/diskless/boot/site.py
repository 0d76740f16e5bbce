"""The :class:`BootSite` built from the settings: which programs exist and where we are."""

from __future__ import annotations

from ipaddress import IPv4Address

from diskless.boot.arch import Firmware
from diskless.boot.policy import BootSite, default_unknown_menu
from diskless.config import Settings

__all__ = ["site_from_settings"]


def site_from_settings(settings: Settings, server: IPv4Address) -> BootSite:
    """The site as clients reaching us at ``server`` see it (``boot.server_address`` wins)."""
    boot = settings.boot
    loaders = {
        firmware: name
        for firmware, name in (
            (Firmware.BIOS, boot.bios_file),
            (Firmware.UEFI_X64, boot.uefi_x64_file),
            (Firmware.UEFI_IA32, boot.uefi_ia32_file),
            (Firmware.UEFI_ARM64, boot.uefi_arm64_file),
        )
        if name is not None
    }
    return BootSite(
        server=boot.server_address or server,
        http_port=settings.http.port,
        loaders=loaders,
        unknown_target=default_unknown_menu() if boot.unknown_clients == "menu" else None,
        iqn_prefix=boot.iqn_prefix,
        iscsi_port=settings.iscsi.port,
        menu_timeout=boot.menu_timeout,
    )
