"""iSCSI text segments (RFC 7143 §6.1): ``key=value`` pairs, each followed by one NUL.

Owns the syntax only: splitting and joining pairs, the length limits, and the value encodings
(numbers, ``0x`` hex and ``0b`` base64 binary values). What a key means is negotiation.py's and
login.py's business. Parsing is strict and raises only :class:`MalformedText`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Final

from .errors import LocalProtocolError, MalformedText

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_LARGE_VALUE_LENGTH",
    "MAX_VALUE_LENGTH",
    "decode_binary",
    "encode_base64",
    "encode_hex",
    "encode_text",
    "parse_number",
    "parse_text",
    "split_list",
]

# RFC 7143 §6.1: "key names ... must not exceed 63 characters".
MAX_KEY_LENGTH: Final = 63
# RFC 7143 §6.1: text values are at most 255 bytes unless a key says otherwise.
MAX_VALUE_LENGTH: Final = 255
# CHAP challenges and responses are "large binary values"; a 1024-byte challenge (the largest
# tgt accepts) is 2050 characters in hex. 8192 bytes bounds them with room to spare.
MAX_LARGE_VALUE_LENGTH: Final = 8192
_LARGE_VALUE_PREFIX: Final = "CHAP_"
# RFC 7143 §6.1 standard-label characters, plus '#' for X#/Y#/Z# extension names. The "must begin
# with a capital letter" rule is not enforced: RFC 7144's own iSCSIProtocolLevel breaks it.
_KEY = re.compile(r"[A-Za-z0-9.\-+@_#]+")
_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(r"0[xX][0-9A-Fa-f]+")
_HEX_DIGITS = re.compile(r"[0-9A-Fa-f]+")
_NUMBER_LIMIT: Final = 1 << 64  # RFC 7143 §6.1: numerical values are below 2**64


def parse_text(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Split a text segment into ``(key, value)`` pairs, in order, duplicates kept.

    Every pair, the last included, must end with a NUL (RFC 7143 §6.1). Raises
    :class:`MalformedText` on a missing terminator or ``=``, an empty or over-long key, an
    over-long value or bytes that are not UTF-8.
    """
    raw = bytes(data)
    if not raw:
        return []
    if not raw.endswith(b"\0"):
        raise MalformedText("the last key=value pair is not NUL-terminated")
    pairs = []
    for item in raw[:-1].split(b"\0"):
        key, separator, value = item.partition(b"=")
        if not separator:
            raise MalformedText(f"no '=' in {item[:80]!r}")
        pairs.append((_key(key), _value(key, value)))
    return pairs


def _key(raw: bytes) -> str:
    if not raw or len(raw) > MAX_KEY_LENGTH:
        raise MalformedText(f"key of {len(raw)} bytes (1 to {MAX_KEY_LENGTH} allowed)")
    key = raw.decode("ascii", errors="replace")
    if not _KEY.fullmatch(key):
        raise MalformedText(f"invalid characters in key {key!r}")
    return key


def _value(key: bytes, raw: bytes) -> str:
    large = key.startswith(_LARGE_VALUE_PREFIX.encode("ascii"))
    limit = MAX_LARGE_VALUE_LENGTH if large else MAX_VALUE_LENGTH
    if len(raw) > limit:
        raise MalformedText(f"value of {key.decode('ascii')} is {len(raw)} bytes (max {limit})")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedText(f"value of {key.decode('ascii')} is not UTF-8") from exc


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Join pairs into a text segment; raises :class:`LocalProtocolError` on an illegal pair."""
    out = bytearray()
    for key, value in pairs:
        encoded = value.encode("utf-8")
        limit = MAX_LARGE_VALUE_LENGTH if key.startswith(_LARGE_VALUE_PREFIX) else MAX_VALUE_LENGTH
        if (
            not _KEY.fullmatch(key)
            or len(key) > MAX_KEY_LENGTH
            or len(encoded) > limit
            or b"\0" in encoded
        ):
            raise LocalProtocolError(f"cannot encode text pair {key!r}={value[:40]!r}")
        out += key.encode("ascii") + b"=" + encoded + b"\0"
    return bytes(out)


def split_list(value: str) -> list[str]:
    """The items of a list-of-values (RFC 7143 §6.1: comma-separated)."""
    return value.split(",")


def parse_number(value: str) -> int:
    """A numerical value: decimal or ``0x`` hex, below 2**64 (RFC 7143 §6.1)."""
    if _DECIMAL.fullmatch(value):
        number = int(value, 10)
    elif _HEX.fullmatch(value):
        number = int(value[2:], 16)
    else:
        raise MalformedText(f"{value[:40]!r} is not a number")
    if number >= _NUMBER_LIMIT:
        raise MalformedText(f"{value[:40]!r} does not fit 64 bits")
    return number


def decode_binary(value: str) -> bytes:
    """A binary value: ``0x`` hex (an odd digit count gets a leading zero) or ``0b`` base64."""
    prefix, digits = value[:2].lower(), value[2:]
    if not digits:
        raise MalformedText(f"empty binary value {value!r}")
    try:
        if prefix == "0x":
            if not _HEX_DIGITS.fullmatch(digits):
                raise ValueError("not hex")
            return bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)
        if prefix == "0b":
            return base64.b64decode(digits, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise MalformedText(f"malformed binary value {value[:40]!r}") from exc
    raise MalformedText(f"binary value {value[:40]!r} lacks a 0x or 0b prefix")


def encode_hex(data: bytes) -> str:
    """``data`` as a ``0x`` hex binary value."""
    return "0x" + data.hex()


def encode_base64(data: bytes) -> str:
    """``data`` as a ``0b`` base64 binary value."""
    return "0b" + base64.b64encode(data).decode("ascii")
