"""DHCPv4 messages (RFC 2131/2132) as pure functions over bytes: parse, build, encode.

Nothing here touches a socket, so the codec is fuzzed directly (``tests/dhcp/test_codec.py``).
Options are kept as raw bytes keyed by code: repeated instances are concatenated (RFC 3396),
option overload (52) pulls options out of the ``file``/``sname`` fields on parse and spills long
replies into them on encode, and a second overload inside those fields is ignored, so a crafted
packet cannot make the parser loop. Anything that does not parse raises :class:`DhcpFormatError`
and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "BOOTREPLY",
    "BOOTREQUEST",
    "MAX_MESSAGE_SIZE",
    "MIN_MESSAGE_SIZE",
    "DhcpMessage",
    "DhcpFormatError",
    "MessageType",
    "Option",
    "encode_message",
    "parse_message",
]

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC_COOKIE = b"\x63\x82\x53\x63"
MIN_MESSAGE_SIZE = 300
"""BOOTP's minimum; some PXE ROMs drop shorter replies, so replies are padded to it."""
MAX_MESSAGE_SIZE = 4096
"""Larger datagrams are dropped as oversized: no DHCP client sends one."""
DEFAULT_MAX_REPLY = 576
"""RFC 2131: a client that sends no option 57 accepts at least 576 bytes."""

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_FIXED = _HEADER.size  # 236
_OPTIONS_START = _FIXED + len(MAGIC_COOKIE)
_FLAG_BROADCAST = 0x8000


class Option(IntEnum):
    """The option codes the boot path reads or writes."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS_SERVERS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    ROOT_PATH = 17
    VENDOR_SPECIFIC = 43
    REQUESTED_ADDRESS = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_UUID = 97
    IPXE_ENCAPSULATED = 175
    END = 255


class MessageType(IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class DhcpFormatError(ValueError):
    """The bytes are not a DHCP message we can read; the datagram is dropped and counted."""


_ZERO_ADDRESS = bytes(4)


@dataclass(slots=True)
class DhcpMessage:
    """One BOOTP/DHCP message; addresses are 4 raw bytes, options raw bytes by code."""

    op: int
    xid: int
    chaddr: bytes
    """Client hardware address, ``hlen`` bytes (6 for Ethernet)."""
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: bytes = _ZERO_ADDRESS
    yiaddr: bytes = _ZERO_ADDRESS
    siaddr: bytes = _ZERO_ADDRESS
    giaddr: bytes = _ZERO_ADDRESS
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & _FLAG_BROADCAST)

    @property
    def message_type(self) -> MessageType | None:
        value = self.options.get(Option.MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        try:
            return MessageType(value[0])
        except ValueError:
            return None

    def address_option(self, code: int) -> bytes | None:
        """A single-address option (50, 54), or ``None`` if absent or not 4 bytes."""
        value = self.options.get(code)
        return value if value is not None and len(value) == 4 else None

    def text_option(self, code: int) -> str:
        """An option read as text (bad bytes replaced), ``""`` if absent."""
        return self.options.get(code, b"").decode("ascii", "replace")

    def client_arch(self) -> int | None:
        """Option 93's first architecture type (a client may list several)."""
        value = self.options.get(Option.CLIENT_ARCH)
        if value is None or len(value) < 2:
            return None
        return int.from_bytes(value[:2], "big")

    def max_reply_size(self) -> int:
        value = self.options.get(Option.MAX_MESSAGE_SIZE)
        if value is None or len(value) != 2:
            return DEFAULT_MAX_REPLY
        # IP + UDP headers (28 bytes) are part of option 57's size.
        return max(DEFAULT_MAX_REPLY, int.from_bytes(value, "big")) - 28


def _read_options(data: bytes, start: int, end: int, into: dict[int, bytes]) -> None:
    position = start
    while position < end:
        code = data[position]
        if code == Option.PAD:
            position += 1
            continue
        if code == Option.END:
            return
        if position + 1 >= end:
            raise DhcpFormatError(f"option {code} truncated before its length")
        length = data[position + 1]
        value_end = position + 2 + length
        if value_end > end:
            raise DhcpFormatError(f"option {code} runs past the end of its field")
        value = data[position + 2 : value_end]
        previous = into.get(code)
        into[code] = value if previous is None else previous + value
        position = value_end


