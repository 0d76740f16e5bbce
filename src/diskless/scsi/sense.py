"""Sense data: the fixed and descriptor formats of SPC-4 §4.5, and the exception that carries it.

Command handlers raise :class:`CheckCondition`; the logical unit turns it into a CHECK CONDITION
result with fixed-format sense (the format every initiator parses; we keep the control mode page's
D_SENSE bit at zero). Descriptor format is only produced when REQUEST SENSE asks for it (DESC=1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from diskless.scsi.constants import Asc, SenseKey

__all__ = [
    "FIXED_SENSE_LENGTH",
    "CheckCondition",
    "FieldPointer",
    "descriptor_sense",
    "fixed_sense",
]

FIXED_SENSE_LENGTH = 18
"""Bytes of fixed-format sense data we return: the 8-byte header plus ADDITIONAL SENSE LENGTH 10."""

_FIXED_CURRENT = 0x70  # RESPONSE CODE: current error, fixed format
_DESCRIPTOR_CURRENT = 0x72  # RESPONSE CODE: current error, descriptor format
_VALID = 0x80  # fixed format byte 0: the INFORMATION field is valid
_SKSV = 0x80  # sense-key specific valid
_CD = 0x40  # field pointer: 1 = the field is in the CDB, 0 = in the parameter list
_BPV = 0x08  # field pointer: the BIT POINTER is valid
_INFORMATION_DESCRIPTOR = 0x00  # SPC-4 §4.5.2.2
_SENSE_KEY_SPECIFIC_DESCRIPTOR = 0x02  # SPC-4 §4.5.2.4


@dataclass(frozen=True, slots=True)
class FieldPointer:
    """Where the offending field is (SPC-4 §4.5.2.4.2): byte, bit, CDB or parameter list."""

    byte: int
    bit: int | None = None
    in_cdb: bool = True

    def encode(self) -> bytes:
        """The three sense-key specific bytes: SKSV, C/D, BPV, BIT POINTER, FIELD POINTER."""
        first = _SKSV | (_CD if self.in_cdb else 0)
        if self.bit is not None:
            first |= _BPV | (self.bit & 0x07)
        return bytes((first, (self.byte >> 8) & 0xFF, self.byte & 0xFF))


class CheckCondition(Exception):  # noqa: N818 -- named after the SCSI status it produces
    """A command ends with CHECK CONDITION and this sense; raised by handlers, caught by the LU."""

    def __init__(
        self,
        key: SenseKey,
        asc: Asc,
        *,
        information: int | None = None,
        field: FieldPointer | None = None,
    ) -> None:
        super().__init__(f"{key.name} {asc.name}")
        self.key = key
        self.asc = asc
        self.information = information
        self.field = field

    def sense(self) -> bytes:
        return fixed_sense(self.key, self.asc, information=self.information, field=self.field)


def fixed_sense(
    key: SenseKey,
    asc: Asc,
    *,
    information: int | None = None,
    field: FieldPointer | None = None,
) -> bytes:
    """18 bytes of fixed-format sense data (SPC-4 §4.5.3 table 45)."""
    if information is None and field is None:
        return _plain_fixed_sense(key, asc)
    buf = bytearray(_plain_fixed_sense(key, asc))
    if information is not None:
        buf[0] |= _VALID
        buf[3:7] = (information & 0xFFFFFFFF).to_bytes(4, "big")
    if field is not None:
        buf[15:18] = field.encode()
    return bytes(buf)


@functools.cache
def _plain_fixed_sense(key: SenseKey, asc: Asc) -> bytes:
    buf = bytearray(FIXED_SENSE_LENGTH)
    buf[0] = _FIXED_CURRENT
    buf[2] = key
    buf[7] = FIXED_SENSE_LENGTH - 8  # ADDITIONAL SENSE LENGTH
    buf[12] = asc.asc
    buf[13] = asc.ascq
    return bytes(buf)


def descriptor_sense(
    key: SenseKey,
    asc: Asc,
    *,
    information: int | None = None,
    field: FieldPointer | None = None,
) -> bytes:
    """Descriptor-format sense data (SPC-4 §4.5.2) with information and field descriptors."""
    descriptors = bytearray()
    if information is not None:
        descriptors += bytes((_INFORMATION_DESCRIPTOR, 0x0A, _VALID, 0))
        descriptors += information.to_bytes(8, "big")
    if field is not None:
        descriptors += bytes((_SENSE_KEY_SPECIFIC_DESCRIPTOR, 0x06, 0, 0))
        descriptors += field.encode() + b"\x00"
    header = bytes((_DESCRIPTOR_CURRENT, key, asc.asc, asc.ascq, 0, 0, 0, len(descriptors)))
    return header + bytes(descriptors)
