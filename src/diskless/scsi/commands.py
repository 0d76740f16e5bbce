"""The command table: opcode → handler, and REPORT SUPPORTED OPERATION CODES, which reports it.

Dispatch is one index into a 256-entry list. SERVICE ACTION IN(16) and MAINTENANCE IN entries are
dicts keyed by service action. Anything not listed is ILLEGAL REQUEST / INVALID COMMAND
OPERATION CODE (20h/00h), or INVALID FIELD IN CDB pointing at the service action for an unknown
service action: both of which libiscsi counts as "not implemented" rather than as a failure.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from typing import TYPE_CHECKING

from diskless.scsi import sbc, spc
from diskless.scsi.cdb import LAYOUT_6, LAYOUT_10, LAYOUT_12, LAYOUT_16, allocation_length
from diskless.scsi.constants import Asc, Opcode, SenseKey, ServiceAction
from diskless.scsi.dispatch import Command, DataOut, data_in, invalid_field, no_data, payload
from diskless.scsi.result import CommandPlan, CommandResult
from diskless.scsi.sense import CheckCondition, FieldPointer

if TYPE_CHECKING:
    from diskless.scsi.lu import LogicalUnit

__all__ = ["COMMANDS", "NACA", "lookup", "supported_commands_data"]

NACA = 0x04
"""CONTROL byte: normal ACA, which we do not support (SAM-5 §5.9)."""
_SERVICE_ACTION_MASK = 0x1F
_RCTD = 0x80  # RSOC byte 2: return command timeouts descriptors
_REPORTING_OPTIONS_MASK = 0x07
_REPORT_ALL = 0
_REPORT_OPCODE = 1  # one command, which must not have service actions
_REPORT_OPCODE_SA = 2  # one command named by opcode and service action
_REPORT_OPCODE_MAYBE_SA = 3  # SPC-4 r37: either, whichever the opcode has
_CTDP = 0x02  # command descriptor byte 5: a timeouts descriptor follows
_SERVACTV = 0x01  # command descriptor byte 5: the opcode has service actions
_ONE_CTDP = 0x80  # one-command parameter data byte 1
_SUPPORT_NONE = 0x01  # SUPPORT 001b: not supported
_SUPPORT_STANDARD = 0x03  # SUPPORT 011b: supported as the standard says
_COMMAND_DESCRIPTOR = struct.Struct(">BxHxBH")
# COMMAND TIMEOUTS DESCRIPTOR (SPC-4 §6.35.4): length 0Ah; nominal and recommended timeouts 0,
# meaning "not specified" -- initiators keep their own.
_TIMEOUTS_DESCRIPTOR = bytes((0x00, 0x0A)) + bytes(10)


def _usage(*head: int, length: int) -> bytes:
    """CDB USAGE DATA: the given leading bytes, then zeros up to ``length`` (CONTROL byte: 0)."""
    return bytes(head) + bytes(length - len(head))


_FF4 = (0xFF,) * 4
_FF8 = (0xFF,) * 8
_RW_FLAGS = 0xF8  # RDPROTECT/WRPROTECT, DPO, FUA
_VERIFY_FLAGS = 0xF6  # VRPROTECT, DPO, BYTCHK
_WAV_FLAGS = 0xF2  # WRPROTECT, DPO, BYTCHK
_WS_FLAGS = 0xFE  # WRPROTECT, ANCHOR, UNMAP, PBDATA, LBDATA
_IMMED = 0x02


def _block(
    name: str,
    opcode: Opcode,
    flags: int,
    size: int,
    handlers: sbc.Handlers,
    *,
    writes: bool = False,
) -> Command:
    if size == 10:
        usage = _usage(opcode, flags, *_FF4, 0, 0xFF, 0xFF, length=10)
    elif size == 12:
        usage = _usage(opcode, flags, *_FF4, *_FF4, length=12)
    else:
        usage = _usage(opcode, flags, *_FF8, *_FF4, length=16)
    plan, run = handlers
    return Command(name, usage, plan, run, writes=writes)


def _build() -> tuple[Command, ...]:
    layouts = {10: LAYOUT_10, 12: LAYOUT_12, 16: LAYOUT_16}
    commands = [
        Command(
            "TEST UNIT READY",
            _usage(Opcode.TEST_UNIT_READY, length=6),
            no_data,
            spc.run_test_unit_ready,
        ),
        Command(
            "REQUEST SENSE",
            _usage(Opcode.REQUEST_SENSE, 0x01, 0, 0, 0xFF, length=6),
            spc.plan_request_sense,
            spc.run_request_sense,
            needs_medium=False,
            reports_unit_attention=False,
        ),
        Command(
            "INQUIRY",
            _usage(Opcode.INQUIRY, 0x01, 0xFF, 0xFF, 0xFF, length=6),
            spc.plan_inquiry,
            spc.run_inquiry,
            needs_medium=False,
            reports_unit_attention=False,
        ),
        Command(
            "MODE SELECT(6)",
            _usage(Opcode.MODE_SELECT_6, 0x11, 0, 0, 0xFF, length=6),
            spc.plan_mode_select,
            spc.run_mode_select,
            needs_medium=False,
        ),
        Command(
            "MODE SENSE(6)",
            _usage(Opcode.MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, length=6),
            spc.plan_mode_sense,
            spc.run_mode_sense,
            needs_medium=False,
        ),
        Command(
            "MODE SELECT(10)",
            _usage(Opcode.MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, length=10),
            spc.plan_mode_select,
            spc.run_mode_select,
            needs_medium=False,
        ),
        Command(
            "MODE SENSE(10)",
            _usage(Opcode.MODE_SENSE_10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, length=10),
            spc.plan_mode_sense,
            spc.run_mode_sense,
            needs_medium=False,
        ),
        Command(
            "START STOP UNIT",
            _usage(Opcode.START_STOP_UNIT, 0x01, 0, 0x0F, 0xF7, length=6),
            no_data,
            spc.run_start_stop_unit,
            needs_medium=False,
        ),
        Command(
            "PREVENT ALLOW MEDIUM REMOVAL",
            _usage(Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, length=6),
            spc.plan_prevent_allow,
            spc.run_prevent_allow,
            needs_medium=False,
        ),
        Command(
            "REPORT LUNS",
            _usage(Opcode.REPORT_LUNS, 0, 0xFF, 0, 0, 0, *_FF4, length=12),
            spc.plan_report_luns,
            spc.run_report_luns,
            needs_medium=False,
            reports_unit_attention=False,
        ),
        Command(
            "READ CAPACITY(10)",
            _usage(Opcode.READ_CAPACITY_10, 0, *_FF4, 0, 0, 0x01, length=10),
            sbc.plan_read_capacity_10,
            sbc.run_read_capacity_10,
        ),
        Command(
            "READ CAPACITY(16)",
            _usage(
                Opcode.SERVICE_ACTION_IN_16,
                ServiceAction.READ_CAPACITY_16,
                *_FF8,
                *_FF4,
                0x01,
                length=16,
            ),
            sbc.plan_read_capacity_16,
            sbc.run_read_capacity_16,
            service_action=ServiceAction.READ_CAPACITY_16,
        ),
        Command(
            "GET LBA STATUS",
            _usage(
                Opcode.SERVICE_ACTION_IN_16,
                ServiceAction.GET_LBA_STATUS,
                *_FF8,
                *_FF4,
                0,
                length=16,
            ),
            sbc.plan_get_lba_status,
            sbc.run_get_lba_status,
            service_action=ServiceAction.GET_LBA_STATUS,
        ),
        Command(
            "REPORT SUPPORTED OPERATION CODES",
            _usage(
                Opcode.MAINTENANCE_IN,
                ServiceAction.REPORT_SUPPORTED_OPERATION_CODES,
                0x87,
                0xFF,
                0xFF,
                0xFF,
                *_FF4,
                length=12,
            ),
            _plan_rsoc,
            _run_rsoc,
            service_action=ServiceAction.REPORT_SUPPORTED_OPERATION_CODES,
            needs_medium=False,
        ),
        Command(
            "READ(6)",
            _usage(Opcode.READ_6, 0x1F, 0xFF, 0xFF, 0xFF, length=6),
            *sbc.reader(LAYOUT_6),
        ),
        Command(
            "WRITE(6)",
            _usage(Opcode.WRITE_6, 0x1F, 0xFF, 0xFF, 0xFF, length=6),
            *sbc.writer(LAYOUT_6),
            writes=True,
        ),
        Command(
            "UNMAP",
            _usage(Opcode.UNMAP, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, length=10),
            sbc.plan_unmap,
            sbc.run_unmap,
            writes=True,
        ),
    ]
    sized = (
        ("READ", (Opcode.READ_10, Opcode.READ_12, Opcode.READ_16), _RW_FLAGS, sbc.reader, False),
        ("WRITE", (Opcode.WRITE_10, Opcode.WRITE_12, Opcode.WRITE_16), _RW_FLAGS, sbc.writer, True),
        (
            "WRITE AND VERIFY",
            (Opcode.WRITE_AND_VERIFY_10, Opcode.WRITE_AND_VERIFY_12, Opcode.WRITE_AND_VERIFY_16),
            _WAV_FLAGS,
            sbc.write_and_verify,
            True,
        ),
        (
            "VERIFY",
            (Opcode.VERIFY_10, Opcode.VERIFY_12, Opcode.VERIFY_16),
            _VERIFY_FLAGS,
            sbc.verifier,
            False,
        ),
    )
    for name, opcodes, flags, factory, writes in sized:
        for opcode, size in zip(opcodes, (10, 12, 16), strict=True):
            commands.append(
                _block(
                    f"{name}({size})", opcode, flags, size, factory(layouts[size]), writes=writes
                )
            )
    for size, opcode in ((10, Opcode.PRE_FETCH_10), (16, Opcode.PRE_FETCH_16)):
        commands.append(
            _block(f"PRE-FETCH({size})", opcode, _IMMED, size, sbc.prefetch(layouts[size]))
        )
    for size, opcode in ((10, Opcode.SYNCHRONIZE_CACHE_10), (16, Opcode.SYNCHRONIZE_CACHE_16)):
        handlers = sbc.synchronize_cache(layouts[size])
        commands.append(
            _block(f"SYNCHRONIZE CACHE({size})", opcode, _IMMED, size, handlers, writes=True)
        )
    for size, opcode in ((10, Opcode.WRITE_SAME_10), (16, Opcode.WRITE_SAME_16)):
        handlers = sbc.write_same(layouts[size], sixteen=size == 16)
        flags = _WS_FLAGS | (0x01 if size == 16 else 0)  # NDOB
        commands.append(_block(f"WRITE SAME({size})", opcode, flags, size, handlers, writes=True))
    return tuple(
        sorted(commands, key=lambda command: (command.opcode, command.service_action or 0))
    )


# -- REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35) ------------------------------------------------


def _plan_rsoc(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    options = cdb[2] & _REPORTING_OPTIONS_MASK
    if options != _REPORT_ALL:
        _requested(cdb, options)
    return data_in(allocation_length(cdb, 6, 4))


def _run_rsoc(unit: LogicalUnit, cdb: bytes, data: DataOut, nexus: Hashable) -> CommandResult:
    plan = _plan_rsoc(unit, cdb)
    timeouts = bool(cdb[2] & _RCTD)
    options = cdb[2] & _REPORTING_OPTIONS_MASK
    if options == _REPORT_ALL:
        answer = supported_commands_data(timeouts=timeouts)
    else:
        answer = _one_command_data(_requested(cdb, options), timeouts=timeouts)
    return payload(answer, plan.transfer_length)


def _requested(cdb: bytes, options: int) -> Command | None:
    """The command a one-command request names; None if we do not support it."""
    entry = _TABLE[cdb[3]]
    service_action = int.from_bytes(cdb[4:6], "big")
    if options == _REPORT_OPCODE:
        if isinstance(entry, dict):
            raise invalid_field(2, 2)  # the opcode has service actions: 010b was needed
        return entry
    if options == _REPORT_OPCODE_SA:
        if isinstance(entry, Command):
            raise invalid_field(2, 2)  # the opcode has no service actions: 001b was needed
        return entry.get(service_action) if entry is not None else None
    if options == _REPORT_OPCODE_MAYBE_SA:
        return entry.get(service_action) if isinstance(entry, dict) else entry
    raise invalid_field(2, 2)


def supported_commands_data(*, timeouts: bool) -> bytes:
    """The all-commands parameter data: a 4-byte length, then one descriptor per command."""
    body = bytearray()
    for command in COMMANDS:
        flags = (_CTDP if timeouts else 0) | (
            _SERVACTV if command.service_action is not None else 0
        )
        body += _COMMAND_DESCRIPTOR.pack(
            command.opcode, command.service_action or 0, flags, command.cdb_length
        )
        if timeouts:
            body += _TIMEOUTS_DESCRIPTOR
    return len(body).to_bytes(4, "big") + bytes(body)


def _one_command_data(command: Command | None, *, timeouts: bool) -> bytes:
    if command is None:
        return bytes((0, _SUPPORT_NONE, 0, 0))
    head = bytes((0, (_ONE_CTDP if timeouts else 0) | _SUPPORT_STANDARD))
    answer = head + command.cdb_length.to_bytes(2, "big") + command.usage
    return answer + _TIMEOUTS_DESCRIPTOR if timeouts else answer


# -- the table -------------------------------------------------------------------------------------

COMMANDS = _build()
"""Every supported command, by opcode then service action (the order RSOC reports them in)."""

_TABLE: list[Command | dict[int, Command] | None] = [None] * 256
for _command in COMMANDS:
    if _command.service_action is None:
        _TABLE[_command.opcode] = _command
    else:
        _group = _TABLE[_command.opcode]
        if not isinstance(_group, dict):
            _group = _TABLE[_command.opcode] = {}
        _group[_command.service_action] = _command


def lookup(cdb: bytes) -> Command:
    """The command ``cdb`` names, after the checks every command shares (CDB length, NACA)."""
    if not cdb:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE)
    entry = _TABLE[cdb[0]]
    if isinstance(entry, Command):
        command = entry
    elif entry is None:
        raise CheckCondition(
            SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE, field=FieldPointer(0)
        )
    else:
        found = entry.get(cdb[1] & _SERVICE_ACTION_MASK) if len(cdb) > 1 else None
        if found is None:
            raise invalid_field(1, 4)  # libiscsi reads this as "not implemented"
        command = found
    size = command.cdb_length
    if len(cdb) < size:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)
    if cdb[size - 1] & NACA:
        raise invalid_field(size - 1, 2)
    return command
