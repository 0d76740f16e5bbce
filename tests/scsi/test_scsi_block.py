"""Block commands: capacity, READ/WRITE in every size, VERIFY, SYNCHRONIZE CACHE, PRE-FETCH."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from recording_device import RecordingDevice
from scsi_cdbs import (
    BLOCK,
    DISK_BLOCKS,
    IDENTITY,
    assert_check,
    assert_good,
    data_of,
    read6,
    read10,
    read16,
    read_capacity10,
    read_capacity16,
    run,
    rw10,
    rw12,
    rw16,
    synchronize_cache10,
    synchronize_cache16,
    verify10,
    write6,
    write10,
    write16,
)

from diskless.scsi import BlockLimits, CommandPlan, CommandResult, DataDirection, LogicalUnit
from diskless.scsi.constants import Asc, ScsiStatus, SenseKey
from diskless.storage.blockdev import Extent, FileExtent, RawImage
from diskless.storage.qcow2 import Qcow2Image

ILLEGAL = SenseKey.ILLEGAL_REQUEST
LAST = DISK_BLOCKS - 1


def _pattern(blocks: int, seed: int = 9) -> bytes:
    return random.Random(seed).randbytes(blocks * BLOCK)


# -- READ CAPACITY ---------------------------------------------------------------------------------


def test_read_capacity_10(unit: LogicalUnit) -> None:
    data = data_of(run(unit, read_capacity10()))

    assert data == LAST.to_bytes(4, "big") + BLOCK.to_bytes(4, "big")


def test_read_capacity_10_with_lba_needs_pmi(unit: LogicalUnit) -> None:
    assert_check(run(unit, read_capacity10(lba=5)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert_good(run(unit, read_capacity10(lba=5, pmi=True)))


class _HugeDevice(RecordingDevice):
    @property
    def size(self) -> int:
        return (1 << 33) * BLOCK  # 4 TiB: more blocks than 32 bits count


def test_read_capacity_10_saturates_for_big_disks(raw: RawImage) -> None:
    unit = LogicalUnit(_HugeDevice(raw), IDENTITY, power_on_unit_attention=False)

    assert data_of(run(unit, read_capacity10()))[:4] == b"\xff\xff\xff\xff"
    assert data_of(run(unit, read_capacity16()))[:8] == ((1 << 33) - 1).to_bytes(8, "big")


def test_read_capacity_16(unit: LogicalUnit) -> None:
    data = data_of(run(unit, read_capacity16(32)))

    assert len(data) == 32
    assert int.from_bytes(data[0:8], "big") == LAST
    assert int.from_bytes(data[8:12], "big") == BLOCK
    assert data[12] == 0  # no protection
    assert data[13] == 0  # one logical block per physical block
    assert data[14] == 0x80 | 0x40  # LBPME, LBPRZ; lowest aligned LBA 0
    assert data[15] == 0
    assert data[16:] == bytes(16)


@pytest.mark.parametrize("alloc", [0, 1, 8, 13, 31, 32, 64, 512])
def test_read_capacity_16_allocation_length(unit: LogicalUnit, alloc: int) -> None:
    result = run(unit, read_capacity16(alloc))

    assert_good(result)
    assert data_of(result) == data_of(run(unit, read_capacity16(32)))[:alloc]


def test_physical_block_exponent_is_reported(raw: RawImage) -> None:
    limits = BlockLimits(physical_block_exponent=3)
    unit = LogicalUnit(raw, IDENTITY, limits=limits, power_on_unit_attention=False)

    assert data_of(run(unit, read_capacity16()))[13] == 3


def test_device_rounded_down_to_whole_blocks(tmp_path: Path) -> None:
    path = tmp_path / "odd.raw"
    path.write_bytes(bytes(3 * BLOCK + 100))
    with RawImage(path) as device:
        unit = LogicalUnit(device, IDENTITY, power_on_unit_attention=False)
        assert unit.blocks == 3
        assert_check(run(unit, read10(2, 2)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)


def test_device_smaller_than_a_block_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.raw"
    path.write_bytes(bytes(100))
    with RawImage(path) as device, pytest.raises(ValueError, match="no whole logical block"):
        LogicalUnit(device, IDENTITY)


# -- READ / WRITE ---------------------------------------------------------------------------------


def test_read_returns_the_device_bytes(unit: LogicalUnit, raw_path: Path) -> None:
    expected = raw_path.read_bytes()[10 * BLOCK : 18 * BLOCK]

    assert unit.plan(read10(10, 8)) == CommandPlan(DataDirection.READ, 8 * BLOCK)
    result = run(unit, read10(10, 8))
    assert_good(result)
    assert data_of(result) == expected


def test_empty_overlay_reads_are_zero_copy_from_the_golden_file(
    overlay: Qcow2Image, golden_path: Path
) -> None:
    unit = LogicalUnit(overlay, IDENTITY, power_on_unit_attention=False)
    golden = os.stat(golden_path)

    result = run(unit, read16(100, 64))

    assert_good(result)
    assert result.data
    for extent in result.data:
        assert isinstance(extent, FileExtent)
        stat = os.fstat(extent.fd)
        assert (stat.st_dev, stat.st_ino) == (golden.st_dev, golden.st_ino)
    assert data_of(result) == golden_path.read_bytes()[100 * BLOCK : 164 * BLOCK]


@pytest.mark.parametrize(
    ("write_cdb", "read_cdb"),
    [
        (write6(7, 3), read6(7, 3)),
        (write10(7, 3), read10(7, 3)),
        (rw12(0xAA, 7, 3), rw12(0xA8, 7, 3)),
        (write16(7, 3), read16(7, 3)),
    ],
    ids=["6", "10", "12", "16"],
)
def test_write_then_read_round_trips(unit: LogicalUnit, write_cdb: bytes, read_cdb: bytes) -> None:
    data = _pattern(3)

    assert_good(run(unit, write_cdb, data))
    assert data_of(run(unit, read_cdb)) == data


def test_write_then_read_through_a_qcow2_overlay(overlay: Qcow2Image, golden_path: Path) -> None:
    unit = LogicalUnit(overlay, IDENTITY, power_on_unit_attention=False)
    data = _pattern(5)

    assert_good(run(unit, write10(LAST - 4, 5), data))
    assert data_of(run(unit, read10(LAST - 4, 5))) == data
    assert data_of(run(unit, read10(0, 2))) == golden_path.read_bytes()[: 2 * BLOCK]
    assert golden_path.read_bytes()[(LAST - 4) * BLOCK :] != data  # the golden file is untouched


def test_six_byte_transfer_length_zero_means_256_blocks(unit: LogicalUnit, raw_path: Path) -> None:
    assert unit.plan(read6(0, 0)) == CommandPlan(DataDirection.READ, 256 * BLOCK)
    assert unit.plan(write6(0, 0)) == CommandPlan(DataDirection.WRITE, 256 * BLOCK)
    assert data_of(run(unit, read6(0, 0))) == raw_path.read_bytes()[: 256 * BLOCK]


@pytest.mark.parametrize(
    "cdb",
    [read10(5, 0), read16(5, 0), rw12(0xA8, 5, 0), write10(5, 0), write16(LAST + 1, 0)],
)
def test_zero_blocks_move_nothing(
    unit: LogicalUnit, recording: RecordingDevice, cdb: bytes
) -> None:
    result = run(unit, cdb)

    assert unit.plan(cdb) == CommandPlan(DataDirection.NONE, 0)
    assert_good(result)
    assert result.data == []
    assert recording.calls == []


@pytest.mark.parametrize(
    "cdb",
    [
        read10(DISK_BLOCKS, 1),
        read10(LAST, 2),
        read10(DISK_BLOCKS + 1, 0),
        read10(0xFFFFFFFF, 0),
        read10(0x80000000, 1),
        read16(0xFFFFFFFFFFFFFFFF, 1),
        read16(1 << 63, 1),
        read6(0x1FFFFF, 1),
        read6(LAST, 2),
        rw12(0xA8, DISK_BLOCKS - 3, 4),
        write10(DISK_BLOCKS, 1),
        write16(LAST, 2),
        write6(LAST, 0),
    ],
)
def test_beyond_the_end_is_lba_out_of_range(unit: LogicalUnit, cdb: bytes) -> None:
    plan = unit.plan(cdb)
    assert isinstance(plan, CommandResult)
    assert_check(plan, ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    assert_check(unit.execute(cdb, bytes(64 * 1024), "n"), ILLEGAL, Asc.LBA_OUT_OF_RANGE)


@pytest.mark.parametrize("protect", range(1, 8))
@pytest.mark.parametrize("opcode", [0x28, 0x2A, 0x2E, 0x2F])
def test_protection_fields_are_invalid(unit: LogicalUnit, opcode: int, protect: int) -> None:
    result = run(unit, rw10(opcode, 0, 1, protect << 5))

    assert_check(result, ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(1, 7))


@pytest.mark.parametrize("flags", [0x08, 0x10, 0x18, 0x02, 0x04])
def test_dpo_fua_and_friends_are_accepted_on_read(unit: LogicalUnit, flags: int) -> None:
    assert_good(run(unit, read10(0, 1, flags)))
    assert_good(run(unit, rw12(0xA8, 0, 1, flags)))
    assert_good(run(unit, read16(0, 1, flags)))


def test_transfer_longer_than_the_limit_is_invalid(unit: LogicalUnit) -> None:
    too_many = unit.limits.max_transfer_blocks + 1

    assert_check(run(unit, read10(0, too_many)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(7, None))
    assert_check(run(unit, write16(0, too_many)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert_good(run(unit, read10(0, too_many - 1)))


def test_fua_writes_are_durable(unit: LogicalUnit, recording: RecordingDevice) -> None:
    run(unit, write10(1, 1), _pattern(1))
    run(unit, write10(2, 1, flags=0x08), _pattern(1))
    run(unit, rw12(0xAA, 3, 1, 0x08), _pattern(1))
    run(unit, write16(4, 1, flags=0x18), _pattern(1))

    assert recording.calls == [
        ("write", 1 * BLOCK, BLOCK, False),
        ("write", 2 * BLOCK, BLOCK, True),
        ("write", 3 * BLOCK, BLOCK, True),
        ("write", 4 * BLOCK, BLOCK, True),
    ]


def test_write_and_verify_writes_durably(unit: LogicalUnit, recording: RecordingDevice) -> None:
    data = _pattern(2)
    for cdb in (rw10(0x2E, 8, 2, 0x02), rw12(0xAE, 8, 2), rw16(0x8E, 8, 2)):
        assert_good(run(unit, cdb, data))
    assert data_of(run(unit, read10(8, 2))) == data
    assert recording.calls == [("write", 8 * BLOCK, 2 * BLOCK, True)] * 3
    assert_check(run(unit, rw10(0x2E, 8, 2, 0x04)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_data_out_of_the_wrong_size_is_a_transport_bug(unit: LogicalUnit) -> None:
    with pytest.raises(ValueError, match="expects 1024 bytes"):
        unit.execute(write10(0, 2), bytes(512), "n")
    with pytest.raises(ValueError, match="got none"):
        unit.execute(write10(0, 2), None, "n")


# -- read-only and software write protect ----------------------------------------------------------

_WRITES = [
    write6(0, 1),
    write10(0, 1),
    rw12(0xAA, 0, 1),
    write16(0, 1),
    rw10(0x2E, 0, 1),
    rw10(0x41, 0, 1),
    rw16(0x93, 0, 1),
    rw16(0x93, 0, 1, 0x08),
    rw10(0x41, 0, 1, 0x08),
]


@pytest.mark.parametrize("cdb", _WRITES, ids=lambda cdb: f"{cdb[0]:02x}")
def test_read_only_unit_refuses_writes(raw: RawImage, cdb: bytes) -> None:
    unit = LogicalUnit(raw, IDENTITY, read_only=True, power_on_unit_attention=False)

    assert_check(run(unit, cdb), SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
    assert_good(run(unit, read10(0, 1)))


def test_read_only_device_makes_a_read_only_unit(raw_path: Path) -> None:
    with RawImage(raw_path, read_only=True) as device:
        unit = LogicalUnit(device, IDENTITY, power_on_unit_attention=False)
        assert unit.read_only
        assert_check(run(unit, write10(0, 1)), SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
        assert_good(run(unit, synchronize_cache10()))


# -- VERIFY ----------------------------------------------------------------------------------------


def test_verify_without_bytchk_only_checks_the_range(unit: LogicalUnit) -> None:
    assert unit.plan(verify10(0, 10)) == CommandPlan(DataDirection.NONE, 0)
    assert_good(run(unit, verify10(0, 10)))
    assert_good(run(unit, verify10(0, DISK_BLOCKS)))  # no transfer, so no transfer limit
    assert_check(run(unit, verify10(LAST, 2)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    assert_check(run(unit, verify10(DISK_BLOCKS + 1, 0)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)


@pytest.mark.parametrize(
    "build",
    [lambda b: rw10(0x2F, 4, 3, b), lambda b: rw12(0xAF, 4, 3, b), lambda b: rw16(0x8F, 4, 3, b)],
)
def test_verify_bytchk_compares(
    unit: LogicalUnit, raw_path: Path, build: Callable[[int], bytes]
) -> None:
    stored = raw_path.read_bytes()[4 * BLOCK : 7 * BLOCK]

    assert unit.plan(build(0x02)) == CommandPlan(DataDirection.WRITE, 3 * BLOCK)
    assert_good(run(unit, build(0x02), stored))
    changed = bytearray(stored)
    changed[700] ^= 0x58
    result = run(unit, build(0x02), bytes(changed))
    assert_check(result, SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY)
    assert result.sense[0] == 0xF0  # VALID: INFORMATION holds the offset of the first difference
    assert int.from_bytes(result.sense[3:7], "big") == 700


def test_verify_bytchk_3_compares_one_block_with_each(unit: LogicalUnit) -> None:
    block = _pattern(1, seed=3)
    assert_good(run(unit, write10(20, 4), block * 4))

    assert unit.plan(verify10(20, 4, bytchk=3)) == CommandPlan(DataDirection.WRITE, BLOCK)
    assert_good(run(unit, verify10(20, 4, bytchk=3), block))
    result = run(unit, verify10(19, 4, bytchk=3), block)
    assert_check(result, SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY)


def test_verify_bytchk_2_is_reserved(unit: LogicalUnit) -> None:
    result = run(unit, verify10(0, 1, bytchk=2))

    assert_check(result, ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(1, 2))


# -- SYNCHRONIZE CACHE and PRE-FETCH ---------------------------------------------------------------


def test_synchronize_cache_flushes(unit: LogicalUnit, recording: RecordingDevice) -> None:
    assert_good(run(unit, synchronize_cache10()))
    assert_good(run(unit, synchronize_cache16(5, 10)))
    assert_good(run(unit, rw10(0x35, 0, 0, 0x02)))  # IMMED

    assert recording.calls == [("flush",)] * 3


def test_synchronize_cache_range_is_checked(unit: LogicalUnit, recording: RecordingDevice) -> None:
    assert_check(run(unit, synchronize_cache10(LAST, 2)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    assert_check(run(unit, synchronize_cache16(1 << 40, 0)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    assert recording.calls == []


@pytest.mark.parametrize("opcode", [0x34, 0x90])
def test_prefetch(unit: LogicalUnit, opcode: int) -> None:
    build = rw10 if opcode == 0x34 else rw16

    assert run(unit, build(opcode, 0, 0)).status == ScsiStatus.GOOD
    assert run(unit, build(opcode, LAST, 1, 0x02)).status == ScsiStatus.GOOD
    assert_check(run(unit, build(opcode, DISK_BLOCKS + 1, 0)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    assert_check(run(unit, build(opcode, LAST, 2)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)


# -- device failures -------------------------------------------------------------------------------


class _FailingDevice(RecordingDevice):
    def __init__(self, inner: RawImage, error: BaseException) -> None:
        super().__init__(inner)
        self.error = error

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        raise self.error

    def read_plan(self, offset: int, length: int) -> list[Extent]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "write_sense", "read_sense"),
    [
        (
            OSError(5, "Input/output error"),
            (SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR),
            (SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR),
        ),
        (
            OSError(28, "No space left on device"),
            (SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT),
            (SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT),
        ),
    ],
)
def test_device_errors_become_sense_data(
    raw: RawImage,
    error: OSError,
    write_sense: tuple[SenseKey, Asc],
    read_sense: tuple[SenseKey, Asc],
) -> None:
    unit = LogicalUnit(_FailingDevice(raw, error), IDENTITY, power_on_unit_attention=False)

    assert_check(run(unit, write10(0, 1)), *write_sense)
    assert_check(run(unit, read10(0, 1)), *read_sense)


# -- Data-Out shorter than the CDB says (residual overflow) ----------------------------------------


def test_shorten_data_out_of_block_commands(unit: LogicalUnit) -> None:
    assert unit.shorten_data_out(write10(5, 4), 2 * BLOCK) == write10(5, 2)
    assert unit.shorten_data_out(write16(5, 4), 0) == write16(5, 0)
    assert unit.shorten_data_out(rw12(0xAA, 5, 4), BLOCK) == rw12(0xAA, 5, 1)
    assert unit.shorten_data_out(write6(5, 4), BLOCK) == write6(5, 1)
    assert unit.shorten_data_out(rw10(0x2E, 5, 4), 3 * BLOCK) == rw10(0x2E, 5, 3)
    assert unit.shorten_data_out(verify10(5, 4, bytchk=1), BLOCK) == verify10(5, 1, bytchk=1)
    assert unit.shorten_data_out(write10(5, 4), 4 * BLOCK) == write10(5, 4)


def test_shorten_data_out_refusals(unit: LogicalUnit) -> None:
    assert unit.shorten_data_out(write10(5, 4), BLOCK + 1) is None  # partial block
    assert unit.shorten_data_out(write10(5, 4), 5 * BLOCK) is None  # longer, not shorter
    assert unit.shorten_data_out(write6(5, 4), 0) is None  # WRITE(6) of 0 blocks means 256
    assert unit.shorten_data_out(rw10(0x41, 5, 4), 0) is None  # WRITE SAME
    assert unit.shorten_data_out(verify10(5, 4, bytchk=3), 0) is None
    assert unit.shorten_data_out(read10(5, 4), 0) is None  # not a Data-Out command
    assert unit.shorten_data_out(write10(LAST, 4), 0) is None  # invalid CDB


def test_shorten_data_out_of_parameter_lists(unit: LogicalUnit) -> None:
    from scsi_cdbs import mode_select6, mode_select10, unmap

    assert unit.shorten_data_out(unmap(40), 24) == unmap(24)
    assert unit.shorten_data_out(mode_select6(28), 5) == mode_select6(5)
    assert unit.shorten_data_out(mode_select10(32), 0) == mode_select10(0)


def test_shortened_write_writes_only_what_arrived(unit: LogicalUnit, raw_path: Path) -> None:
    before = raw_path.read_bytes()[6 * BLOCK : 8 * BLOCK]
    shortened = unit.shorten_data_out(write10(4, 4), 2 * BLOCK)
    assert shortened is not None

    assert_good(unit.execute(shortened, _pattern(2), "n"))
    assert data_of(run(unit, read10(4, 2))) == _pattern(2)
    assert data_of(run(unit, read10(6, 2))) == before
