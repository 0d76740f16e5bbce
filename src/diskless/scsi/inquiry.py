"""INQUIRY data: the standard page (SPC-4 §6.6.2) and the vital product data pages we support.

Everything here is fixed for the life of a logical unit, so :class:`InquiryData` builds each page
once and INQUIRY only slices it to the ALLOCATION LENGTH.
"""

from __future__ import annotations

import struct

from diskless.scsi.constants import VpdPage
from diskless.scsi.identity import BlockLimits, LuIdentity

__all__ = [
    "ABSENT_LUN_STANDARD_INQUIRY",
    "ABSENT_LUN_SUPPORTED_VPD",
    "PERIPHERAL_DISK",
    "STANDARD_INQUIRY_LENGTH",
    "InquiryData",
]

PERIPHERAL_DISK = (
    0x00  # PERIPHERAL QUALIFIER 000b (connected) | DEVICE TYPE 00h (direct access block)
)
_PERIPHERAL_ABSENT = 0x7F  # PQ 011b (no LU here) | DEVICE TYPE 1Fh (unknown), SPC-4 §6.6.2

STANDARD_INQUIRY_LENGTH = 96
"""Bytes of standard INQUIRY data; 74 would do, 96 is what LIO returns (ADDITIONAL LENGTH 91)."""

_VERSION_SPC4 = 0x06
_HISUP = 0x10  # hierarchical LUN addressing (the only kind REPORT LUNS uses)
_RESPONSE_DATA_FORMAT = 0x02
_RMB = 0x80
_CMDQUE = 0x02  # full task management: SIMPLE/ORDERED/HEAD OF QUEUE attributes accepted

# Version descriptors, SPC-4 §6.6.2 table 144: what we claim to implement. libiscsi enables its
# SBC-3 checks (READ CAPACITY(16), VPD 0xB0 length 0x3C) when it finds 0x04C0.
_VERSION_DESCRIPTORS = (
    0x00A0,  # SAM-5 (no version claimed)
    0x0960,  # iSCSI (no version claimed)
    0x0460,  # SPC-4 (no version claimed)
    0x04C0,  # SBC-3 (no version claimed)
)

_SUPPORTED_VPD = (
    VpdPage.SUPPORTED_PAGES,
    VpdPage.UNIT_SERIAL_NUMBER,
    VpdPage.DEVICE_IDENTIFICATION,
    VpdPage.BLOCK_LIMITS,
    VpdPage.BLOCK_DEVICE_CHARACTERISTICS,
    VpdPage.LOGICAL_BLOCK_PROVISIONING,
)

# Designation descriptor header, SPC-4 §7.8.6.1: protocol|code set, PIV|association|type, 0, length.
_CODE_SET_BINARY = 0x1
_CODE_SET_ASCII = 0x2
_CODE_SET_UTF8 = 0x3
_PROTOCOL_ISCSI = 0x5
_PIV = 0x80
_ASSOCIATION_LU = 0x00
_ASSOCIATION_TARGET_DEVICE = 0x20
_DESIGNATOR_T10_VENDOR = 0x1
_DESIGNATOR_NAA = 0x3
_DESIGNATOR_SCSI_NAME = 0x8

_BLOCK_LIMITS_PAGE_LENGTH = 0x3C  # SBC-3 §6.5.3; libiscsi insists on 0x3C for SBC-3 devices
_BLOCK_LIMITS = struct.Struct(">BBHIIIIIII")  # bytes 4..35 of VPD 0xB0
_WSNZ = 0x01  # WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is an error, not "to the end"
_UGAVALID = 0x80000000
_MAX_COMPARE_AND_WRITE = 0  # no COMPARE AND WRITE
_MAX_PREFETCH = 0  # no limit beyond the capacity

_BDC_PAGE_LENGTH = 0x3C  # SBC-3 §6.5.2
_NON_ROTATING = (
    0x0001  # MEDIUM ROTATION RATE: solid state, so Windows retrims instead of defragging
)

_LBP_PAGE_LENGTH = 0x04  # SBC-3 §6.5.4
_LBPU = 0x80  # UNMAP supported
_LBPWS = 0x40  # WRITE SAME(16) with UNMAP supported
_LBPWS10 = 0x20  # WRITE SAME(10) with UNMAP supported
_LBPRZ = 0x04  # unmapped blocks read as zeros (our discard guarantees it)
_PROVISIONING_THIN = 0x02


def _ascii(value: str, width: int) -> bytes:
    return value.encode("ascii").ljust(width, b" ")


def _vpd(page: int, body: bytes) -> bytes:
    return bytes((PERIPHERAL_DISK, page)) + len(body).to_bytes(2, "big") + body


def _designator(code_set: int, association_type: int, value: bytes) -> bytes:
    return bytes((code_set, association_type, 0, len(value))) + value


