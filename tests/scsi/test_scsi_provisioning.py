"""Thin provisioning: UNMAP and WRITE SAME (SBC-3 §5.28, §5.45-5.46), over raw and qcow2 disks."""

from __future__ import annotations

import random
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
    read10,
    run,
    unmap,
    unmap_params,
    write10,
    write_same10,
    write_same16,
)

from diskless.scsi import BlockLimits, CommandPlan, DataDirection, LogicalUnit
from diskless.scsi.constants import Asc, SenseKey
from diskless.storage.blockdev import RawImage
from diskless.storage.qcow2 import Qcow2Image

ILLEGAL = SenseKey.ILLEGAL_REQUEST
LAST = DISK_BLOCKS - 1
ONES = b"\xff" * BLOCK


# -- UNMAP -----------------------------------------------------------------------------------------


def test_unmap_reads_back_zeros(unit: LogicalUnit, recording: RecordingDevice) -> None:
    params = unmap_params((10, 4), (100, 1), (LAST, 1))

    assert unit.plan(unmap(len(params))) == CommandPlan(DataDirection.WRITE, len(params))
    assert_good(run(unit, unmap(len(params)), params))

    assert data_of(run(unit, read10(10, 4))) == bytes(4 * BLOCK)
    assert data_of(run(unit, read10(100, 1))) == bytes(BLOCK)
    assert data_of(run(unit, read10(LAST, 1))) == bytes(BLOCK)
    assert data_of(run(unit, read10(14, 1))) != bytes(BLOCK)
    assert [call for call in recording.calls if call[0] == "discard"] == [
        ("discard", 10 * BLOCK, 4 * BLOCK),
        ("discard", 100 * BLOCK, BLOCK),
        ("discard", LAST * BLOCK, BLOCK),
    ]


def test_unmap_on_a_qcow2_overlay_hides_the_golden_data(
    overlay: Qcow2Image, golden_path: Path
) -> None:
    unit = LogicalUnit(overlay, IDENTITY, power_on_unit_attention=False)
    params = unmap_params((0, 256))

    assert data_of(run(unit, read10(0, 1))) == golden_path.read_bytes()[:BLOCK]
    assert_good(run(unit, unmap(len(params)), params))
    assert data_of(run(unit, read10(0, 256))) == bytes(256 * BLOCK)
    assert data_of(run(unit, read10(256, 1))) == golden_path.read_bytes()[256 * BLOCK : 257 * BLOCK]


