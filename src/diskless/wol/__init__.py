"""Wake-on-LAN: the magic packet (:mod:`.packet`, pure) and its sender (:mod:`.endpoint`).

A magic packet is sent as a UDP broadcast out of one named interface, never out of every
interface: a boot server often sits on several networks, and waking machines on the wrong one
(or flooding an uplink) is worse than refusing. :func:`resolve_interface` says which interface a
machine's packet goes out of, or why none is known.
"""

from __future__ import annotations

from .packet import (
    MAGIC_PACKET_SIZE,
    WakeError,
    WakeInterfaceError,
    check_interface_name,
    magic_packet,
    parse_secureon,
    resolve_interface,
)

__all__ = [
    "MAGIC_PACKET_SIZE",
    "WakeError",
    "WakeInterfaceError",
    "check_interface_name",
    "magic_packet",
    "parse_secureon",
    "resolve_interface",
]