class InquiryData:
    """The standard INQUIRY data and every VPD page of one logical unit, built once."""

    def __init__(self, identity: LuIdentity, limits: BlockLimits, *, removable: bool) -> None:
        self.standard = _standard(identity, removable=removable)
        pages = {
            VpdPage.SUPPORTED_PAGES: _vpd(VpdPage.SUPPORTED_PAGES, bytes(_SUPPORTED_VPD)),
            VpdPage.UNIT_SERIAL_NUMBER: _vpd(
                VpdPage.UNIT_SERIAL_NUMBER, identity.serial.encode("ascii")
            ),
            VpdPage.DEVICE_IDENTIFICATION: _device_identification(identity),
            VpdPage.BLOCK_LIMITS: _block_limits(limits),
            VpdPage.BLOCK_DEVICE_CHARACTERISTICS: _block_device_characteristics(),
            VpdPage.LOGICAL_BLOCK_PROVISIONING: _logical_block_provisioning(),
        }
        self.vpd: dict[int, bytes] = {int(code): page for code, page in pages.items()}


def _standard(identity: LuIdentity, *, removable: bool) -> bytes:
    buf = bytearray(STANDARD_INQUIRY_LENGTH)
    buf[0] = PERIPHERAL_DISK
    buf[1] = _RMB if removable else 0
    buf[2] = _VERSION_SPC4
    buf[3] = _HISUP | _RESPONSE_DATA_FORMAT
    buf[4] = STANDARD_INQUIRY_LENGTH - 5  # ADDITIONAL LENGTH
    buf[7] = _CMDQUE
    buf[8:16] = _ascii(identity.vendor, 8)
    buf[16:32] = _ascii(identity.product, 16)
    buf[32:36] = _ascii(identity.revision, 4)
    for index, descriptor in enumerate(_VERSION_DESCRIPTORS):
        buf[58 + 2 * index : 60 + 2 * index] = descriptor.to_bytes(2, "big")
    return bytes(buf)


def _device_identification(identity: LuIdentity) -> bytes:
    """VPD 0x83 (SPC-4 §7.8.6): NAA and T10 vendor ID of the LU, then the target name if known."""
    body = _designator(_CODE_SET_BINARY, _ASSOCIATION_LU | _DESIGNATOR_NAA, identity.naa)
    # T10 VENDOR ID BASED: the 8-byte vendor, then a vendor-specific part: the serial, as LIO does.
    t10 = _ascii(identity.vendor, 8) + identity.serial.encode("ascii")
    body += _designator(_CODE_SET_ASCII, _ASSOCIATION_LU | _DESIGNATOR_T10_VENDOR, t10)
    if identity.target_name is not None:
        # SCSI NAME STRING: null-terminated, padded to a multiple of 4 (SPC-4 §7.8.6.11).
        name = identity.target_name.encode("utf-8") + b"\x00"
        name += bytes(-len(name) % 4)
        body += _designator(
            (_PROTOCOL_ISCSI << 4) | _CODE_SET_UTF8,
            _PIV | _ASSOCIATION_TARGET_DEVICE | _DESIGNATOR_SCSI_NAME,
            name,
        )
    return _vpd(VpdPage.DEVICE_IDENTIFICATION, body)


def _block_limits(limits: BlockLimits) -> bytes:
    """VPD 0xB0 (SBC-3 §6.5.3 table 208)."""
    body = bytearray(_BLOCK_LIMITS_PAGE_LENGTH)
    _BLOCK_LIMITS.pack_into(
        body,
        0,
        _WSNZ,
        _MAX_COMPARE_AND_WRITE,
        limits.optimal_granularity_blocks,
        limits.max_transfer_blocks,
        0,  # OPTIMAL TRANSFER LENGTH: unreported, so mkfs does not invent a RAID stripe
        _MAX_PREFETCH,
        limits.max_unmap_blocks,
        limits.max_unmap_descriptors,
        limits.unmap_granularity_blocks,
        _UGAVALID,  # UNMAP GRANULARITY ALIGNMENT 0: granules start at LBA 0
    )
    body[32:40] = limits.max_write_same_blocks.to_bytes(8, "big")
    return _vpd(VpdPage.BLOCK_LIMITS, bytes(body))


def _block_device_characteristics() -> bytes:
    body = bytearray(_BDC_PAGE_LENGTH)
    body[0:2] = _NON_ROTATING.to_bytes(2, "big")
    return _vpd(VpdPage.BLOCK_DEVICE_CHARACTERISTICS, bytes(body))


def _logical_block_provisioning() -> bytes:
    body = bytes((0, _LBPU | _LBPWS | _LBPWS10 | _LBPRZ, _PROVISIONING_THIN, 0))
    assert len(body) == _LBP_PAGE_LENGTH
    return _vpd(VpdPage.LOGICAL_BLOCK_PROVISIONING, body)


ABSENT_LUN_STANDARD_INQUIRY = bytes((_PERIPHERAL_ABSENT, 0, _VERSION_SPC4, _HISUP | 2, 31)) + bytes(
    31
)
"""Standard INQUIRY data for a LUN with no logical unit behind it (36 bytes, PQ 3, type 1Fh)."""

ABSENT_LUN_SUPPORTED_VPD = bytes((_PERIPHERAL_ABSENT, 0, 0, 1, 0))
"""VPD page 0x00 for an absent LUN: it lists only itself."""