def parse_message(data: bytes) -> DhcpMessage:
    """Read one DHCP message; raises :class:`DhcpFormatError` for anything unreadable."""
    if len(data) < _OPTIONS_START:
        raise DhcpFormatError(f"{len(data)} bytes is shorter than a DHCP header")
    if len(data) > MAX_MESSAGE_SIZE:
        raise DhcpFormatError(f"{len(data)} bytes is larger than any DHCP message")
    (
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
    ) = _HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpFormatError(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > 16:
        raise DhcpFormatError(f"hardware address length {hlen} exceeds 16")
    if data[_FIXED:_OPTIONS_START] != MAGIC_COOKIE:
        raise DhcpFormatError("no DHCP magic cookie (a plain BOOTP message)")
    options: dict[int, bytes] = {}
    _read_options(data, _OPTIONS_START, len(data), options)
    overload = options.pop(Option.OVERLOAD, b"")
    # RFC 2131 §4.1: the file field is read before sname. A second overload option in them is
    # dropped after each read, so the fields can never point at each other.
    if overload in (b"\x01", b"\x03"):
        _read_options(file, 0, len(file), options)
        options.pop(Option.OVERLOAD, None)
        file = b""
    if overload in (b"\x02", b"\x03"):
        _read_options(sname, 0, len(sname), options)
        options.pop(Option.OVERLOAD, None)
        sname = b""
    return DhcpMessage(
        op=op,
        xid=xid,
        chaddr=chaddr[:hlen],
        htype=htype,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=ciaddr,
        yiaddr=yiaddr,
        siaddr=siaddr,
        giaddr=giaddr,
        sname=sname.split(b"\0", 1)[0],
        file=file.split(b"\0", 1)[0],
        options=options,
    )


def _option_bytes(options: Iterable[tuple[int, bytes]]) -> list[bytes]:
    """Each option as its encoded instances; values over 255 bytes split (RFC 3396)."""
    encoded = []
    for code, value in options:
        length = len(value)
        if length <= 255:
            encoded.append(bytes((code, length)) + value)
            continue
        chunks = [value[offset : offset + 255] for offset in range(0, length, 255)]
        encoded.append(b"".join(bytes((code, len(chunk))) + chunk for chunk in chunks))
    return encoded


def _pack_field(encoded: list[bytes], capacity: int) -> tuple[bytes, list[bytes]]:
    """Fill a ``capacity``-byte field with whole options (and END); return it and the rest."""
    used: list[bytes] = []
    room = capacity - 1  # keep a byte for END
    rest = list(encoded)
    while rest and len(rest[0]) <= room:
        room -= len(rest[0])
        used.append(rest.pop(0))
    return b"".join(used) + bytes((Option.END,)), rest


def encode_message(
    message: DhcpMessage,
    options: Mapping[int, bytes] | Iterable[tuple[int, bytes]] | None = None,
    *,
    max_size: int = DEFAULT_MAX_REPLY,
) -> bytes:
    """Encode ``message`` with ``options`` (default: ``message.options``), in the given order.

    Options that do not fit in ``max_size`` spill into the ``file`` and then ``sname`` fields
    (option overload) when those are unused; raises ``ValueError`` if they still do not fit.
    """
    if options is None:
        options = message.options
    pairs = list(options.items()) if isinstance(options, Mapping) else list(options)
    encoded = _option_bytes(pairs)
    sname, file = message.sname, message.file
    if len(sname) > 64 or len(file) > 128:
        raise ValueError("sname is limited to 64 bytes and file to 128")
    room = max(max_size, MIN_MESSAGE_SIZE) - _OPTIONS_START - 1
    main = b"".join(encoded)
    if len(main) > room:
        overload_option = bytes((Option.OVERLOAD, 1, 0))  # value patched below
        room -= len(overload_option)
        kept: list[bytes] = []
        rest = list(encoded)
        while rest and len(rest[0]) <= room:
            room -= len(rest[0])
            kept.append(rest.pop(0))
        overload = 0
        if rest and not file:
            file, rest = _pack_field(rest, 128)
            overload |= 1
        if rest and not sname:
            sname, rest = _pack_field(rest, 64)
            overload |= 2
        if rest:
            raise ValueError(f"options do not fit in {max_size} bytes")
        main = bytes((Option.OVERLOAD, 1, overload)) + b"".join(kept)
    header = _HEADER.pack(
        message.op,
        message.htype,
        len(message.chaddr),
        message.hops,
        message.xid,
        message.secs,
        message.flags,
        message.ciaddr,
        message.yiaddr,
        message.siaddr,
        message.giaddr,
        message.chaddr,
        sname,
        file,
    )
    packet = header + MAGIC_COOKIE + main + bytes((Option.END,))
    if len(packet) < MIN_MESSAGE_SIZE:
        packet += bytes(MIN_MESSAGE_SIZE - len(packet))
    return packet