def test_unmap_of_zero_blocks_and_empty_lists_is_good(
    unit: LogicalUnit, recording: RecordingDevice
) -> None:
    for params in (
        unmap_params((0, 0)),
        unmap_params((DISK_BLOCKS, 0)),  # at the end of the LU: still in range
        unmap_params(*[(i // 2, 0) for i in range(256)]),
        unmap_params(),
    ):
        assert_good(run(unit, unmap(len(params)), params))
    assert_good(run(unit, unmap(0)))
    assert recording.calls == []


def test_unmap_of_256_descriptors(unit: LogicalUnit) -> None:
    params = unmap_params(*[(i, 1) for i in range(256)])

    assert_good(run(unit, unmap(len(params)), params))
    assert data_of(run(unit, read10(0, 256))) == bytes(256 * BLOCK)


def test_unmap_checks_every_descriptor_before_discarding(
    unit: LogicalUnit, recording: RecordingDevice
) -> None:
    params = unmap_params((0, 8), (LAST, 2))

    assert_check(run(unit, unmap(len(params)), params), ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    assert recording.calls == []


@pytest.mark.parametrize("length", [1, 7])
def test_unmap_short_parameter_list(unit: LogicalUnit, length: int) -> None:
    result = run(unit, unmap(length), bytes(length))

    assert_check(result, ILLEGAL, Asc.PARAMETER_LIST_LENGTH_ERROR)


def test_unmap_descriptors_past_the_list(unit: LogicalUnit) -> None:
    params = bytearray(unmap_params((0, 1)))
    params[2:4] = (32).to_bytes(2, "big")

    assert_check(
        run(unit, unmap(len(params)), bytes(params)), ILLEGAL, Asc.PARAMETER_LIST_LENGTH_ERROR
    )


def test_unmap_limits(raw: RawImage) -> None:
    limits = BlockLimits(max_unmap_blocks=16, max_unmap_descriptors=2)
    unit = LogicalUnit(raw, IDENTITY, limits=limits, power_on_unit_attention=False)

    too_many = unmap_params((0, 1), (2, 1), (4, 1))
    result = run(unit, unmap(len(too_many)), too_many)
    assert_check(
        result, ILLEGAL, Asc.INVALID_FIELD_IN_PARAMETER_LIST, field=(2, None), in_cdb=False
    )
    too_long = unmap_params((0, 10), (20, 7))
    result = run(unit, unmap(len(too_long)), too_long)
    assert_check(
        result, ILLEGAL, Asc.INVALID_FIELD_IN_PARAMETER_LIST, field=(32, None), in_cdb=False
    )
    just_right = unmap_params((0, 10), (20, 6))
    assert_good(run(unit, unmap(len(just_right)), just_right))


def test_unmap_anchor_is_invalid(unit: LogicalUnit) -> None:
    assert_check(run(unit, unmap(24, anchor=True)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(1, 0))


def test_unmap_on_read_only_unit(raw: RawImage) -> None:
    unit = LogicalUnit(raw, IDENTITY, read_only=True, power_on_unit_attention=False)
    params = unmap_params((0, 1))

    assert_check(run(unit, unmap(len(params)), params), SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)


# -- WRITE SAME ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sixteen", [False, True])
@pytest.mark.parametrize("blocks", [1, 7, 256])
def test_write_same_unmap_reads_back_zeros(
    unit: LogicalUnit, recording: RecordingDevice, sixteen: bool, blocks: int
) -> None:
    assert_good(run(unit, write10(0, blocks), ONES * blocks))
    cdb = write_same16(0, blocks, unmap=True) if sixteen else write_same10(0, blocks, unmap=True)

    assert unit.plan(cdb) == CommandPlan(DataDirection.WRITE, BLOCK)
    assert_good(run(unit, cdb, bytes(BLOCK)))
    assert data_of(run(unit, read10(0, blocks))) == bytes(blocks * BLOCK)
    assert recording.calls[-1] == ("discard", 0, blocks * BLOCK)


def test_write_same_at_the_end(unit: LogicalUnit) -> None:
    assert_good(run(unit, write_same10(LAST - 2, 3, unmap=True), bytes(BLOCK)))
    assert data_of(run(unit, read10(LAST - 2, 3))) == bytes(3 * BLOCK)


def test_write_same_ndob(unit: LogicalUnit, recording: RecordingDevice) -> None:
    assert unit.plan(write_same16(5, 3, ndob=True)) == CommandPlan(DataDirection.NONE, 0)
    assert_good(run(unit, write_same16(5, 3, ndob=True, unmap=True)))
    assert_good(run(unit, write_same16(8, 2, ndob=True)))

    assert data_of(run(unit, read10(5, 5))) == bytes(5 * BLOCK)
    assert recording.calls == [
        ("discard", 5 * BLOCK, 3 * BLOCK),
        ("write_zeroes", 8 * BLOCK, 2 * BLOCK, False, False),
    ]


def test_write_same_zeros_without_unmap_writes_zeros(
    unit: LogicalUnit, recording: RecordingDevice
) -> None:
    assert_good(run(unit, write_same10(30, 4), bytes(BLOCK)))

    assert recording.calls == [("write_zeroes", 30 * BLOCK, 4 * BLOCK, False, False)]
    assert data_of(run(unit, read10(30, 4))) == bytes(4 * BLOCK)


@pytest.mark.parametrize("unmap_bit", [False, True])
def test_write_same_pattern_is_repeated(unit: LogicalUnit, unmap_bit: bool) -> None:
    block = random.Random(4).randbytes(BLOCK)

    assert_good(run(unit, write_same16(40, 3000, unmap=unmap_bit), block))
    assert data_of(run(unit, read10(40, 2000))) == block * 2000
    assert data_of(run(unit, read10(2040, 1000))) == block * 1000
    assert data_of(run(unit, read10(3040, 1))) != block


def test_write_same_with_write_cache_off_flushes(
    unit: LogicalUnit, recording: RecordingDevice
) -> None:
    from scsi_cdbs import mode_select6

    page = bytes((0, 0, 0, 0, 0x08, 0x12, 0x00)) + bytes(17)  # caching page, WCE off
    assert_good(run(unit, mode_select6(len(page)), page))
    recording.calls.clear()

    assert_good(run(unit, write_same10(0, 2, unmap=True), bytes(BLOCK)))
    assert_good(run(unit, write_same10(4, 2), ONES))
    assert_good(run(unit, write_same10(8, 2), bytes(BLOCK)))

    assert recording.calls == [
        ("discard", 0, 2 * BLOCK),
        ("flush",),
        ("write", 4 * BLOCK, 2 * BLOCK, False),
        ("flush",),
        ("write_zeroes", 8 * BLOCK, 2 * BLOCK, False, True),
    ]


@pytest.mark.parametrize(
    ("cdb", "field"),
    [
        (write_same10(0, 0), (7, None)),  # WSNZ
        (write_same16(0, 0), (10, None)),
        (write_same10(0, 1, anchor=True), (1, 4)),
        (write_same16(0, 1, anchor=True, unmap=True), (1, 4)),
        (write_same10(0, 1)[:1] + b"\x02" + write_same10(0, 1)[2:], (1, 2)),  # LBDATA
        (write_same10(0, 1)[:1] + b"\x20" + write_same10(0, 1)[2:], (1, 7)),  # WRPROTECT
    ],
)
def test_write_same_invalid_fields(
    unit: LogicalUnit, cdb: bytes, field: tuple[int, int | None]
) -> None:
    assert_check(run(unit, cdb), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=field)


@pytest.mark.parametrize(
    "cdb",
    [
        write_same10(DISK_BLOCKS + 1, 0),
        write_same10(0x80000000, 0),
        write_same10(0xFFFFFFFF, 0),
        write_same10(LAST, 2),
        write_same16(DISK_BLOCKS, 1, unmap=True),
    ],
)
def test_write_same_beyond_the_end(unit: LogicalUnit, cdb: bytes) -> None:
    assert_check(run(unit, cdb), ILLEGAL, Asc.LBA_OUT_OF_RANGE)


def test_write_same_longer_than_the_limit(raw: RawImage) -> None:
    limits = BlockLimits(max_write_same_blocks=100)
    unit = LogicalUnit(raw, IDENTITY, limits=limits, power_on_unit_attention=False)

    assert_good(run(unit, write_same10(0, 100, unmap=True)))
    assert_check(run(unit, write_same10(0, 101, unmap=True)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


# -- GET LBA STATUS --------------------------------------------------------------------------------


def _get_lba_status(lba: int, allocation: int = 4096) -> bytes:
    return b"\x9e\x12" + lba.to_bytes(8, "big") + allocation.to_bytes(4, "big") + bytes(2)


def _descriptors(data: bytes) -> list[tuple[int, int, int]]:
    length = int.from_bytes(data[:4], "big") + 4
    return [
        (
            int.from_bytes(data[offset : offset + 8], "big"),
            int.from_bytes(data[offset + 8 : offset + 12], "big"),
            data[offset + 12] & 0x0F,
        )
        for offset in range(8, length, 16)
    ]


def test_get_lba_status_reports_unmapped_ranges_of_an_overlay(overlay: Qcow2Image) -> None:
    unit = LogicalUnit(overlay, IDENTITY, power_on_unit_attention=False)
    params = unmap_params((128, 128))
    assert_good(run(unit, unmap(len(params)), params))

    descriptors = _descriptors(data_of(run(unit, _get_lba_status(0))))
    # Golden data (mapped), the discarded 64 KiB cluster (deallocated), golden again to the end.
    assert descriptors == [(0, 128, 0), (128, 128, 1), (256, DISK_BLOCKS - 256, 0)]
    starting_inside = _descriptors(data_of(run(unit, _get_lba_status(200))))
    assert starting_inside[0] == (200, 56, 1)


def test_get_lba_status_beyond_the_end(unit: LogicalUnit) -> None:
    assert_check(run(unit, _get_lba_status(DISK_BLOCKS)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)


def test_get_lba_status_fits_the_allocation_length(overlay: Qcow2Image) -> None:
    unit = LogicalUnit(overlay, IDENTITY, power_on_unit_attention=False)
    params = unmap_params((128, 128), (512, 128))
    assert_good(run(unit, unmap(len(params)), params))
    data = data_of(run(unit, _get_lba_status(0, allocation=8 + 16)))
    assert len(data) == 24
    assert _descriptors(data)[:1] == [(0, 128, 0)]
