"""The TFTP packet codec (RFC 1350) and its option extension (RFC 2347): datagrams in, packets out.

Owns the wire format and nothing else: parsing a datagram into one of the packet dataclasses,
encoding the packets a read-only server sends, and the option values of RFC 2348 (blksize),
RFC 2349 (timeout, tsize) and RFC 7440 (windowsize) as strings. Which options a transfer grants is
decided in ``session.py``. Every parse failure raises :class:`MalformedPacket`, so the endpoint can
count and drop bad input without ever letting anything else escape.

File names and option text are decoded as UTF-8 with ``surrogateescape``: bytes that are not UTF-8
survive the round trip to the file system unchanged (``os.fsencode`` undoes the decoding), which is
what a server that passes the client's bytes straight to ``open()`` (tftpd-hpa) does.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Final

from diskless.errors import DisklessError

__all__ = [
    "DATA_HEADER_LENGTH",
    "DEFAULT_BLOCK_SIZE",
    "MAX_BLOCK_SIZE",
    "MAX_REQUEST_LENGTH",
    "MIN_BLOCK_SIZE",
    "Ack",
    "Data",
    "ErrorCode",
    "ErrorPacket",
    "MalformedPacket",
    "Mode",
    "Opcode",
    "OptionAck",
    "Packet",
    "Request",
    "encode_ack",
    "encode_data",
    "encode_error",
    "encode_option_ack",
    "encode_request",
    "pack_data_header",
    "parse_packet",
]


class Opcode(IntEnum):
    READ_REQUEST = 1
    WRITE_REQUEST = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OPTION_ACK = 6


class ErrorCode(IntEnum):
    """ERROR packet codes (RFC 1350 §5; 8 is RFC 2347's option refusal)."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TRANSFER_ID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class Mode(StrEnum):
    """Transfer modes; ``mail`` is obsolete and parsed only so it can be refused by name."""

    OCTET = "octet"
    NETASCII = "netascii"
    MAIL = "mail"


DATA_HEADER_LENGTH: Final = 4
DEFAULT_BLOCK_SIZE: Final = 512
MIN_BLOCK_SIZE: Final = 8  # RFC 2348 range
MAX_BLOCK_SIZE: Final = 65464  # RFC 2348: the largest DATA that fits an IPv4 UDP datagram
# tftpd-hpa reads a request into a 516-byte buffer (a 512-byte segment and its header), and
# RFC 2347 keeps requests with options within 512 bytes; anything longer is not a real client.
MAX_REQUEST_LENGTH: Final = 516

_OPCODE = struct.Struct("!H")
_HEADER = struct.Struct("!HH")  # opcode and block number or error code
_DATA_OPCODE: Final = int(Opcode.DATA)


class MalformedPacket(DisklessError):  # noqa: N818 (reads as what the endpoint drops)
    """A datagram that is not a TFTP packet this server understands."""


@dataclass(frozen=True, slots=True)
class Request:
    """RRQ or WRQ: a file name, a mode, and the options in the order the client sent them.

    Option names are lower-cased (RFC 2347 says they are case-insensitive); a name repeated in
    one request keeps its first value.
    """

    opcode: Opcode
    filename: str
    mode: Mode
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class ErrorPacket:
    code: int
    """An :class:`ErrorCode` value, kept as a plain int: clients send codes outside the RFC."""
    message: str


@dataclass(frozen=True, slots=True)
class OptionAck:
    options: Mapping[str, str]


Packet = Request | Data | Ack | ErrorPacket | OptionAck


def parse_packet(datagram: bytes | bytearray | memoryview) -> Packet:
    """Decode one datagram; raises :class:`MalformedPacket` for anything that is not TFTP."""
    data = bytes(datagram)
    if len(data) < 2:
        raise MalformedPacket(f"{len(data)}-byte datagram has no opcode")
    (code,) = _OPCODE.unpack_from(data)
    if code in (Opcode.READ_REQUEST, Opcode.WRITE_REQUEST):
        return _parse_request(Opcode(code), data)
    if code == Opcode.ACK:
        # tftpd-hpa checks only the minimum length too: some PXE ROMs pad short frames.
        if len(data) < 4:
            raise MalformedPacket("truncated ACK")
        return Ack(_HEADER.unpack_from(data)[1])
    if code == Opcode.DATA:
        if len(data) < 4:
            raise MalformedPacket("truncated DATA")
        return Data(_HEADER.unpack_from(data)[1], data[4:])
    if code == Opcode.ERROR:
        if len(data) < 4:
            raise MalformedPacket("truncated ERROR")
        # The message should end in NUL; a missing terminator is tolerated, it is only for logs.
        message = data[4:].split(b"\0", 1)[0]
        return ErrorPacket(_HEADER.unpack_from(data)[1], _decode(message))
    if code == Opcode.OPTION_ACK:
        return OptionAck(_parse_options(_fields(data[2:])))
    raise MalformedPacket(f"unknown opcode {code}")


def _parse_request(opcode: Opcode, data: bytes) -> Request:
    if len(data) > MAX_REQUEST_LENGTH:
        raise MalformedPacket(f"{len(data)}-byte request is longer than {MAX_REQUEST_LENGTH}")
    fields = _fields(data[2:])
    if len(fields) < 2:
        raise MalformedPacket("request without file name and mode")
    raw_name, raw_mode = fields[0], fields[1]
    if not raw_name:
        raise MalformedPacket("empty file name")
    try:
        mode = Mode(raw_mode.decode("ascii").lower())
    except (UnicodeDecodeError, ValueError):
        raise MalformedPacket(f"unknown mode {raw_mode[:32]!r}") from None
    return Request(opcode, _decode(raw_name), mode, _parse_options(fields[2:]))


def _fields(body: bytes) -> list[bytes]:
    """The NUL-terminated strings of ``body``; the last one must be terminated too."""
    if not body.endswith(b"\0"):
        raise MalformedPacket("string field not NUL-terminated")
    return body[:-1].split(b"\0")


def _parse_options(fields: list[bytes]) -> dict[str, str]:
    options: dict[str, str] = {}
    # Some clients (old PXE ROMs) pad the request with extra NULs: a trailing run of empty
    # fields, or an odd one out, is ignored rather than failing the whole request.
    for index in range(0, len(fields) - 1, 2):
        name = _decode(fields[index]).lower()
        if name and name not in options:
            options[name] = _decode(fields[index + 1])
    return options


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- encoders ---------------------------------------------------------------------------------


def pack_data_header(buffer: bytearray, offset: int, block: int) -> None:
    """Write a DATA header for ``block`` (mod 2^16: blocks roll over to 0) at ``offset``."""
    _HEADER.pack_into(buffer, offset, _DATA_OPCODE, block & 0xFFFF)


def encode_data(block: int, payload: bytes) -> bytes:
    return _HEADER.pack(Opcode.DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    return _HEADER.pack(Opcode.ACK, block & 0xFFFF)


def encode_error(code: ErrorCode, message: str) -> bytes:
    return _HEADER.pack(Opcode.ERROR, code) + _encode(message) + b"\0"


def encode_option_ack(options: Mapping[str, str]) -> bytes:
    return _OPCODE.pack(Opcode.OPTION_ACK) + _encode_options(options)


def encode_request(
    opcode: Opcode, filename: str, mode: Mode, options: Mapping[str, str] | None = None
) -> bytes:
    """An RRQ or WRQ (used by the tests' clients; the server never sends one)."""
    body = _encode(filename) + b"\0" + mode.value.encode("ascii") + b"\0"
    return _OPCODE.pack(opcode) + body + _encode_options(options or {})


def _encode_options(options: Mapping[str, str]) -> bytes:
    return b"".join(
        _encode(name) + b"\0" + _encode(value) + b"\0" for name, value in options.items()
    )
