"""MODE SENSE and MODE SELECT (SPC-4 §6.11-6.14, §7.5; SBC-3 §6.4): layouts, PC, DBD, changes."""

from __future__ import annotations

from typing import Any

import pytest
from recording_device import RecordingDevice
from scsi_cdbs import (
    BLOCK,
    DISK_BLOCKS,
    IDENTITY,
    OTHER,
    assert_check,
    assert_good,
    data_of,
    mode_select6,
    mode_select10,
    mode_sense6,
    mode_sense10,
    read10,
    run,
    tur,
    write10,
)

from diskless.scsi import CommandResult, LogicalUnit, ResetReason
from diskless.scsi.constants import Asc, SenseKey
from diskless.storage.blockdev import RawImage

ILLEGAL = SenseKey.ILLEGAL_REQUEST
CACHING = bytes((0x08, 0x12, 0x04)) + bytes(17)
CONTROL = bytes((0x0A, 0x0A, 0x02, 0x10, 0x00, 0x00, 0, 0, 0xFF, 0xFF, 0, 0))
IEC = bytes((0x1C, 0x0A)) + bytes(10)
SHORT_DESCRIPTOR = DISK_BLOCKS.to_bytes(4, "big") + b"\x00" + BLOCK.to_bytes(3, "big")


def _sense6(unit: LogicalUnit, **kwargs: Any) -> bytes:
    result = run(unit, mode_sense6(**kwargs))
    assert_good(result)
    return data_of(result)


def _sense10(unit: LogicalUnit, **kwargs: Any) -> bytes:
    result = run(unit, mode_sense10(**kwargs))
    assert_good(result)
    return data_of(result)


def test_mode_sense6_all_pages(unit: LogicalUnit) -> None:
    data = _sense6(unit)

    assert data[0] == len(data) - 1  # MODE DATA LENGTH
    assert data[1] == 0  # medium type
    assert data[2] == 0x10  # DPOFUA, not write protected
    assert data[3] == 8  # one short block descriptor
    assert data[4:12] == SHORT_DESCRIPTOR
    assert data[12:] == CACHING + CONTROL + IEC


def test_mode_sense6_dbd_leaves_out_the_block_descriptor(unit: LogicalUnit) -> None:
    data = _sense6(unit, dbd=True)

    assert data[3] == 0
    assert data[4:] == CACHING + CONTROL + IEC


@pytest.mark.parametrize(("page", "body"), [(0x08, CACHING), (0x0A, CONTROL), (0x1C, IEC)])
def test_mode_sense6_single_pages(unit: LogicalUnit, page: int, body: bytes) -> None:
    assert _sense6(unit, page=page, dbd=True)[4:] == body
    assert _sense6(unit, page=page, subpage=0xFF, dbd=True)[4:] == body


def test_mode_sense10_header_and_long_descriptor(unit: LogicalUnit) -> None:
    data = _sense10(unit)
    assert int.from_bytes(data[0:2], "big") == len(data) - 2
    assert data[2:8] == bytes((0, 0x10, 0, 0, 0, 8))
    assert data[8:16] == SHORT_DESCRIPTOR
    assert data[16:] == CACHING + CONTROL + IEC

    data = _sense10(unit, llbaa=True)
    assert data[4] & 0x01  # LONGLBA
    assert int.from_bytes(data[6:8], "big") == 16
    assert data[8:24] == DISK_BLOCKS.to_bytes(8, "big") + bytes(4) + BLOCK.to_bytes(4, "big")
    assert data[24:] == CACHING + CONTROL + IEC

    data = _sense10(unit, llbaa=True, dbd=True)
    assert data[4] == 0
    assert data[6:8] == b"\x00\x00"


def test_changeable_values(unit: LogicalUnit) -> None:
    pages = _sense6(unit, pc=1, dbd=True)[4:]

    assert pages[:20] == bytes((0x08, 0x12, 0x04)) + bytes(17)  # WCE
    assert pages[20:32] == bytes((0x0A, 0x0A, 0, 0, 0x08)) + bytes(7)  # SWP
    assert pages[32:] == bytes((0x1C, 0x0A)) + bytes(10)


