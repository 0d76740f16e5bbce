"""Handlers of the primary commands (SPC-4): the ones every SCSI device answers.

TEST UNIT READY, REQUEST SENSE, INQUIRY, MODE SENSE/SELECT (6 and 10), REPORT LUNS, and the
medium commands START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL. Each command has a ``plan_*``
(validate the CDB, size the data) and a ``run_*`` function; see :mod:`diskless.scsi.dispatch`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from diskless.scsi.cdb import allocation_length
from diskless.scsi.constants import Asc, Opcode, SenseKey
from diskless.scsi.dispatch import (
    DataOut,
    data_in,
    data_out,
    invalid_field,
    payload,
    require_data,
)
from diskless.scsi.result import CommandPlan, CommandResult
from diskless.scsi.sense import descriptor_sense, fixed_sense

if TYPE_CHECKING:
    from diskless.scsi.lu import LogicalUnit

__all__ = [
    "REPORTED_LUNS",
    "plan_inquiry",
    "plan_mode_select",
    "plan_mode_sense",
    "plan_prevent_allow",
    "plan_report_luns",
    "plan_request_sense",
    "run_inquiry",
    "run_mode_select",
    "run_mode_sense",
    "run_prevent_allow",
    "run_report_luns",
    "run_request_sense",
    "run_start_stop_unit",
    "run_test_unit_ready",
    "report_luns_data",
]

REPORTED_LUNS = (0,)
"""The LUNs a target built on this package exposes: the client's disk is LUN 0."""

_EVPD = 0x01
_CMDDT = 0x02  # obsolete in SPC-3+; SPC-4 §6.6.1 says a set CMDDT bit is an invalid field
_DESC = 0x01  # REQUEST SENSE: descriptor format sense data wanted
_SP = 0x01  # MODE SELECT: save pages
_LOEJ = 0x02
_START = 0x01
_PREVENT_MASK = 0x03
_SELECT_REPORT_ALL = (0x00, 0x02)  # SPC-4 §6.33: all LUs (0h) / all of them incl. well known (2h)
_SELECT_REPORT_WELL_KNOWN = 0x01  # only well-known LUs: we have none
_REPORT_LUNS_MIN_ALLOCATION = 16  # SPC-3 §6.21 note 30; libiscsi ReportLUNs tests insist


