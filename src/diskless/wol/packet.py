"""The Wake-on-LAN magic packet, and the choice of interface it leaves by; no I/O here.

The packet (AMD's "Magic Packet" white paper, 1995) is six ``0xFF`` bytes followed by the target
MAC sixteen times: 102 bytes. A NIC with a "SecureOn" password also wants that password (4 or 6
bytes) appended. The NIC looks for the pattern anywhere in a frame, so the UDP port (9,
"discard") only matters to firewalls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from diskless.errors import ConflictError, DisklessError

__all__ = [
    "MAGIC_PACKET_SIZE",
    "WakeError",
    "WakeInterfaceError",
    "check_interface_name",
    "magic_packet",
    "parse_secureon",
    "resolve_interface",
]

MAGIC_PACKET_SIZE = 6 + 16 * 6
"""Bytes in a magic packet without a SecureOn password."""

_SYNC = b"\xff" * 6
_SECUREON_SIZES = (0, 4, 6)
# Linux: at most 15 bytes (IFNAMSIZ - 1), no '/', no whitespace, not "." or "..".
_INTERFACE_NAME = re.compile(r"^[^/\s:]{1,15}$")


class WakeError(DisklessError):
    """A magic packet cannot be built or sent."""


class WakeInterfaceError(WakeError, ConflictError):
    """No interface is configured for the packet, or the named one does not exist here."""


def magic_packet(mac: bytes, password: bytes = b"") -> bytes:
    """The magic packet waking ``mac`` (6 bytes), with an optional SecureOn ``password``."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")
    if len(password) not in _SECUREON_SIZES:
        raise ValueError(f"a SecureOn password has 4 or 6 bytes, not {len(password)}")
    return _SYNC + mac * 16 + password


def parse_secureon(text: str) -> bytes:
    """A SecureOn password as written: 6 bytes like a MAC (``00:11:22:33:44:55``) or 4 as an
    IPv4 address (``192.168.1.1``), the two forms ``ether-wake`` and NIC tools use."""
    text = text.strip()
    if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", text):
        parts = [int(part) for part in text.split(".")]
        if all(part <= 255 for part in parts):
            return bytes(parts)
    digits = re.sub(r"[:\-.]", "", text.lower())
    if re.fullmatch(r"[0-9a-f]{12}|[0-9a-f]{8}", digits):
        return bytes.fromhex(digits)
    raise ValueError("must be 6 bytes like a MAC address (11:22:33:44:55:66) or 4 like 1.2.3.4")


def check_interface_name(name: str) -> str:
    """``name`` if it can be a Linux interface name; ValueError otherwise."""
    if not _INTERFACE_NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError("must be a network interface name such as eth0 (1-15 characters)")
    return name


def resolve_interface(
    *,
    explicit: str | None,
    group: str | None,
    group_interfaces: Mapping[str, object],
    default: str | None,
) -> tuple[str, str]:
    """The interface a machine's magic packet leaves by, and where that choice came from.

    In order: the one asked for, the machine's group's entry in the ``wake.group_interfaces``
    run-time setting, then ``default`` (the server's ``wake.interface``, else its
    ``dhcp.interface``). Raises :class:`WakeInterfaceError` when none is known: the packet is
    never broadcast out of every interface.
    """
    if explicit:
        return explicit, "request"
    if group is not None:
        chosen = group_interfaces.get(group)
        if isinstance(chosen, str) and chosen:
            return chosen, f"wake.group_interfaces[{group}]"
    if default:
        return default, "server settings"
    raise WakeInterfaceError(
        "no interface to send the magic packet from: give one (--interface), set "
        "wake.interface or dhcp.interface in the server's settings, or map the machine's "
        "group in the run-time setting wake.group_interfaces"
    )
