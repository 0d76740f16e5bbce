"""Answers for a LUN with no logical unit behind it (SPC-4 §6.6.2, §6.33, §6.39; SAM-5 §5.9.3).

Initiators probe LUNs other than 0 (Linux's sequential scan stops on peripheral qualifier 3), and
REPORT LUNS must work whichever LUN it is sent to (open-iscsi#175: SCST-project/scst#223).
"""

from __future__ import annotations

from diskless.scsi.cdb import allocation_length
from diskless.scsi.constants import Asc, Opcode, SenseKey
from diskless.scsi.inquiry import ABSENT_LUN_STANDARD_INQUIRY, ABSENT_LUN_SUPPORTED_VPD
from diskless.scsi.result import CommandResult
from diskless.scsi.sense import CheckCondition, FieldPointer, descriptor_sense, fixed_sense
from diskless.scsi.spc import REPORTED_LUNS, report_luns_data

__all__ = ["absent_lun_result"]

_MIN_LENGTHS = {Opcode.INQUIRY: 6, Opcode.REQUEST_SENSE: 6, Opcode.REPORT_LUNS: 12}
_REPORT_LUNS_MIN_ALLOCATION = 16


def absent_lun_result(cdb: bytes, *, luns: tuple[int, ...] = REPORTED_LUNS) -> CommandResult:
    """The complete answer to ``cdb`` sent to a LUN that does not exist; ``luns`` are the LUNs
    that do, for REPORT LUNS.

    INQUIRY gets peripheral qualifier 3 / type 1Fh (and VPD page 0 only), REPORT LUNS the list,
    REQUEST SENSE the sense data LOGICAL UNIT NOT SUPPORTED with GOOD status; any other command
    CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h). The result may carry
    Data-In; a Data-Out command gets its CHECK CONDITION at once and its data must be drained.
    """
    try:
        return _answer(cdb, luns)
    except CheckCondition as error:
        return CommandResult.check_condition(error)


def _answer(cdb: bytes, luns: tuple[int, ...]) -> CommandResult:
    opcode = cdb[0] if cdb else -1
    if opcode not in _MIN_LENGTHS:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED)
    if len(cdb) < _MIN_LENGTHS[Opcode(opcode)]:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)
    if opcode == Opcode.INQUIRY:
        length = allocation_length(cdb, 3, 2)
        if cdb[1] & 0x02:
            raise _invalid(1, 1)
        if cdb[1] & 0x01:
            if cdb[2] != 0:
                raise _invalid(2)
            return CommandResult.good(ABSENT_LUN_SUPPORTED_VPD[:length])
        if cdb[2]:
            raise _invalid(2)
        return CommandResult.good(ABSENT_LUN_STANDARD_INQUIRY[:length])
    if opcode == Opcode.REQUEST_SENSE:
        build = descriptor_sense if cdb[1] & 0x01 else fixed_sense
        sense = build(SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED)
        return CommandResult.good(sense[: cdb[4]])
    if cdb[2] not in (0x00, 0x01, 0x02):
        raise _invalid(2)
    length = allocation_length(cdb, 6, 4)
    if length < _REPORT_LUNS_MIN_ALLOCATION:
        raise _invalid(6)
    return CommandResult.good(report_luns_data(cdb[2], luns)[:length])


def _invalid(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, field=FieldPointer(byte, bit)
    )
