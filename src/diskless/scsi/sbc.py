"""Handlers of the block commands (SBC-3): capacity, reads, writes, verification, cache, unmap.

The CDB sizes of one command share a handler made by a factory over a
:class:`~diskless.scsi.cdb.BlockLayout`, so READ(10) and READ(16) run the same code. Checks, in
order: protection fields (we have no protection information, so RDPROTECT/WRPROTECT/VRPROTECT
must be 0), the LBA range, the transfer length against MAXIMUM TRANSFER LENGTH; writes then check
write protection before touching the device.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from typing import TYPE_CHECKING

from diskless.scsi.cdb import BlockLayout, allocation_length
from diskless.scsi.constants import Asc, ScsiStatus, SenseKey
from diskless.scsi.dispatch import (
    DataOut,
    PlanFunction,
    RunFunction,
    check_lba_range,
    data_in,
    data_out,
    invalid_field,
    payload,
    require_data,
)
from diskless.scsi.result import NO_DATA, CommandPlan, CommandResult
from diskless.scsi.sense import CheckCondition, FieldPointer
from diskless.storage.blockdev import ZeroExtent

if TYPE_CHECKING:
    from diskless.scsi.lu import LogicalUnit

__all__ = [
    "PROTECT_FIELDS",
    "plan_read_capacity_10",
    "plan_read_capacity_16",
    "plan_unmap",
    "prefetch",
    "reader",
    "run_read_capacity_10",
    "run_read_capacity_16",
    "run_unmap",
    "synchronize_cache",
    "verifier",
    "write_and_verify",
    "write_same",
    "writer",
]

Handlers = tuple[PlanFunction, RunFunction]

PROTECT_FIELDS = 0xE0
"""Byte 1 bits 7-5 of a block command: RDPROTECT / WRPROTECT / VRPROTECT (none supported)."""
_FUA = 0x08
_BYTCHK_SHIFT = 1  # VERIFY byte 1 bits 2-1
_BYTCHK_RESERVED = 2
_BYTCHK_ONE_BLOCK = 3  # SBC-3: compare one block of Data-Out against every block of the range
_WAV_RESERVED = 0x04  # WRITE AND VERIFY byte 1 bit 2: reserved (SBC-3), BYTCHK 1xb (SBC-4)
_ANCHOR = 0x10
_UNMAP = 0x08
_OBSOLETE_DATA = 0x06  # WRITE SAME PBDATA/LBDATA (obsolete in SBC-3, unsupported)
_NDOB = 0x01  # WRITE SAME(16): no Data-Out buffer, the block is zeros

_COMPARE_CHUNK = 256 * 1024  # VERIFY reads the device this much at a time
_WRITE_SAME_CHUNK = 1 << 20  # WRITE SAME writes its repeated pattern this much at a time

_RC10 = struct.Struct(">II")
_RC16 = struct.Struct(">QIBBH16x")
_LBPME = 0x8000  # READ CAPACITY(16) bytes 14-15: logical block provisioning management enabled
_LBPRZ = 0x4000  # unmapped blocks read as zeros
_RC16_LENGTH = 32
_LBA_STATUS_HEADER = struct.Struct(">I4x")  # PARAMETER DATA LENGTH, reserved
_LBA_STATUS_DESCRIPTOR = struct.Struct(">QIB3x")  # LBA, blocks, provisioning status
_MAPPED = 0  # SBC-3 table 42: mapped (or unknown)
_DEALLOCATED = 1
# How far one GET LBA STATUS looks ahead: the answer may describe fewer blocks than remain
# (SBC-3 §5.6), and the initiator asks again from where it stopped.
_LBA_STATUS_SPAN = 1 << 30
_PMI = 0x01

_UNMAP_HEADER = 8
_UNMAP_DESCRIPTOR = struct.Struct(">QI4x")
_UNMAP_DESCRIPTOR_SIZE = _UNMAP_DESCRIPTOR.size


def _transfer_fields(unit: LogicalUnit, cdb: bytes, layout: BlockLayout) -> tuple[int, int, int]:
    """(flags, LBA, blocks) of a READ/WRITE-style CDB, validated."""
    flags, lba, blocks = layout.decode(cdb)
    if flags & PROTECT_FIELDS:
        raise invalid_field(1, 7)
    if lba + blocks > unit.blocks:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)
    if blocks > unit.limits.max_transfer_blocks:
        raise invalid_field(layout.length_byte)
    return flags, lba, blocks


# -- READ, WRITE, WRITE AND VERIFY (SBC-3 §5.7-5.12, §5.36-5.44) ----------------------------------


def reader(layout: BlockLayout) -> Handlers:
    """READ(6/10/12/16): Data-In is the device's read plan, so golden-image data is zero-copy.

    DPO and FUA are accepted and change nothing: our reads come from the page cache, which is
    always coherent with writes. A TRANSFER LENGTH of 0 reads nothing (except READ(6): 256).
    """

    def plan(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
        blocks = _transfer_fields(unit, cdb, layout)[2]
        return data_in(blocks << unit.block_shift)

    def run(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
        _, lba, blocks = _transfer_fields(unit, cdb, layout)
        if not blocks:
            return CommandResult(ScsiStatus.GOOD)
        shift = unit.block_shift
        return CommandResult(
            ScsiStatus.GOOD, b"", unit.device.read_plan(lba << shift, blocks << shift)
        )

    return plan, run


def writer(layout: BlockLayout) -> Handlers:
    """WRITE(6/10/12/16): FUA (or a disabled write cache) makes the write durable before GOOD."""

    def plan(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
        blocks = _transfer_fields(unit, cdb, layout)[2]
        return data_out(blocks << unit.block_shift)

    def run(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
        flags, lba, blocks = _transfer_fields(unit, cdb, layout)
        unit._check_writable()
        shift = unit.block_shift
        buffer = require_data(data, blocks << shift)
        if blocks:
            fua = bool(flags & _FUA) or not unit.write_cache_enabled
            unit.device.write(lba << shift, buffer, fua=fua)
        return CommandResult(ScsiStatus.GOOD)

    return plan, run


def write_and_verify(layout: BlockLayout) -> Handlers:
    """WRITE AND VERIFY(10/12/16): a write made durable at once (FUA); reading back what the
    device just stored would prove nothing more."""

    def fields(unit: LogicalUnit, cdb: bytes) -> tuple[int, int]:
        flags, lba, blocks = _transfer_fields(unit, cdb, layout)
        if flags & _WAV_RESERVED:
            raise invalid_field(1, 2)
        return lba, blocks

    def plan(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
        return data_out(fields(unit, cdb)[1] << unit.block_shift)

    def run(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
        lba, blocks = fields(unit, cdb)
        unit._check_writable()
        shift = unit.block_shift
        buffer = require_data(data, blocks << shift)
        if blocks:
            unit.device.write(lba << shift, buffer, fua=True)
        return CommandResult(ScsiStatus.GOOD)

    return plan, run


# -- VERIFY (SBC-3 §5.33-5.35) ---------------------------------------------------------------------


def verifier(layout: BlockLayout) -> Handlers:
    """VERIFY(10/12/16). BYTCHK 0: range check only (our medium has no unreadable blocks);
    BYTCHK 1: compare the Data-Out with the blocks; BYTCHK 3: compare one Data-Out block with
    each block. A difference is MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with the offset of
    the first differing byte in INFORMATION."""

    def fields(unit: LogicalUnit, cdb: bytes) -> tuple[int, int, int]:
        flags, lba, blocks = layout.decode(cdb)
        if flags & PROTECT_FIELDS:
            raise invalid_field(1, 7)
        bytchk = (flags >> _BYTCHK_SHIFT) & 0x03
        if bytchk == _BYTCHK_RESERVED:
            raise invalid_field(1, 2)
        check_lba_range(unit, lba, blocks)
        if bytchk and blocks > unit.limits.max_transfer_blocks:
            raise invalid_field(layout.length_byte)
        return bytchk, lba, blocks

    def expected_length(unit: LogicalUnit, bytchk: int, blocks: int) -> int:
        if bytchk == _BYTCHK_ONE_BLOCK:
            return unit.block_size if blocks else 0
        return blocks << unit.block_shift if bytchk else 0

    def plan(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
        bytchk, _, blocks = fields(unit, cdb)
        return data_out(expected_length(unit, bytchk, blocks))

    def run(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
        bytchk, lba, blocks = fields(unit, cdb)
        buffer = require_data(data, expected_length(unit, bytchk, blocks))
        if bytchk and blocks:
            expected = bytes(buffer) * blocks if bytchk == _BYTCHK_ONE_BLOCK else buffer
            _compare(unit, lba << unit.block_shift, expected)
        return CommandResult(ScsiStatus.GOOD)

    return plan, run


def _compare(unit: LogicalUnit, offset: int, expected: bytes | memoryview) -> None:
    pos = 0
    total = len(expected)
    while pos < total:
        step = min(_COMPARE_CHUNK, total - pos)
        actual = unit.device.read(offset + pos, step)
        wanted = expected[pos : pos + step]
        if actual != wanted:
            raise CheckCondition(
                SenseKey.MISCOMPARE,
                Asc.MISCOMPARE_DURING_VERIFY,
                information=pos + _first_difference(actual, wanted),
            )
        pos += step


def _first_difference(left: bytes, right: bytes | memoryview) -> int:
    """Index of the first differing byte of two unequal, equally long buffers (binary search)."""
    low, high = 0, len(left)  # the first difference lies in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if left[low:middle] != right[low:middle]:
            high = middle
        else:
            low = middle
    return low


# -- WRITE SAME (SBC-3 §5.45-5.46) and UNMAP (SBC-3 §5.28) -----------------------------------------


def write_same(layout: BlockLayout, *, sixteen: bool) -> Handlers:
    """WRITE SAME(10/16): one block repeated over the range.

    UNMAP=1 with a zero block (or NDOB) discards the range, which reads back as zeros (LBPRZ);
    UNMAP=0 with zeros writes zeros without releasing space; any other block is written out.
    WSNZ=1 in VPD 0xB0: a count of 0 is an invalid field, as is ANCHOR (no ANC_SUP) and the
    obsolete PBDATA/LBDATA bits.
    """

    def fields(unit: LogicalUnit, cdb: bytes) -> tuple[int, int, int, bool]:
        flags, lba, blocks = layout.decode(cdb)
        if flags & PROTECT_FIELDS:
            raise invalid_field(1, 7)
        if flags & _ANCHOR:
            raise invalid_field(1, 4)
        if flags & _OBSOLETE_DATA:
            raise invalid_field(1, 2)
        check_lba_range(unit, lba, blocks)
        if not blocks or blocks > unit.limits.max_write_same_blocks:
            raise invalid_field(layout.length_byte)
        return flags, lba, blocks, sixteen and bool(flags & _NDOB)

    def plan(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
        ndob = fields(unit, cdb)[3]
        return NO_DATA if ndob else data_out(unit.block_size)

    def run(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
        flags, lba, blocks, ndob = fields(unit, cdb)
        unit._check_writable()
        block = b"" if ndob else bytes(require_data(data, unit.block_size))
        shift = unit.block_shift
        offset, length = lba << shift, blocks << shift
        durable = not unit.write_cache_enabled
        device = unit.device
        if ndob or block == bytes(unit.block_size):
            if flags & _UNMAP:
                device.discard(offset, length)
                if durable:
                    device.flush()
            else:
                device.write_zeroes(offset, length, unmap=False, fua=durable)
        else:
            chunk_blocks = min(blocks, max(1, _WRITE_SAME_CHUNK >> shift))
            chunk = block * chunk_blocks
            end = offset + length
            while offset < end:
                step = min(len(chunk), end - offset)
                device.write(offset, memoryview(chunk)[:step])
                offset += step
            if durable:
                device.flush()
        return CommandResult(ScsiStatus.GOOD)

    return plan, run


def plan_unmap(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    if cdb[1] & 0x01:
        raise invalid_field(1, 0)  # ANCHOR, and ANC_SUP is 0
    return data_out(allocation_length(cdb, 7, 2))


def run_unmap(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
    """UNMAP: every descriptor is checked (range, counts) before any block is discarded.

    A PARAMETER LIST LENGTH of 0 is no error (SBC-3); 1-7, or descriptors running past the list,
    are PARAMETER LIST LENGTH ERROR; more descriptors or blocks than VPD 0xB0 allows are INVALID
    FIELD IN PARAMETER LIST.
    """
    length = plan_unmap(unit, cdb).transfer_length
    unit._check_writable()
    params = require_data(data, length)
    if not length:
        return CommandResult(ScsiStatus.GOOD)
    if length < _UNMAP_HEADER:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    descriptors_length = int.from_bytes(params[2:4], "big")
    if descriptors_length > length - _UNMAP_HEADER:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    count = descriptors_length // _UNMAP_DESCRIPTOR_SIZE
    limits = unit.limits
    if count > limits.max_unmap_descriptors:
        raise _parameter_error(2)
    ranges: list[tuple[int, int]] = []
    total = 0
    for index in range(count):
        at = _UNMAP_HEADER + index * _UNMAP_DESCRIPTOR_SIZE
        lba, blocks = _UNMAP_DESCRIPTOR.unpack_from(params, at)
        check_lba_range(unit, lba, blocks)
        total += blocks
        if total > limits.max_unmap_blocks:
            raise _parameter_error(at + 8)
        if blocks:
            ranges.append((lba, blocks))
    shift = unit.block_shift
    for lba, blocks in ranges:
        unit.device.discard(lba << shift, blocks << shift)
    if ranges and not unit.write_cache_enabled:
        unit.device.flush()
    return CommandResult(ScsiStatus.GOOD)


def _parameter_error(byte: int) -> CheckCondition:
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        field=FieldPointer(byte, in_cdb=False),
    )


# -- SYNCHRONIZE CACHE (SBC-3 §5.22-5.23) and PRE-FETCH (SBC-3 §5.5-5.6) ---------------------------


def _range_only(layout: BlockLayout) -> PlanFunction:
    def plan(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
        _, lba, blocks = layout.decode(cdb)
        check_lba_range(unit, lba, blocks)  # a count of 0 means "to the end of the medium"
        return NO_DATA

    return plan


def synchronize_cache(layout: BlockLayout) -> Handlers:
    """SYNCHRONIZE CACHE(10/16): flushes the whole device whatever the range (it is cheaper than
    tracking dirty ranges, and the overlay's metadata must be flushed anyway). IMMED is ignored:
    GOOD comes after the flush."""
    plan = _range_only(layout)

    def run(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
        plan(unit, cdb)
        unit.device.flush()
        return CommandResult(ScsiStatus.GOOD)

    return plan, run


def prefetch(layout: BlockLayout) -> Handlers:
    """PRE-FETCH(10/16): range check, then GOOD. We have no cache of our own to fill (the host's
    page cache is shared), so CONDITION MET would promise something we do not do."""
    plan = _range_only(layout)

    def run(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
        plan(unit, cdb)
        return CommandResult(ScsiStatus.GOOD)

    return plan, run


# -- READ CAPACITY (SBC-3 §5.15-5.16) -------------------------------------------------------------


def _check_pmi(cdb: bytes, lba_start: int, lba_end: int, pmi_byte: int) -> None:
    # SBC-3: with PMI 0 the LOGICAL BLOCK ADDRESS field must be 0 (PMI itself is obsolete).
    if not cdb[pmi_byte] & _PMI and any(cdb[lba_start:lba_end]):
        raise invalid_field(lba_start)


def plan_read_capacity_10(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    _check_pmi(cdb, 2, 6, 8)
    return data_in(_RC10.size)


def run_read_capacity_10(
    unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable
) -> CommandResult:
    """The last LBA, or FFFFFFFFh when it does not fit: the initiator must use READ CAPACITY(16)."""
    plan_read_capacity_10(unit, cdb)
    last = min(unit.blocks - 1, 0xFFFFFFFF)
    return CommandResult.good(_RC10.pack(last, unit.block_size))


def plan_read_capacity_16(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    _check_pmi(cdb, 2, 10, 14)
    return data_in(allocation_length(cdb, 10, 4))


def run_read_capacity_16(
    unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable
) -> CommandResult:
    plan = plan_read_capacity_16(unit, cdb)
    answer = _RC16.pack(
        unit.blocks - 1,
        unit.block_size,
        0,  # P_TYPE / PROT_EN: no protection information
        unit.limits.physical_block_exponent,  # P_I_EXPONENT 0 | LOGICAL BLOCKS PER PHYSICAL BLOCK
        _LBPME | _LBPRZ,  # LOWEST ALIGNED LOGICAL BLOCK ADDRESS 0
    )
    assert len(answer) == _RC16_LENGTH
    return payload(answer, plan.transfer_length)


def plan_get_lba_status(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    """GET LBA STATUS (SBC-3 §5.6): which blocks are mapped and which read as zeros unallocated."""
    lba = int.from_bytes(cdb[2:10], "big")
    if lba >= unit.blocks:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)
    return data_in(allocation_length(cdb, 10, 4))


def run_get_lba_status(
    unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable
) -> CommandResult:
    plan = plan_get_lba_status(unit, cdb)
    lba = int.from_bytes(cdb[2:10], "big")
    shift = unit.block_shift
    room = max(1, (plan.transfer_length - _LBA_STATUS_HEADER.size) // _LBA_STATUS_DESCRIPTOR.size)
    start = lba << shift
    length = min(unit.device.size - start, _LBA_STATUS_SPAN)
    length -= length % unit.block_size
    descriptors: list[tuple[int, int, int]] = []  # (lba, blocks, status), merged runs
    for extent in unit.device.read_plan(start, length):
        blocks = extent.length >> shift
        status = _DEALLOCATED if isinstance(extent, ZeroExtent) else _MAPPED
        if descriptors and descriptors[-1][2] == status:
            first, count, _ = descriptors[-1]
            descriptors[-1] = (first, count + blocks, status)
        elif len(descriptors) < room:
            descriptors.append((lba, blocks, status))
        else:
            break
        lba += blocks
    body = b"".join(
        _LBA_STATUS_DESCRIPTOR.pack(first, count, status) for first, count, status in descriptors
    )
    header = _LBA_STATUS_HEADER.pack(len(body) + 4)
    return payload(header + body, plan.transfer_length)
