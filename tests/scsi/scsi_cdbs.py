"""CDB builders and result readers for the SCSI layer tests (field layouts from SPC-4/SBC-3)."""

from __future__ import annotations

import os
import struct
from collections.abc import Hashable

from diskless.scsi import (
    CommandResult,
    DataDirection,
    LogicalUnit,
    LuIdentity,
    ScsiStatus,
    naa_locally_assigned,
)
from diskless.scsi.constants import Asc, SenseKey
from diskless.storage.blockdev import BufferExtent, FileExtent, ZeroExtent

BLOCK = 512
DISK_BLOCKS = 4096  # 2 MiB
IDENTITY = LuIdentity(
    serial="DL0123456789",
    naa=naa_locally_assigned(b"test-disk"),
    target_name="iqn.2024-01.org.diskless:client-1",
)

NEXUS = ("iqn.2024-01.test:initiator", b"\x40\x00\x01\x37\x00\x01")
OTHER = ("iqn.2024-01.test:other", b"\x40\x00\x01\x37\x00\x02")


def run(
    unit: LogicalUnit,
    cdb: bytes,
    data: bytes | None = None,
    nexus: Hashable = NEXUS,
) -> CommandResult:
    """Plan then execute, as a transport would; Data-Out defaults to zeros of the planned size."""
    plan = unit.plan(cdb)
    if isinstance(plan, CommandResult):
        assert plan.status == ScsiStatus.CHECK_CONDITION
        return plan
    if plan.direction == DataDirection.WRITE:
        if data is None:
            data = bytes(plan.transfer_length)
        assert len(data) == plan.transfer_length
        return unit.execute(cdb, memoryview(data), nexus)
    assert data is None
    result = unit.execute(cdb, None, nexus)
    if result.status == ScsiStatus.GOOD and plan.direction == DataDirection.READ:
        assert result.data_length <= plan.transfer_length
    if plan.direction == DataDirection.NONE:
        assert result.data == []
    return result


def data_of(result: CommandResult) -> bytes:
    """The Data-In bytes of a result, reading file extents from their files."""
    out = bytearray()
    for extent in result.data:
        if isinstance(extent, FileExtent):
            out += os.pread(extent.fd, extent.length, extent.offset)
        elif isinstance(extent, ZeroExtent):
            out += bytes(extent.length)
        else:
            assert isinstance(extent, BufferExtent)
            out += bytes(extent.data)
    return bytes(out)


def sense_of(result: CommandResult) -> tuple[SenseKey, Asc]:
    assert result.status == ScsiStatus.CHECK_CONDITION
    sense = result.sense
    assert len(sense) == 18
    assert sense[0] & 0x7F == 0x70
    assert sense[7] == 10
    return SenseKey(sense[2] & 0x0F), Asc(sense[12] << 8 | sense[13])


def assert_check(
    result: CommandResult,
    key: SenseKey,
    asc: Asc,
    *,
    field: tuple[int, int | None] | None = None,
    in_cdb: bool = True,
) -> None:
    assert sense_of(result) == (key, asc)
    assert result.data == []
    if field is not None:
        byte, bit = field
        sks = result.sense[15:18]
        assert sks[0] & 0x80, "SKSV"
        assert bool(sks[0] & 0x40) == in_cdb
        assert int.from_bytes(sks[1:3], "big") == byte
        if bit is None:
            assert not sks[0] & 0x08
        else:
            assert sks[0] & 0x08
            assert sks[0] & 0x07 == bit


def assert_good(result: CommandResult) -> None:
    assert result.status == ScsiStatus.GOOD, result.sense.hex()
    assert result.sense == b""


# -- CDBs ------------------------------------------------------------------------------------------


def tur() -> bytes:
    return bytes(6)


def request_sense(alloc: int = 252, *, desc: bool = False) -> bytes:
    return bytes((0x03, int(desc), 0, 0, alloc, 0))


def inquiry(alloc: int = 255, *, evpd: bool = False, page: int = 0) -> bytes:
    return bytes((0x12, int(evpd), page)) + alloc.to_bytes(2, "big") + b"\x00"


def read6(lba: int, blocks: int) -> bytes:
    return bytes((0x08, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF, blocks, 0))


