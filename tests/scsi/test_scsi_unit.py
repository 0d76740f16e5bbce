"""Logical unit state and the remaining primary commands: unit attentions, resets, the medium,
REQUEST SENSE, REPORT LUNS, REPORT SUPPORTED OPERATION CODES, unknown opcodes, absent LUNs."""

from __future__ import annotations

import struct

import pytest
from scsi_cdbs import (
    IDENTITY,
    NEXUS,
    OTHER,
    assert_check,
    assert_good,
    data_of,
    inquiry,
    prevent_allow,
    read10,
    read_capacity10,
    read_capacity16,
    report_luns,
    request_sense,
    rsoc,
    run,
    start_stop,
    synchronize_cache10,
    tur,
    unmap,
    unmap_params,
    verify10,
    write10,
    write_same10,
)

from diskless.scsi import (
    CommandPlan,
    CommandResult,
    DataDirection,
    LogicalUnit,
    ResetReason,
    ScsiStatus,
    absent_lun_result,
)
from diskless.scsi.commands import COMMANDS
from diskless.scsi.constants import Asc, SenseKey
from diskless.storage.blockdev import RawImage

ILLEGAL = SenseKey.ILLEGAL_REQUEST
UA = SenseKey.UNIT_ATTENTION
THIRD = ("iqn.2024-01.test:third", b"\x40\x00\x00\x00\x00\x03")


@pytest.fixture
def fresh(raw: RawImage) -> LogicalUnit:
    """An LU that raises the power-on unit attention, as a freshly started target does."""
    return LogicalUnit(raw, IDENTITY)


@pytest.fixture
def removable(raw: RawImage) -> LogicalUnit:
    return LogicalUnit(raw, IDENTITY, removable=True, power_on_unit_attention=False)


# -- unit attention --------------------------------------------------------------------------------


def test_first_command_of_a_nexus_reports_power_on(fresh: LogicalUnit) -> None:
    assert_check(run(fresh, tur()), UA, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)
    assert_good(run(fresh, tur()))
    assert_check(run(fresh, read10(0, 1), nexus=OTHER), UA, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)
    assert_good(run(fresh, read10(0, 1), nexus=OTHER))


def test_inquiry_report_luns_and_request_sense_do_not_report_it(fresh: LogicalUnit) -> None:
    assert_good(run(fresh, inquiry()))
    assert_good(run(fresh, report_luns()))
    sense = data_of(run(fresh, request_sense(18)))  # returns it as data, and clears it
    assert (sense[2], sense[12], sense[13]) == (UA, 0x29, 0x00)
    assert_good(run(fresh, tur()))
    sense = data_of(run(fresh, request_sense(18)))
    assert (sense[2], sense[12], sense[13]) == (0, 0, 0)


def test_reset_is_reported_to_the_other_nexuses_only(unit: LogicalUnit) -> None:
    for nexus in (NEXUS, OTHER, THIRD):
        assert_good(run(unit, tur(), nexus=nexus))

    unit.reset(NEXUS, reason=ResetReason.LOGICAL_UNIT_RESET)

    assert_good(run(unit, tur(), nexus=NEXUS))
    for nexus in (OTHER, THIRD):
        assert_check(
            run(unit, read10(0, 1), nexus=nexus), UA, Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED
        )
        assert_good(run(unit, read10(0, 1), nexus=nexus))


def test_a_reset_supersedes_pending_attentions(fresh: LogicalUnit) -> None:
    run(fresh, inquiry(), nexus=OTHER)  # known, power-on pending
    fresh.reset(NEXUS, reason="logical unit reset")

    assert_check(run(fresh, tur(), nexus=OTHER), UA, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)
    assert_good(run(fresh, tur(), nexus=OTHER))


def test_target_warm_reset(unit: LogicalUnit) -> None:
    run(unit, tur(), nexus=OTHER)
    unit.reset(NEXUS, reason=ResetReason.TARGET_WARM_RESET)

    assert_check(run(unit, tur(), nexus=OTHER), UA, Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED)


def test_cold_reset_forgets_every_nexus(fresh: LogicalUnit) -> None:
    run(fresh, tur())
    run(fresh, tur())
    fresh.reset(NEXUS, reason=ResetReason.TARGET_COLD_RESET)

    assert_check(run(fresh, tur()), UA, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)


def test_unknown_reset_reason(unit: LogicalUnit) -> None:
    with pytest.raises(ValueError, match="abort"):
        unit.reset(NEXUS, reason="abort task")


def test_nexus_gone_drops_its_attentions(fresh: LogicalUnit) -> None:
    run(fresh, inquiry(), nexus=OTHER)
    fresh.nexus_gone(OTHER)
    fresh.reset(NEXUS, reason=ResetReason.LOGICAL_UNIT_RESET)

    # A nexus seen for the first time gets the power-on attention, not the reset.
    assert_check(run(fresh, tur(), nexus=OTHER), UA, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)


