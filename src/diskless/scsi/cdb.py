"""Decoding of the CDB fields shared by the block commands (SBC-3 §5).

READ, WRITE, VERIFY, WRITE AND VERIFY, WRITE SAME, PRE-FETCH and SYNCHRONIZE CACHE all place
byte 1 flags, the LOGICAL BLOCK ADDRESS and a block count at the same offsets for a given CDB size,
so one :class:`BlockLayout` per size decodes them all. The structs are compiled once; decoding a
READ(10) is one ``unpack_from`` call.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DATA_OUT_LENGTH_FIELDS",
    "LAYOUT_6",
    "LAYOUT_10",
    "LAYOUT_12",
    "LAYOUT_16",
    "BlockLayout",
    "LengthField",
    "allocation_length",
]

_RW6 = struct.Struct(">I")  # bytes 0-3: OPERATION CODE, then a 21-bit LBA
_RW10 = struct.Struct(">xBIxHx")  # flags, LBA, GROUP NUMBER skipped, TRANSFER LENGTH
_RW12 = struct.Struct(">xBIIxx")
_RW16 = struct.Struct(">xBQIxx")

_READ6_ZERO_MEANS = 256  # SBC-3 §5.7: a READ(6)/WRITE(6) TRANSFER LENGTH of 0 means 256 blocks


def _decode6(cdb: bytes) -> tuple[int, int, int]:
    return 0, _RW6.unpack_from(cdb)[0] & 0x1FFFFF, cdb[4] or _READ6_ZERO_MEANS


def _decode10(cdb: bytes) -> tuple[int, int, int]:
    return _RW10.unpack_from(cdb)


def _decode12(cdb: bytes) -> tuple[int, int, int]:
    return _RW12.unpack_from(cdb)


def _decode16(cdb: bytes) -> tuple[int, int, int]:
    return _RW16.unpack_from(cdb)


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """Where a CDB size keeps its fields; ``decode`` returns ``(byte1 flags, LBA, block count)``."""

    size: int
    decode: Callable[[bytes], tuple[int, int, int]]
    lba_byte: int  # first byte of LOGICAL BLOCK ADDRESS, for sense field pointers
    length_byte: int  # first byte of the block count field


LAYOUT_6 = BlockLayout(6, _decode6, 1, 4)
LAYOUT_10 = BlockLayout(10, _decode10, 2, 7)
LAYOUT_12 = BlockLayout(12, _decode12, 2, 6)
LAYOUT_16 = BlockLayout(16, _decode16, 2, 10)


def allocation_length(cdb: bytes, start: int, size: int) -> int:
    """The big-endian ALLOCATION LENGTH (or PARAMETER LIST LENGTH) at ``cdb[start:start+size]``."""
    return int.from_bytes(cdb[start : start + size], "big")


@dataclass(frozen=True, slots=True)
class LengthField:
    """Where a Data-Out command states how much data it sends, and in which unit."""

    byte: int
    size: int
    in_blocks: bool  # a block count (WRITE...) rather than a byte count (parameter lists)


_BLOCKS_6 = LengthField(4, 1, in_blocks=True)
_BLOCKS_10 = LengthField(7, 2, in_blocks=True)
_BLOCKS_12 = LengthField(6, 4, in_blocks=True)
_BLOCKS_16 = LengthField(10, 4, in_blocks=True)

DATA_OUT_LENGTH_FIELDS: dict[int, LengthField] = {
    0x0A: _BLOCKS_6,  # WRITE(6)
    0x2A: _BLOCKS_10,  # WRITE(10)
    0xAA: _BLOCKS_12,  # WRITE(12)
    0x8A: _BLOCKS_16,  # WRITE(16)
    0x2E: _BLOCKS_10,  # WRITE AND VERIFY(10)
    0xAE: _BLOCKS_12,  # WRITE AND VERIFY(12)
    0x8E: _BLOCKS_16,  # WRITE AND VERIFY(16)
    0x2F: _BLOCKS_10,  # VERIFY(10), BYTCHK 01b only
    0xAF: _BLOCKS_12,  # VERIFY(12)
    0x8F: _BLOCKS_16,  # VERIFY(16)
    0x42: LengthField(7, 2, in_blocks=False),  # UNMAP: PARAMETER LIST LENGTH
    0x15: LengthField(4, 1, in_blocks=False),  # MODE SELECT(6)
    0x55: LengthField(7, 2, in_blocks=False),  # MODE SELECT(10)
}
"""The Data-Out length field of every command whose Data-Out can be cut short (not WRITE SAME)."""