def test_default_values(unit: LogicalUnit) -> None:
    assert _sense6(unit, pc=2, dbd=True)[4:] == CACHING + CONTROL + IEC


def test_saved_values_are_not_supported(unit: LogicalUnit) -> None:
    result = run(unit, mode_sense6(pc=3))

    assert_check(result, ILLEGAL, Asc.SAVING_PARAMETERS_NOT_SUPPORTED, field=(2, 7))


@pytest.mark.parametrize("page", [0x00, 0x01, 0x03, 0x1A, 0x3E])
def test_unknown_page(unit: LogicalUnit, page: int) -> None:
    result = run(unit, mode_sense6(page))

    assert_check(result, ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(2, 5))


def test_unknown_subpage(unit: LogicalUnit) -> None:
    result = run(unit, mode_sense10(0x0A, subpage=0x01))

    assert_check(result, ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(3, None))


@pytest.mark.parametrize("alloc", [0, 1, 4, 12, 40, 255])
def test_allocation_length(unit: LogicalUnit, alloc: int) -> None:
    full = _sense6(unit)
    data = _sense6(unit, alloc=alloc)

    assert data == full[:alloc]
    assert data[:1] == full[:1][:alloc]  # the header keeps the full length (libiscsi Residuals)


def test_write_protect_bit(raw: RawImage) -> None:
    unit = LogicalUnit(raw, IDENTITY, read_only=True, power_on_unit_attention=False)

    assert _sense6(unit)[2] == 0x90
    assert _sense10(unit)[3] == 0x90


# -- MODE SELECT -----------------------------------------------------------------------------------


def _select6(unit: LogicalUnit, params: bytes) -> CommandResult:
    return run(unit, mode_select6(len(params)), params)


def test_mode_select_of_the_current_values_is_a_no_op(unit: LogicalUnit) -> None:
    current = _sense6(unit)
    params = b"\x00" + current[1:]  # MODE DATA LENGTH is reserved in MODE SELECT

    assert_good(_select6(unit, params))
    assert _sense6(unit) == current
    assert_good(run(unit, mode_select6(0)))


def test_mode_select10_of_the_current_values(unit: LogicalUnit) -> None:
    current = _sense10(unit, llbaa=True)
    params = b"\x00\x00" + current[2:]

    assert_good(run(unit, mode_select10(len(params)), params))
    assert _sense10(unit, llbaa=True) == current


def test_page_saved_bit_is_tolerated(unit: LogicalUnit) -> None:
    params = bytes(4) + bytes((0x80 | 0x0A,)) + CONTROL[1:]

    assert_good(_select6(unit, params))


def test_write_cache_can_be_turned_off(unit: LogicalUnit, recording: RecordingDevice) -> None:
    params = bytes(4) + bytes((0x08, 0x12, 0x00)) + bytes(17)

    assert_good(_select6(unit, params))
    assert not unit.write_cache_enabled
    assert _sense6(unit, page=0x08, dbd=True)[6] & 0x04 == 0
    assert_good(run(unit, write10(0, 1), bytes(BLOCK)))
    assert recording.calls == [("write", 0, BLOCK, True)]  # every write is FUA now


def test_mode_change_is_announced_to_other_nexuses(unit: LogicalUnit) -> None:
    assert_good(run(unit, tur(), nexus=OTHER))
    params = bytes(4) + bytes((0x08, 0x12, 0x00)) + bytes(17)

    assert_good(_select6(unit, params))
    assert_good(run(unit, tur()))
    assert_check(
        run(unit, tur(), nexus=OTHER), SenseKey.UNIT_ATTENTION, Asc.MODE_PARAMETERS_CHANGED
    )
    assert_good(run(unit, tur(), nexus=OTHER))
    assert_good(_select6(unit, params))  # no change: no announcement
    assert_good(run(unit, tur(), nexus=OTHER))