def test_nexus_table_is_bounded(fresh: LogicalUnit) -> None:
    from diskless.scsi.lu import MAX_TRACKED_NEXUSES

    for index in range(MAX_TRACKED_NEXUSES + 10):
        run(fresh, tur(), nexus=index)
        assert_good(run(fresh, tur(), nexus=index))

    assert len(fresh._nexuses) == MAX_TRACKED_NEXUSES
    assert_check(run(fresh, tur(), nexus=0), UA, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)


def test_plan_reports_cdb_errors_before_unit_attention(fresh: LogicalUnit) -> None:
    # plan() knows no nexus: an invalid CDB is answered before the pending attention.
    assert_check(run(fresh, read10(1 << 31, 1)), ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    assert_check(run(fresh, read10(0, 1)), UA, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)


# -- medium: START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL --------------------------------------

_MEDIUM_COMMANDS = [
    tur(),
    read10(0, 1),
    write10(0, 1),
    read_capacity10(),
    read_capacity16(),
    synchronize_cache10(),
    verify10(0, 1, bytchk=1),
    write_same10(0, 1, unmap=True),
    unmap(24),
    bytes((0x34, 0, 0, 0, 0, 0, 0, 0, 1, 0)),
]


def test_eject_makes_media_commands_not_ready(removable: LogicalUnit) -> None:
    assert_good(run(removable, start_stop(start=False, loej=True, immed=True)))
    assert not removable.medium_present

    for cdb in _MEDIUM_COMMANDS:
        data = unmap_params((0, 1)) if cdb[0] == 0x42 else None
        assert_check(run(removable, cdb, data), SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT)
    assert_good(run(removable, inquiry()))
    assert_good(run(removable, report_luns()))
    sense = data_of(run(removable, request_sense(18)))
    assert (sense[2], sense[12]) == (SenseKey.NOT_READY, 0x3A)

    assert_good(run(removable, start_stop(start=True, loej=True)))
    for cdb in _MEDIUM_COMMANDS[:4]:
        assert_good(run(removable, cdb))


def test_start_stop_without_loej_or_with_a_power_condition_changes_nothing(
    removable: LogicalUnit,
) -> None:
    for start in (False, True):
        assert_good(run(removable, start_stop(start=start, loej=False)))
        assert_good(run(removable, tur()))
    for power in range(1, 16):
        assert_good(run(removable, start_stop(start=False, loej=True, power=power)))
        assert_good(run(removable, tur()))


def test_eject_of_a_fixed_disk_is_invalid(unit: LogicalUnit) -> None:
    result = run(unit, start_stop(start=False, loej=True))

    assert_check(result, ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(4, 1))
    assert_good(run(unit, start_stop(start=True, loej=False)))
    assert_good(run(unit, start_stop(start=False, loej=False)))


def test_prevent_blocks_eject_and_load(removable: LogicalUnit) -> None:
    assert_good(run(removable, prevent_allow(1)))
    prevented = (ILLEGAL, Asc.MEDIUM_REMOVAL_PREVENTED)
    assert_check(run(removable, start_stop(start=False, loej=True)), *prevented)
    assert_check(run(removable, start_stop(start=False, loej=True), nexus=OTHER), *prevented)
    assert_good(run(removable, tur()))

    assert_good(run(removable, prevent_allow(0)))
    assert_good(run(removable, start_stop(start=False, loej=True)))
    assert_good(run(removable, prevent_allow(1)))
    assert_check(run(removable, start_stop(start=True, loej=True)), *prevented)
    assert_good(run(removable, prevent_allow(0)))
    assert_good(run(removable, start_stop(start=True, loej=True)))
    assert_good(run(removable, tur()))


def test_prevention_is_per_nexus(removable: LogicalUnit) -> None:
    assert_good(run(removable, prevent_allow(1)))
    assert_good(run(removable, prevent_allow(1), nexus=OTHER))
    assert_good(run(removable, prevent_allow(0)))

    assert_check(
        run(removable, start_stop(start=False, loej=True)), ILLEGAL, Asc.MEDIUM_REMOVAL_PREVENTED
    )
    removable.nexus_gone(OTHER)
    assert_good(run(removable, start_stop(start=False, loej=True)))


@pytest.mark.parametrize("reason", list(ResetReason))
def test_resets_end_prevention(removable: LogicalUnit, reason: ResetReason) -> None:
    assert_good(run(removable, prevent_allow(1)))
    removable.reset(OTHER, reason=reason)
    while run(removable, tur()).status != ScsiStatus.GOOD:
        pass

    assert_good(run(removable, start_stop(start=False, loej=True)))
    assert not removable.medium_present  # a reset leaves the medium where it is
    removable.reset(OTHER, reason=reason)
    assert not removable.medium_present


def test_prevent_obsolete_values_are_invalid(unit: LogicalUnit) -> None:
    for value in (2, 3):
        assert_check(
            run(unit, prevent_allow(value)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(4, 1)
        )


# -- REQUEST SENSE ---------------------------------------------------------------------------------


def test_request_sense_formats(fresh: LogicalUnit) -> None:
    descriptor = data_of(run(fresh, request_sense(252, desc=True)))
    assert descriptor == bytes((0x72, UA, 0x29, 0x00, 0, 0, 0, 0))

    fixed = data_of(run(fresh, request_sense(252)))
    assert fixed == bytes((0x70, 0, 0, 0, 0, 0, 0, 10)) + bytes(10)
    assert data_of(run(fresh, request_sense(4))) == fixed[:4]
    assert run(fresh, request_sense(0)).data == []


# -- REPORT LUNS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("select", [0, 2])
def test_report_luns(unit: LogicalUnit, select: int) -> None:
    data = data_of(run(unit, report_luns(select)))

    assert data == struct.pack(">II", 8, 0) + bytes(8)


def test_report_luns_well_known_only_is_empty(unit: LogicalUnit) -> None:
    assert data_of(run(unit, report_luns(1))) == bytes(8)


@pytest.mark.parametrize("alloc", [0, 1, 8, 15])
def test_report_luns_allocation_below_16_is_invalid(unit: LogicalUnit, alloc: int) -> None:
    assert_check(
        run(unit, report_luns(0, alloc)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(6, None)
    )


@pytest.mark.parametrize("select", [0x03, 0x10, 0x11, 0x12, 0xFF])
def test_report_luns_bad_select(unit: LogicalUnit, select: int) -> None:
    assert_check(run(unit, report_luns(select)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(2, None))


# -- REPORT SUPPORTED OPERATION CODES --------------------------------------------------------------


def _all_commands(unit: LogicalUnit, *, rctd: bool) -> list[tuple[int, int, int, int, bytes]]:
    data = data_of(run(unit, rsoc(0, rctd=rctd)))
    length = int.from_bytes(data[:4], "big")
    assert length == len(data) - 4
    found = []
    pos = 4
    while pos < len(data):
        opcode, sa, flags, size = struct.unpack_from(">BxHxBH", data, pos)
        pos += 8
        timeouts = b""
        if flags & 0x02:
            timeouts = data[pos : pos + 12]
            pos += 12
        found.append((opcode, sa, flags, size, timeouts))
    return found


def test_rsoc_lists_every_command(unit: LogicalUnit) -> None:
    found = _all_commands(unit, rctd=False)

    assert [(opcode, sa) for opcode, sa, *_ in found] == [
        (command.opcode, command.service_action or 0) for command in COMMANDS
    ]
    assert (0x9E, 0x10, 0x01, 16, b"") in found
    assert (0xA3, 0x0C, 0x01, 12, b"") in found
    assert (0x28, 0, 0, 10, b"") in found
    for _opcode, sa, flags, size, _ in found:
        assert flags & 0x01 or sa == 0  # RSOC.SERVACTV
        assert size in (6, 10, 12, 16)


def test_rsoc_timeouts_descriptors(unit: LogicalUnit) -> None:
    for _opcode, _sa, flags, _size, timeouts in _all_commands(unit, rctd=True):
        assert flags & 0x02
        assert timeouts[:2] == b"\x00\x0a"


def test_rsoc_one_command(unit: LogicalUnit) -> None:
    for opcode, sa, flags, size, _ in _all_commands(unit, rctd=False):
        has_sa = bool(flags & 0x01)
        good, bad = (2, 1) if has_sa else (1, 2)
        assert_check(run(unit, rsoc(bad, opcode, sa)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
        for options in (good, 3):
            data = data_of(run(unit, rsoc(options, opcode, sa)))
            assert data[1] & 0x07 == 0x03  # supported
            assert int.from_bytes(data[2:4], "big") == size
            assert len(data) == 4 + size
            usage = data[4:]
            assert usage[0] == opcode
            if has_sa:
                assert usage[1] & 0x1F == sa


def test_rsoc_one_command_usage_of_read10(unit: LogicalUnit) -> None:
    data = data_of(run(unit, rsoc(1, 0x28, rctd=True)))

    assert data[1] == 0x83  # CTDP, supported
    assert data[4:14] == bytes((0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00))
    assert data[14:16] == b"\x00\x0a"


def test_rsoc_one_command_not_supported(unit: LogicalUnit) -> None:
    assert data_of(run(unit, rsoc(1, 0x89))) == bytes((0, 0x01, 0, 0))
    assert data_of(run(unit, rsoc(2, 0x9E, 0x13))) == bytes((0, 0x01, 0, 0))
    assert data_of(run(unit, rsoc(2, 0x7F, 0x09))) == bytes((0, 0x01, 0, 0))
    assert_check(run(unit, rsoc(5, 0x28)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(2, 2))


def test_rsoc_allocation_length(unit: LogicalUnit) -> None:
    full = data_of(run(unit, rsoc(0)))

    assert data_of(run(unit, rsoc(0, alloc=10))) == full[:10]


# -- unknown commands and shared CDB checks --------------------------------------------------------


@pytest.mark.parametrize("opcode", [0x04, 0x16, 0x17, 0x5E, 0x5F, 0x83, 0x89, 0x8B, 0x7F, 0xFF])
def test_unsupported_opcodes(unit: LogicalUnit, opcode: int) -> None:
    cdb = bytes((opcode,)) + bytes(15)

    assert_check(run(unit, cdb), ILLEGAL, Asc.INVALID_COMMAND_OPERATION_CODE, field=(0, None))
    assert_check(unit.execute(cdb, None, NEXUS), ILLEGAL, Asc.INVALID_COMMAND_OPERATION_CODE)


@pytest.mark.parametrize(
    "cdb", [b"\x9e\x13" + bytes(14), b"\xa3\x0a" + bytes(10), b"\x9e\x00" + bytes(14)]
)
def test_unsupported_service_actions(unit: LogicalUnit, cdb: bytes) -> None:
    assert_check(run(unit, cdb), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(1, 4))


def test_short_and_empty_cdbs(unit: LogicalUnit) -> None:
    assert_check(run(unit, read10(0, 1)[:9]), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert_check(run(unit, b""), ILLEGAL, Asc.INVALID_COMMAND_OPERATION_CODE)
    assert_check(run(unit, b"\x9e"), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_cdbs_padded_to_16_bytes_work(unit: LogicalUnit) -> None:
    # iSCSI carries every CDB in a 16-byte field.
    assert_good(run(unit, tur() + bytes(10)))
    assert data_of(run(unit, read10(0, 1) + bytes(6))) == data_of(run(unit, read10(0, 1)))


def test_naca_is_invalid(unit: LogicalUnit) -> None:
    cdb = bytearray(read10(0, 1))
    cdb[9] = 0x04

    assert_check(run(unit, bytes(cdb)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB, field=(9, 2))


# -- absent LUNs -----------------------------------------------------------------------------------


def test_absent_lun_inquiry() -> None:
    result = absent_lun_result(inquiry(96))
    data = data_of(result)

    assert_good(result)
    assert data[0] == 0x7F  # PQ 3, type 1Fh
    assert len(data) == 36
    assert data[4] == 31
    assert data_of(absent_lun_result(inquiry(2))) == data[:2]
    assert data_of(absent_lun_result(inquiry(255, evpd=True))) == bytes((0x7F, 0, 0, 1, 0))
    assert_check(
        absent_lun_result(inquiry(255, evpd=True, page=0x83)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB
    )
    assert_check(absent_lun_result(inquiry(255, page=0x83)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_absent_lun_report_luns_and_request_sense() -> None:
    data = data_of(absent_lun_result(report_luns(0), luns=(0, 300)))
    assert data == struct.pack(">II", 16, 0) + bytes(8) + bytes((0x41, 0x2C)) + bytes(6)
    assert_check(absent_lun_result(report_luns(0, 8)), ILLEGAL, Asc.INVALID_FIELD_IN_CDB)

    sense = data_of(absent_lun_result(request_sense(18)))
    assert (sense[2], sense[12], sense[13]) == (ILLEGAL, 0x25, 0x00)


@pytest.mark.parametrize("cdb", [tur(), read10(0, 1), write10(0, 1), b"", b"\x12"])
def test_absent_lun_other_commands(cdb: bytes) -> None:
    result = absent_lun_result(cdb)

    assert isinstance(result, CommandResult)
    assert result.status == ScsiStatus.CHECK_CONDITION
    assert result.sense[12] in (0x25, 0x24)


def test_plans(unit: LogicalUnit) -> None:
    assert unit.plan(tur()) == CommandPlan(DataDirection.NONE, 0)
    assert unit.plan(inquiry(255)) == CommandPlan(DataDirection.READ, 255)
    assert unit.plan(inquiry(0)) == CommandPlan(DataDirection.NONE, 0)
    assert unit.plan(report_luns(0, 4096)) == CommandPlan(DataDirection.READ, 4096)
    assert unit.plan(unmap(24)) == CommandPlan(DataDirection.WRITE, 24)
