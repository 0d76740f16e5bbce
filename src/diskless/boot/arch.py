"""Client architectures (DHCP option 93, RFC 4578 and the IANA registry) and what each boots.

The table is complete for the codes firmware in the field sends; an unknown code is not an
error: it is classified as ``UNKNOWN`` and the policy decides (it boots nothing it cannot name).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Firmware", "Platform", "classify_arch"]


class Firmware(StrEnum):
    """The firmware family a boot program must be built for."""

    BIOS = "bios"
    UEFI_IA32 = "uefi-ia32"
    UEFI_X64 = "uefi-x64"
    UEFI_ARM32 = "uefi-arm32"
    UEFI_ARM64 = "uefi-arm64"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Platform:
    """What option 93 says about a client: its firmware and whether it boots over HTTP."""

    firmware: Firmware
    http_boot: bool
    code: int | None


# IANA "Processor Architecture Types" (option 93). 7 is "EFI BC" and is x64 in practice (every
# x64 UEFI PXE stack sends 7 or 9); 0x0f/0x10/0x12/0x13 are the UEFI HTTP-boot variants.
_ARCH_CODES: dict[int, tuple[Firmware, bool]] = {
    0x00: (Firmware.BIOS, False),
    0x06: (Firmware.UEFI_IA32, False),
    0x07: (Firmware.UEFI_X64, False),
    0x09: (Firmware.UEFI_X64, False),
    0x0A: (Firmware.UEFI_ARM32, False),
    0x0B: (Firmware.UEFI_ARM64, False),
    0x0F: (Firmware.UEFI_IA32, True),
    0x10: (Firmware.UEFI_X64, True),
    0x12: (Firmware.UEFI_ARM32, True),
    0x13: (Firmware.UEFI_ARM64, True),
}


def classify_arch(code: int | None) -> Platform:
    """The platform for an option-93 value; ``None`` (option absent) means a BIOS PXE ROM.

    Old BIOS PXE ROMs predate option 93, so its absence is read as BIOS, as dnsmasq and iPXE do.
    """
    if code is None:
        return Platform(Firmware.BIOS, False, None)
    firmware, http_boot = _ARCH_CODES.get(code, (Firmware.UNKNOWN, False))
    return Platform(firmware, http_boot, code)