def test_software_write_protect(unit: LogicalUnit) -> None:
    control = bytearray(CONTROL)
    control[4] |= 0x08
    assert_good(_select6(unit, bytes(4) + bytes(control)))

    assert unit.write_protected
    assert _sense6(unit, page=0x0A, dbd=True)[4 + 4] & 0x08
    assert _sense6(unit)[2] & 0x80  # WP
    assert_good(run(unit, read10(0, 1)))
    assert_check(run(unit, write10(0, 1)), SenseKey.DATA_PROTECT, Asc.SOFTWARE_WRITE_PROTECTED)

    control[4] &= ~0x08
    assert_good(_select6(unit, bytes(4) + bytes(control)))
    assert_good(run(unit, write10(0, 1)))


def test_reset_restores_the_defaults(unit: LogicalUnit) -> None:
    params = bytes(4) + bytes((0x08, 0x12, 0x00)) + bytes(17)
    assert_good(_select6(unit, params))

    unit.reset("someone", reason=ResetReason.LOGICAL_UNIT_RESET)

    assert unit.write_cache_enabled


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (bytes(4) + bytes((0x08, 0x12, 0x05)) + bytes(17), (6, 0)),  # RCD is not changeable
        (bytes(4) + bytes((0x0A, 0x0A, 0x06)) + CONTROL[3:], (6, 2)),  # D_SENSE
        (bytes(4) + bytes((0x1C, 0x0A, 0x08)) + bytes(9), (6, 3)),  # DEXCPT
        (bytes(4) + bytes((0x08, 0x10)) + bytes(16), (5, None)),  # wrong page length
        (bytes(4) + bytes((0x01, 0x0A)) + bytes(10), (4, 5)),  # a page we do not have
        (bytes(4) + bytes((0x4A, 0x01, 0x00, 0x02, 0, 0)), (4, 5)),  # a subpage
        (bytes((0, 0x01, 0, 0)), (1, None)),  # medium type
        (
            bytes((0, 0, 0, 8)) + (99).to_bytes(4, "big") + b"\0" + BLOCK.to_bytes(3, "big"),
            (4, None),
        ),
        (bytes((0, 0, 0, 8)) + bytes(5) + (4096).to_bytes(3, "big"), (9, None)),  # block length
        (bytes((0, 0, 0, 4)) + bytes(4), (3, None)),  # not a whole block descriptor
    ],
)
def test_mode_select_rejects_changes(
    unit: LogicalUnit, params: bytes, field: tuple[int, int | None]
) -> None:
    result = _select6(unit, params)

    assert_check(result, ILLEGAL, Asc.INVALID_FIELD_IN_PARAMETER_LIST, field=field, in_cdb=False)
    assert unit.write_cache_enabled


def test_mode_select_is_all_or_nothing(unit: LogicalUnit) -> None:
    params = (
        bytes(4) + bytes((0x08, 0x12, 0x00)) + bytes(17) + bytes((0x0A, 0x0A, 0x06)) + CONTROL[3:]
    )

    assert_check(_select6(unit, params), ILLEGAL, Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    assert unit.write_cache_enabled


@pytest.mark.parametrize(
    "params",
    [
        bytes(3),
        bytes(4) + bytes((0x08,)),
        bytes(4) + bytes((0x08, 0x12)) + bytes(5),
        bytes((0, 0, 0, 8)) + bytes(4),
        bytes(4) + bytes((0x4A, 0x01, 0x00)),
    ],
)
def test_mode_select_truncated_lists(unit: LogicalUnit, params: bytes) -> None:
    assert_check(_select6(unit, params), ILLEGAL, Asc.PARAMETER_LIST_LENGTH_ERROR)


def test_mode_select_save_pages_is_invalid(unit: LogicalUnit) -> None:
    result = run(unit, mode_select6(12, sp=True))

    assert_check(result, ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(1, 0))
