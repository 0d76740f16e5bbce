"""iSCSI framing arithmetic and CRC32C digests (RFC 7143 §11.1, §13.1).

Owns segment padding and the HeaderDigest/DataDigest values: CRC32C (Castagnoli) over the header,
and over the data segment including its padding, written least-significant byte first as libiscsi
puts it on the wire (``lib/socket.c``; checked on receive in ``lib/pdu.c``). :class:`DataDigest`
digests data that is streamed out in pieces, so READ data never has to be joined to be digested.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

import google_crc32c

from .constants import BHS_LENGTH, RejectReason
from .errors import DigestError

__all__ = [
    "DIGEST_LENGTH",
    "DataDigest",
    "crc32c",
    "data_digest",
    "header_digest",
    "pad_length",
    "padded_length",
    "verify_data_digest",
    "verify_header_digest",
]

DIGEST_LENGTH: Final = 4
_DIGEST = struct.Struct("<I")  # CRC32C goes on the wire least-significant byte first (libiscsi)
_Buffer = bytes | bytearray | memoryview


def pad_length(n: int) -> int:
    """Bytes of zero padding after a segment of ``n`` bytes (segments end on 4-byte words)."""
    return -n % 4


def padded_length(n: int) -> int:
    """``n`` rounded up to a multiple of 4."""
    return n + pad_length(n)


def crc32c(data: _Buffer, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc``."""
    # google_crc32c only takes objects without a release-buffer hook, i.e. real bytes.
    chunk = data if isinstance(data, bytes) else bytes(data)
    return int(google_crc32c.extend(crc, chunk))


def header_digest(bhs_and_ahs: _Buffer) -> bytes:
    """The 4-byte HeaderDigest over BHS and AHS, as it goes on the wire."""
    return _DIGEST.pack(crc32c(bhs_and_ahs))


class DataDigest:
    """Incremental DataDigest for data that is streamed out in pieces.

    ``digest()`` covers the padding too (RFC 7143 §11.1): it pads the total length fed so far.
    """

    __slots__ = ("_crc", "_length")

    def __init__(self) -> None:
        self._crc = 0
        self._length = 0

    def update(self, chunk: _Buffer) -> None:
        self._crc = crc32c(chunk, self._crc)
        self._length += len(chunk)

    def digest(self) -> bytes:
        crc = crc32c(bytes(pad_length(self._length)), self._crc)
        return _DIGEST.pack(crc)


def data_digest(parts: Iterable[_Buffer]) -> bytes:
    """The 4-byte DataDigest over the concatenation of ``parts`` and its padding."""
    digest = DataDigest()
    for part in parts:
        digest.update(part)
    return digest.digest()


def verify_header_digest(bhs_and_ahs: _Buffer, received: _Buffer) -> None:
    """Raise :class:`DigestError` (framing lost: close the connection) on a mismatch."""
    if header_digest(bhs_and_ahs) != bytes(received):
        raise DigestError("header digest mismatch", bhs=bytes(bhs_and_ahs[:BHS_LENGTH]))


def verify_data_digest(segment: _Buffer, received: _Buffer, *, bhs: bytes | None = None) -> None:
    """Raise :class:`DigestError` with reject reason 0x02 on a mismatch (RFC 7143 §7.8).

    ``segment`` is the data segment as received, padding included: the digest covers the
    padding bytes the initiator actually sent, which the RFC only says SHOULD be zero.
    """
    crc = crc32c(segment)
    crc = crc32c(bytes(pad_length(len(segment))), crc)  # a caller may pass it unpadded
    if _DIGEST.pack(crc) != bytes(received):
        raise DigestError(
            "data digest mismatch", reject_reason=RejectReason.DATA_DIGEST_ERROR, bhs=bhs
        )