def write6(lba: int, blocks: int) -> bytes:
    return bytes((0x0A, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF, blocks, 0))


def rw10(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, 0)


def rw12(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", opcode, flags, lba, blocks, 0, 0)


def rw16(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", opcode, flags, lba, blocks, 0, 0)


def read10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return rw10(0x28, lba, blocks, flags)


def write10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return rw10(0x2A, lba, blocks, flags)


def read16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return rw16(0x88, lba, blocks, flags)


def write16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return rw16(0x8A, lba, blocks, flags)


def read_capacity10(lba: int = 0, pmi: bool = False) -> bytes:
    return struct.pack(">BBIHBB", 0x25, 0, lba, 0, int(pmi), 0)


def read_capacity16(alloc: int = 32) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x10, 0, alloc, 0, 0)


def mode_sense6(
    page: int = 0x3F, *, subpage: int = 0, pc: int = 0, dbd: bool = False, alloc: int = 255
) -> bytes:
    return bytes((0x1A, 0x08 if dbd else 0, pc << 6 | page, subpage, alloc, 0))


def mode_sense10(
    page: int = 0x3F,
    *,
    subpage: int = 0,
    pc: int = 0,
    dbd: bool = False,
    llbaa: bool = False,
    alloc: int = 1024,
) -> bytes:
    flags = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return bytes((0x5A, flags, pc << 6 | page, subpage, 0, 0, 0)) + alloc.to_bytes(2, "big") + b"\0"


def mode_select6(length: int, *, pf: bool = True, sp: bool = False) -> bytes:
    return bytes((0x15, (0x10 if pf else 0) | int(sp), 0, 0, length, 0))


def mode_select10(length: int, *, pf: bool = True, sp: bool = False) -> bytes:
    flags = (0x10 if pf else 0) | int(sp)
    return bytes((0x55, flags, 0, 0, 0, 0, 0)) + length.to_bytes(2, "big") + b"\0"


def unmap(length: int, *, anchor: bool = False) -> bytes:
    return bytes((0x42, int(anchor), 0, 0, 0, 0, 0)) + length.to_bytes(2, "big") + b"\0"


def unmap_params(*ranges: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack(">QI4x", lba, count) for lba, count in ranges)
    return struct.pack(">HH4x", 6 + len(body), len(body)) + body


def write_same10(lba: int, blocks: int, *, unmap: bool = False, anchor: bool = False) -> bytes:
    flags = (0x08 if unmap else 0) | (0x10 if anchor else 0)
    return rw10(0x41, lba, blocks, flags)


def write_same16(
    lba: int, blocks: int, *, unmap: bool = False, ndob: bool = False, anchor: bool = False
) -> bytes:
    flags = (0x08 if unmap else 0) | int(ndob) | (0x10 if anchor else 0)
    return rw16(0x93, lba, blocks, flags)


def verify10(lba: int, blocks: int, *, bytchk: int = 0, vrprotect: int = 0) -> bytes:
    return rw10(0x2F, lba, blocks, bytchk << 1 | vrprotect << 5)


def synchronize_cache10(lba: int = 0, blocks: int = 0) -> bytes:
    return rw10(0x35, lba, blocks)


def synchronize_cache16(lba: int = 0, blocks: int = 0) -> bytes:
    return rw16(0x91, lba, blocks)


def report_luns(select: int = 0, alloc: int = 1024) -> bytes:
    return bytes((0xA0, 0, select, 0, 0, 0)) + alloc.to_bytes(4, "big") + b"\0\0"


def rsoc(
    options: int = 0, opcode: int = 0, sa: int = 0, *, rctd: bool = False, alloc: int = 65535
) -> bytes:
    return (
        bytes((0xA3, 0x0C, (0x80 if rctd else 0) | options, opcode))
        + sa.to_bytes(2, "big")
        + alloc.to_bytes(4, "big")
        + b"\0\0"
    )


def start_stop(*, start: bool, loej: bool, immed: bool = False, power: int = 0) -> bytes:
    return bytes((0x1B, int(immed), 0, 0, power << 4 | int(loej) << 1 | int(start), 0))


def prevent_allow(prevent: int) -> bytes:
    return bytes((0x1E, 0, 0, 0, prevent, 0))