def _good(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
    return CommandResult.good()


run_test_unit_ready = _good
"""TEST UNIT READY: unit attention and NOT READY are reported by the LU before this runs."""


# -- REQUEST SENSE (SPC-4 §6.39) ------------------------------------------------------------------


def plan_request_sense(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    return data_in(cdb[4])


def run_request_sense(
    unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable
) -> CommandResult:
    """Sense data for the nexus's pending unit attention (clearing it), NOT READY if the medium
    is out, else NO SENSE; always GOOD status (autosense already delivered every error)."""
    attention = unit._take_unit_attention(nexus)
    if attention is not None:
        key, asc = SenseKey.UNIT_ATTENTION, attention
    elif not unit.medium_present:
        key, asc = SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT
    else:
        key, asc = SenseKey.NO_SENSE, Asc.NO_ADDITIONAL_SENSE
    build = descriptor_sense if cdb[1] & _DESC else fixed_sense
    return payload(build(key, asc), cdb[4])


# -- INQUIRY (SPC-4 §6.6) -----------------------------------------------------------------------


def plan_inquiry(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    if cdb[1] & _CMDDT:
        raise invalid_field(1, 1)
    if cdb[1] & _EVPD:
        if cdb[2] not in unit.inquiry_data.vpd:
            raise invalid_field(2)
    elif cdb[2]:
        raise invalid_field(2)  # a page code without EVPD (libiscsi Inquiry.EVPD)
    return data_in(allocation_length(cdb, 3, 2))


def run_inquiry(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
    plan_inquiry(unit, cdb)
    inquiry = unit.inquiry_data
    page = inquiry.vpd[cdb[2]] if cdb[1] & _EVPD else inquiry.standard
    return payload(page, allocation_length(cdb, 3, 2))


# -- MODE SENSE / MODE SELECT (SPC-4 §6.11-6.14) -------------------------------------------------


def _mode_sense_allocation(cdb: bytes) -> int:
    return allocation_length(cdb, 7, 2) if cdb[0] == Opcode.MODE_SENSE_10 else cdb[4]


def plan_mode_sense(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    # Building the answer is cheap and raises for saved values and unknown pages.
    unit._mode_sense(cdb, ten=cdb[0] == Opcode.MODE_SENSE_10)
    return data_in(_mode_sense_allocation(cdb))


def run_mode_sense(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
    answer = unit._mode_sense(cdb, ten=cdb[0] == Opcode.MODE_SENSE_10)
    return payload(answer, _mode_sense_allocation(cdb))


def _mode_select_length(cdb: bytes) -> int:
    return allocation_length(cdb, 7, 2) if cdb[0] == Opcode.MODE_SELECT_10 else cdb[4]


def plan_mode_select(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    if cdb[1] & _SP:
        raise invalid_field(1, 0)  # saved pages are not implemented (SPC-4 §6.11)
    return data_out(_mode_select_length(cdb))


def run_mode_select(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
    plan_mode_select(unit, cdb)
    params = require_data(data, _mode_select_length(cdb))
    unit._mode_select(params, nexus, ten=cdb[0] == Opcode.MODE_SELECT_10)
    return CommandResult.good()


# -- REPORT LUNS (SPC-4 §6.33) --------------------------------------------------------------------


def report_luns_data(select_report: int, luns: tuple[int, ...] = REPORTED_LUNS) -> bytes:
    """The REPORT LUNS parameter data: an 8-byte header, then single-level LUN entries."""
    if select_report == _SELECT_REPORT_WELL_KNOWN:
        luns = ()
    entries = b"".join(_lun_entry(lun) for lun in luns)
    return len(entries).to_bytes(4, "big") + bytes(4) + entries


def _lun_entry(lun: int) -> bytes:
    # SAM-5 §4.7.3: peripheral device addressing below 256, flat space addressing above.
    if lun < 256:
        return bytes((0, lun)) + bytes(6)
    return (0x4000 | lun).to_bytes(2, "big") + bytes(6)


def plan_report_luns(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    if cdb[2] not in (*_SELECT_REPORT_ALL, _SELECT_REPORT_WELL_KNOWN):
        raise invalid_field(2)
    length = allocation_length(cdb, 6, 4)
    if length < _REPORT_LUNS_MIN_ALLOCATION:
        raise invalid_field(6)
    return data_in(length)


def run_report_luns(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
    plan = plan_report_luns(unit, cdb)
    return payload(report_luns_data(cdb[2]), plan.transfer_length)


# -- START STOP UNIT (SBC-3 §5.25) and PREVENT ALLOW MEDIUM REMOVAL (SPC-4 §6.15) -----------------


def run_start_stop_unit(
    unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable
) -> CommandResult:
    """Eject or load a removable medium; power conditions and spin up/down are no-ops.

    SBC-3: with a POWER CONDITION other than 0h, START and LOEJ are ignored. LOEJ on a
    non-removable LU is an invalid field (libiscsi StartStopUnit.Simple expects a failure).
    IMMED makes no difference: the command finishes at once anyway.
    """
    if cdb[4] >> 4:
        return CommandResult.good()
    if not cdb[4] & _LOEJ:
        return CommandResult.good()
    if not unit.removable:
        raise invalid_field(4, 1)
    unit._load_or_eject(load=bool(cdb[4] & _START))
    return CommandResult.good()


def plan_prevent_allow(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    if cdb[4] & _PREVENT_MASK > 1:
        raise invalid_field(4, 1)  # 10b/11b: medium changer values, obsolete
    return data_in(0)


def run_prevent_allow(
    unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable
) -> CommandResult:
    plan_prevent_allow(unit, cdb)
    unit._set_prevent(nexus, bool(cdb[4] & _PREVENT_MASK))
    return CommandResult.good()
