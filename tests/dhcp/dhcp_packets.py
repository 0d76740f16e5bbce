"""Builders of client DHCP messages for the tests (what PXE ROMs, iPXE and OSes send)."""

from __future__ import annotations

from diskless.dhcp.codec import BOOTREQUEST, DhcpMessage, MessageType, Option, encode_message

PXE_VENDOR = b"PXEClient:Arch:00000:UNDI:002001"


def client_message(
    kind: MessageType,
    mac: bytes,
    *,
    xid: int = 0x1234,
    arch: int | None = None,
    vendor: bytes | None = None,
    user_class: bytes | None = None,
    ipxe_options: bool = False,
    requested: bytes | None = None,
    server_id: bytes | None = None,
    ciaddr: bytes = bytes(4),
    giaddr: bytes = bytes(4),
    uuid: bytes | None = None,
    flags: int = 0x8000,
) -> bytes:
    options: list[tuple[int, bytes]] = [(Option.MESSAGE_TYPE, bytes((kind,)))]
    if requested is not None:
        options.append((Option.REQUESTED_ADDRESS, requested))
    if server_id is not None:
        options.append((Option.SERVER_ID, server_id))
    if vendor is not None:
        options.append((Option.VENDOR_CLASS, vendor))
    if arch is not None:
        options.append((Option.CLIENT_ARCH, arch.to_bytes(2, "big")))
    if user_class is not None:
        options.append((Option.USER_CLASS, user_class))
    if ipxe_options:
        options.append((Option.IPXE_ENCAPSULATED, bytes((0x13, 1, 1))))
    if uuid is not None:
        options.append((Option.CLIENT_UUID, b"\x00" + uuid))
    options.append((Option.PARAMETER_LIST, bytes((1, 3, 6, 12, 15, 17, 43, 60, 66, 67))))
    message = DhcpMessage(
        op=BOOTREQUEST,
        xid=xid,
        chaddr=mac,
        flags=flags,
        ciaddr=ciaddr,
        giaddr=giaddr,
        hops=1 if giaddr != bytes(4) else 0,
    )
    return encode_message(message, options)
