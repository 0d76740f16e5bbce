"""Who a logical unit is (:class:`LuIdentity`) and what it accepts (:class:`BlockLimits`).

Both are chosen by the caller: the identity must stay the same for a client's disk across
restarts (Windows keys its disk and volume database on the NAA designator, Linux its
``/dev/disk/by-id`` links on the serial and NAA), and the limits are what VPD page 0xB0 advertises
and what the commands enforce.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = [
    "BlockLimits",
    "LuIdentity",
    "naa_locally_assigned",
    "naa_registered_extended",
]

_NAA_LENGTHS = {
    2: 8,
    3: 8,
    5: 8,
    6: 16,
}  # NAA field (first nibble) → designator length, SPC-4 §7.8.6.6
# The serial also goes into the T10 vendor ID designator after the 8-byte vendor, and a
# designator's length is one byte (SPC-4 §7.8.6.1); real serials are far shorter anyway.
_MAX_SERIAL_LENGTH = 64
_MAX_TARGET_NAME_LENGTH = 223  # RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes


def _check_ascii(name: str, value: str, max_length: int, *, allow_empty: bool = False) -> None:
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{name} {value!r} is longer than {max_length} characters")
    # SPC-4 §4.3.1: ASCII data fields hold only 0x20-0x7E.
    if any(not 0x20 <= ord(ch) <= 0x7E for ch in value):
        raise ValueError(f"{name} {value!r} must be printable ASCII")


@dataclass(frozen=True, slots=True, kw_only=True)
class LuIdentity:
    """The names INQUIRY reports for a logical unit.

    ``vendor`` (T10 VENDOR IDENTIFICATION, 8 chars), ``product`` (16) and ``revision`` (4) are
    space-padded into standard INQUIRY data; ``serial`` is the unit serial number (VPD 0x80);
    ``naa`` is the NAA designator of VPD 0x83: 8 bytes for NAA 2, 3 (locally assigned) or 5
    (IEEE registered), 16 bytes for NAA 6 (IEEE registered extended); see
    :func:`naa_locally_assigned`. ``target_name``, when given, adds the iSCSI target name as a SCSI
    NAME STRING designator of the target device.
    """

    serial: str
    naa: bytes
    vendor: str = "DISKLESS"
    product: str = "VIRTUAL DISK"
    revision: str = "0001"
    target_name: str | None = None

    def __post_init__(self) -> None:
        _check_ascii("vendor", self.vendor, 8)
        _check_ascii("product", self.product, 16)
        _check_ascii("revision", self.revision, 4)
        _check_ascii("serial", self.serial, _MAX_SERIAL_LENGTH)
        naa_type = self.naa[0] >> 4 if self.naa else -1
        if _NAA_LENGTHS.get(naa_type) != len(self.naa):
            raise ValueError(
                f"naa {self.naa.hex()} is not an NAA 2/3/5 (8-byte) or NAA 6 (16-byte) designator"
            )
        if self.target_name is not None:
            _check_ascii("target_name", self.target_name, _MAX_TARGET_NAME_LENGTH)


def naa_locally_assigned(seed: bytes) -> bytes:
    """An 8-byte NAA 3 (locally assigned) designator derived from ``seed``; needs no IEEE OUI.

    The same seed (say, the client disk's UUID) always gives the same designator.
    """
    digest = int.from_bytes(hashlib.sha256(b"diskless-naa\0" + seed).digest()[:8], "big")
    return ((0x3 << 60) | (digest & ((1 << 60) - 1))).to_bytes(8, "big")


def naa_registered_extended(oui: int, seed: bytes) -> bytes:
    """A 16-byte NAA 6 designator: ``oui`` (24-bit IEEE company ID) plus 100 bits from ``seed``."""
    if not 0 <= oui < 1 << 24:
        raise ValueError(f"OUI {oui:#x} is not a 24-bit number")
    digest = int.from_bytes(hashlib.sha256(b"diskless-naa6\0" + seed).digest()[:13], "big")
    value = (0x6 << 124) | (oui << 100) | (digest & ((1 << 100) - 1))
    return value.to_bytes(16, "big")


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockLimits:
    """Limits a logical unit advertises in VPD 0xB0/READ CAPACITY(16) and enforces, in blocks.

    The defaults suit a qcow2 overlay with 64 KiB clusters behind an iSCSI session: per-command
    buffers stay at 1 MiB (the transport buffers a whole Data-Out payload), and one UNMAP touches
    at most 512 MiB (one WRITE SAME 32 MiB), so a command finishes well inside initiator timeouts.
    """

    max_transfer_blocks: int = 2048
    """MAXIMUM TRANSFER LENGTH: READ/WRITE/VERIFY beyond this fail with INVALID FIELD IN CDB."""
    optimal_granularity_blocks: int = 8
    """OPTIMAL TRANSFER LENGTH GRANULARITY: 4 KiB, the host page (Linux ``minimum_io_size``)."""
    max_unmap_blocks: int = 1 << 20
    """MAXIMUM UNMAP LBA COUNT per UNMAP (libiscsi accepts at most 1 Mi unless unlimited)."""
    max_unmap_descriptors: int = 4095
    """MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT: all a 64 KiB UNMAP parameter list can hold."""
    unmap_granularity_blocks: int = 128
    """OPTIMAL UNMAP GRANULARITY: the qcow2 cluster (64 KiB), so discards free whole clusters."""
    max_write_same_blocks: int = 0xFFFF
    """MAXIMUM WRITE SAME LENGTH: just under 65536 blocks, because an initiator that sees a limit
    of 65536 or more may verify it by first WRITEing that many blocks in one command (libiscsi's
    WriteSame16.Unmap does), far past MAXIMUM TRANSFER LENGTH. UNMAP has its own, larger limit."""
    physical_block_exponent: int = 0
    """LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT of READ CAPACITY(16); 3 would mean 4 KiB."""

    def __post_init__(self) -> None:
        for name in (
            "max_transfer_blocks",
            "optimal_granularity_blocks",
            "max_unmap_blocks",
            "max_unmap_descriptors",
            "unmap_granularity_blocks",
            "max_write_same_blocks",
        ):
            value = getattr(self, name)
            if not 1 <= value <= 0xFFFFFFFF:
                raise ValueError(f"{name} must be in 1..2**32-1, not {value}")
        if self.optimal_granularity_blocks > 0xFFFF:
            raise ValueError("optimal_granularity_blocks must fit in 16 bits")
        if not 0 <= self.physical_block_exponent <= 15:
            raise ValueError("physical_block_exponent must be in 0..15")
