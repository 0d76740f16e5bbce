"""Sends magic packets: one UDP broadcast to port 9 out of one named interface.

The socket is bound to the interface (``SO_BINDTODEVICE``), so the limited broadcast
255.255.255.255 leaves by that interface alone whatever the routing table says; without the
binding Linux would pick the interface of the default route.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from .packet import WakeError, WakeInterfaceError, check_interface_name, magic_packet

__all__ = ["BROADCAST", "WAKE_PORT", "WakeSent", "send_magic_packet"]

BROADCAST = "255.255.255.255"
WAKE_PORT = 9
"""UDP "discard": the customary Wake-on-LAN port (the NIC ignores ports)."""


@dataclass(frozen=True, slots=True)
class WakeSent:
    """What was sent: to which address and port, out of which interface, how many bytes."""

    interface: str
    address: str
    port: int
    size: int


def send_magic_packet(
    mac: bytes,
    interface: str,
    *,
    password: bytes = b"",
    address: str = BROADCAST,
    port: int = WAKE_PORT,
) -> WakeSent:
    """Broadcast the magic packet for ``mac`` out of ``interface``.

    Raises :class:`WakeInterfaceError` if the interface does not exist, :class:`WakeError` if
    the kernel refuses the packet (interface down, no permission to bind to a device).
    """
    try:
        check_interface_name(interface)
    except ValueError as exc:
        raise WakeError(f"interface {interface!r}: {exc}") from None
    packet = magic_packet(mac, password)
    try:
        socket.if_nametoindex(interface)
    except OSError:
        raise WakeInterfaceError(f"no network interface {interface!r} on this server") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sent = sock.sendto(packet, (address, port))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise WakeInterfaceError(
                    f"no network interface {interface!r} on this server"
                ) from None
            reason = exc.strerror or str(exc)
            raise WakeError(f"cannot send the magic packet out of {interface}: {reason}") from exc
    return WakeSent(interface=interface, address=address, port=port, size=sent)
