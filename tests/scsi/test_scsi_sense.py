"""Sense data layouts (SPC-4 §4.5) and the smaller validations of the package."""

from __future__ import annotations

import pytest
from recording_device import RecordingDevice
from scsi_cdbs import (
    BLOCK,
    IDENTITY,
    assert_check,
    assert_good,
    mode_select6,
    read10,
    run,
    unmap,
    unmap_params,
    verify10,
    write10,
)

from diskless.scsi import BlockLimits, LogicalUnit
from diskless.scsi.constants import Asc, SenseKey
from diskless.scsi.sense import FieldPointer, descriptor_sense, fixed_sense
from diskless.storage.blockdev import RawImage
from diskless.storage.errors import OutOfRangeError, ReadOnlyError, StorageError


def test_fixed_sense_layout() -> None:
    sense = fixed_sense(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)

    assert sense == bytes((0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0))


def test_fixed_sense_with_information_and_field_pointer() -> None:
    sense = fixed_sense(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_CDB,
        information=0x01020304,
        field=FieldPointer(7, 3),
    )

    assert sense[0] == 0xF0  # VALID
    assert sense[3:7] == b"\x01\x02\x03\x04"
    assert sense[15:18] == bytes((0x80 | 0x40 | 0x08 | 3, 0, 7))


def test_field_pointer_in_parameter_list() -> None:
    assert FieldPointer(0x123, in_cdb=False).encode() == bytes((0x80, 0x01, 0x23))


def test_descriptor_sense_layout() -> None:
    plain = descriptor_sense(SenseKey.UNIT_ATTENTION, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)
    assert plain == bytes((0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0))

    full = descriptor_sense(
        SenseKey.MISCOMPARE,
        Asc.MISCOMPARE_DURING_VERIFY,
        information=700,
        field=FieldPointer(2, None, in_cdb=False),
    )
    assert full[:8] == bytes((0x72, 0x0E, 0x1D, 0x00, 0, 0, 0, 20))
    assert full[8:20] == bytes((0x00, 0x0A, 0x80, 0)) + (700).to_bytes(8, "big")
    assert full[20:] == bytes((0x02, 0x06, 0, 0, 0x80, 0, 2, 0))


def test_asc_parts() -> None:
    assert (Asc.MEDIUM_NOT_PRESENT.asc, Asc.MEDIUM_NOT_PRESENT.ascq) == (0x3A, 0x00)
    assert (Asc.SOFTWARE_WRITE_PROTECTED.asc, Asc.SOFTWARE_WRITE_PROTECTED.ascq) == (0x27, 0x02)


# -- validations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_transfer_blocks": 0},
        {"max_unmap_blocks": 1 << 32},
        {"optimal_granularity_blocks": 1 << 16},
        {"physical_block_exponent": 16},
    ],
)
def test_block_limits_are_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        BlockLimits(**kwargs)


class _OddBlocks(RecordingDevice):
    @property
    def block_size(self) -> int:
        return 520


def test_block_size_must_be_a_power_of_two(raw: RawImage) -> None:
    with pytest.raises(ValueError, match="power of two"):
        LogicalUnit(_OddBlocks(raw), IDENTITY)


def test_properties(unit: LogicalUnit, recording: RecordingDevice) -> None:
    assert unit.device is recording
    assert unit.identity is IDENTITY
    assert unit.block_size == BLOCK
    assert not unit.removable


class _Raising(RecordingDevice):
    def __init__(self, inner: RawImage, error: BaseException) -> None:
        super().__init__(inner)
        self.error = error

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        raise self.error


def _wrapped_enospc() -> StorageError:
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise StorageError("overlay.qcow2: cannot grow") from exc
    except StorageError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "sense"),
    [
        (ReadOnlyError("ro"), (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)),
        (OutOfRangeError("oops"), (SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)),
        (_wrapped_enospc(), (SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT)),
        (StorageError("corrupt"), (SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR)),
    ],
)
def test_storage_errors_map_to_sense(
    raw: RawImage, error: StorageError, sense: tuple[SenseKey, Asc]
) -> None:
    unit = LogicalUnit(_Raising(raw, error), IDENTITY, power_on_unit_attention=False)

    assert_check(run(unit, write10(0, 1)), *sense)


def test_unmap_with_write_cache_off_flushes(unit: LogicalUnit, recording: RecordingDevice) -> None:
    page = bytes((0, 0, 0, 0, 0x08, 0x12, 0x00)) + bytes(17)
    assert_good(run(unit, mode_select6(len(page)), page))
    params = unmap_params((0, 8))

    assert_good(run(unit, unmap(len(params)), params))

    assert recording.calls == [("discard", 0, 8 * BLOCK), ("flush",)]


def test_verify_with_bytchk_respects_the_transfer_limit(unit: LogicalUnit) -> None:
    too_many = unit.limits.max_transfer_blocks + 1

    assert_check(
        run(unit, verify10(0, too_many, bytchk=1)),
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_CDB,
    )
    assert_good(run(unit, read10(0, 1)))
