"""Full feature phase of one connection, as a sans-I/O state machine (RFC 7143 §4-§11).

:meth:`FullFeatureConnection.receive` takes one decoded initiator PDU and returns the PDUs to send
back, in order, as :class:`Frame` objects. It owns the session's CmdSN window, the connection's
StatSN, every write task waiting for its Data-Out (immediate data, unsolicited data, R2Ts), and the
task management and logout rules. SCSI commands run synchronously on the target's
:class:`~diskless.scsi.LogicalUnit`; a READ's Data-In is described by the device's read plan, so
the endpoint can ``sendfile`` golden-image data without copying it through Python.

ErrorRecoveryLevel is 0: a Data-Out that breaks the sequence rules fails its command with
CHECK CONDITION (and later Data-Out for it are ignored); anything the connection can't make sense
of is answered with a Reject.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

from diskless.iscsi.discovery import PortalInfo, TargetDirectory, answer_text_request
from diskless.iscsi.negotiation import SessionParameters, SessionType
from diskless.iscsi.pdu import (
    RESERVED_TAG,
    DataOut,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    NopOut,
    RejectReason,
    Request,
    ScsiCommand,
    Snack,
    TaskManagementFunction,
    TaskManagementRequest,
    TaskManagementResponse,
    TextRequest,
    encode_data_in,
    encode_good_data_in,
    encode_logout_response,
    encode_nop_in,
    encode_r2t,
    encode_reject,
    encode_scsi_response,
    encode_task_management_response,
    encode_text_response,
)
from diskless.iscsi.text import parse_text
from diskless.iscsi.window import CommandWindow, serial_lt
from diskless.scsi import (
    Asc,
    CommandPlan,
    CommandResult,
    DataDirection,
    LogicalUnit,
    ResetReason,
    ScsiStatus,
    SenseKey,
    absent_lun_result,
)
from diskless.scsi.sense import fixed_sense
from diskless.storage.blockdev import BufferExtent, Extent, FileExtent, ZeroExtent

__all__ = ["MAX_WRITE_BUFFER", "Frame", "FullFeatureConnection"]

# The largest single command payload buffered in memory; initiators are told less (VPD B0 says
# 1 MiB), so only a misbehaving one reaches it, and it gets CHECK CONDITION instead of our memory.
MAX_WRITE_BUFFER = 16 << 20
# Write tasks soliciting data at the same time. Each holds a buffer as large as its transfer (at
# most 1 MiB, VPD B0), so this bounds a connection's write memory; the others wait holding only
# their immediate data, and get their R2Ts as buffers free up.
MAX_ACTIVE_WRITES = 8
# Failed write tasks whose stray Data-Out we still recognise (and ignore) without a Reject.
_DEAD_TASK_MEMORY = 64
# Write buffers kept for the next write once their command is done, and the smallest worth
# keeping: a fresh 1 MiB buffer costs its page faults and zeroing on every command, while small
# ones come cheaply from the allocator. Two cover a steady pipeline, where each finished write
# hands its buffer to the next; an idle connection keeps at most 2 MiB.
_SPARE_WRITE_BUFFERS = 2
_SPARE_MIN_BYTES = 64 << 10
_TIME2WAIT = 2
_TIME2RETAIN = 0  # ErrorRecoveryLevel 0: nothing survives a dropped connection


@dataclass(slots=True)
class Frame:
    """One PDU to send: its 48-byte BHS and its data segment (unpadded, without digests).

    ``data`` is either bytes or a list of extents to stream (Data-In); ``data_length`` is its size.
    """

    header: bytes
    data: bytes | list[Extent] = b""
    data_length: int = 0
    close_after: bool = False


@dataclass(slots=True)
class _Burst:
    """One expected Data-Out sequence: the unsolicited burst or one R2T."""

    offset: int
    end: int
    next_offset: int
    next_datasn: int = 0


@dataclass(slots=True)
class _WriteTask:
    command: ScsiCommand
    plan: CommandPlan
    needed: int  # bytes to collect before executing (min of EDTL and the CDB's length)
    immediate: memoryview  # the immediate data, until the task gets its buffer
    buffer: bytearray = field(default_factory=bytearray)
    active: bool = False
    received: int = 0
    unsolicited: _Burst | None = None
    r2ts: dict[int, _Burst] = field(default_factory=dict)
    next_r2t_offset: int = 0
    r2tsn: int = 0
    failed: CommandResult | None = None


class FullFeatureConnection:
    """One connection of a Normal or Discovery session after login (MaxConnections=1)."""

    def __init__(
        self,
        *,
        parameters: SessionParameters,
        session_type: SessionType,
        initiator_name: str,
        nexus: Hashable,
        logical_unit: LogicalUnit | None,
        target_name: str | None,
        directory: TargetDirectory,
        portal: PortalInfo,
        window: CommandWindow[Request],
        statsn: int,
    ) -> None:
        self._params = parameters
        self._session_type = session_type
        self._initiator_name = initiator_name
        self._nexus = nexus
        self._lu = logical_unit
        self._target_name = target_name
        self._directory = directory
        self._portal = portal
        self._window = window
        self._statsn = statsn % (1 << 32)
        self._tasks: dict[int, _WriteTask] = {}
        self._waiting_writes: deque[_WriteTask] = deque()
        self._active_writes = 0
        self._dead_tasks: dict[int, None] = {}
        self._spare_buffers: list[bytearray] = []
        self._next_ttt = 1
        self._text_pending: dict[int, bytes] = {}
        self._closed = False
        # What a Data-In PDU may carry: the initiator's MaxRecvDataSegmentLength.
        self._segment = parameters.max_send_data_segment_length

    @property
    def parameters(self) -> SessionParameters:
        return self._params

    @property
    def statsn(self) -> int:
        return self._statsn

    @property
    def outstanding_tasks(self) -> int:
        return len(self._tasks)

    # -- entry points ---------------------------------------------------------------------------

    def receive(self, request: Request) -> list[Frame]:
        """Handle one initiator PDU; returns the PDUs to send, in order."""
        out: list[Frame] = []
        if self._closed:
            return out
        if isinstance(request, DataOut):
            self._data_out(request, out)
        elif isinstance(request, Snack):
            # RFC 7143 §11.16: SNACK is only defined for ErrorRecoveryLevel > 0.
            out.append(self._reject(RejectReason.PROTOCOL_ERROR, b""))
        elif isinstance(
            request, ScsiCommand | NopOut | TextRequest | LogoutRequest | TaskManagementRequest
        ):
            if (
                isinstance(request, NopOut)
                and request.itt == RESERVED_TAG
                and not request.immediate
            ):
                return out  # RFC 7143 §11.18: a no-reply NOP-Out must be immediate; ignore it
            for ready in self._window.submit(request.cmdsn, request, immediate=request.immediate):
                self._dispatch(ready, out)
        else:
            out.append(self._reject(RejectReason.PROTOCOL_ERROR, b""))
        return out

    def reject(self, reason: int, bhs: bytes) -> Frame:
        """A Reject for a PDU the endpoint could not decode (its header is ``bhs``)."""
        return self._reject(reason, bhs)

    def close(self) -> None:
        """The connection is gone: abort what was pending and let the LU forget this nexus."""
        self._closed = True
        self._abort_all()
        if self._lu is not None:
            self._lu.nexus_gone(self._nexus)

    # -- dispatch -------------------------------------------------------------------------------

    def _dispatch(self, request: Request, out: list[Frame]) -> None:
        if isinstance(request, ScsiCommand):
            self._scsi_command(request, out)
        elif isinstance(request, NopOut):
            self._nop_out(request, out)
        elif isinstance(request, TextRequest):
            self._text(request, out)
        elif isinstance(request, LogoutRequest):
            self._logout(request, out)
        elif isinstance(request, TaskManagementRequest):
            self._task_management(request, out)

    def _take_statsn(self) -> int:
        statsn = self._statsn
        self._statsn = (statsn + 1) % (1 << 32)
        return statsn

    def _reject(self, reason: int, bhs: bytes) -> Frame:
        header = encode_reject(
            reason=reason,
            statsn=self._take_statsn(),
            expcmdsn=self._window.expcmdsn,
            maxcmdsn=self._window.maxcmdsn,
            data_length=len(bhs),
        )
        return Frame(header, bhs, len(bhs))

    # -- SCSI commands --------------------------------------------------------------------------

    def _scsi_command(self, command: ScsiCommand, out: list[Frame]) -> None:
        if self._session_type is SessionType.DISCOVERY or self._lu is None:
            # RFC 7143 §4.4.1: a discovery session carries only Text, Logout and NOP.
            out.append(self._reject(RejectReason.PROTOCOL_ERROR, b""))
            return
        if command.itt in self._tasks:
            out.append(self._reject(RejectReason.TASK_IN_PROGRESS, b""))
            return
        if command.lun != 0:
            result = absent_lun_result(command.cdb)
            self._respond(command, result, transferred_plan=None, out=out)
            return
        if not command.write:
            planned = self._lu.plain_read(command.cdb, self._nexus)
            if planned is not None:
                # What the general path below answers for it, without its plan and checks.
                extents, length = planned
                if length == command.expected_data_transfer_length and length <= self._segment:
                    # All of it in one Data-In carrying GOOD: no residual, no cutting.
                    window = self._window
                    header = encode_good_data_in(
                        command.itt, length, self._take_statsn(), window.expcmdsn, window.maxcmdsn
                    )
                    out.append(Frame(header, extents, length))
                    return
                result = CommandResult(ScsiStatus.GOOD, b"", extents)
                self._respond(command, result, transferred_plan=None, out=out)
                return
        plan = self._lu.plan(command.cdb)
        if isinstance(plan, CommandResult):
            self._forget_data_out(command)
            self._respond(command, plan, transferred_plan=None, out=out)
            return
        if plan.direction is DataDirection.WRITE:
            self._start_write(command, plan, out)
            return
        result = self._lu.execute(command.cdb, None, self._nexus)
        self._respond(command, result, transferred_plan=plan, out=out)

    def _forget_data_out(self, command: ScsiCommand) -> None:
        """A command that fails before its data arrives: ignore the Data-Out still on its way."""
        if command.write:
            self._remember_dead(command.itt)

    def _remember_dead(self, itt: int) -> None:
        self._dead_tasks[itt] = None
        while len(self._dead_tasks) > _DEAD_TASK_MEMORY:
            del self._dead_tasks[next(iter(self._dead_tasks))]

    def _start_write(self, command: ScsiCommand, plan: CommandPlan, out: list[Frame]) -> None:
        assert self._lu is not None
        refusal = self._lu.precheck(command.cdb, self._nexus)
        if refusal is not None:
            # Refused before any data moves (write protected, unit attention, no medium).
            self._forget_data_out(command)
            self._respond(command, refusal, transferred_plan=plan, out=out)
            return
        edtl = command.expected_data_transfer_length
        needed = min(edtl, plan.transfer_length)
        if needed > MAX_WRITE_BUFFER:
            self._forget_data_out(command)
            failure = CommandResult(
                ScsiStatus.CHECK_CONDITION,
                fixed_sense(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB),
            )
            self._respond(command, failure, transferred_plan=plan, out=out)
            return
        immediate = command.immediate_data
        if len(immediate) > edtl:
            self._forget_data_out(command)
            out.append(self._reject(RejectReason.PROTOCOL_ERROR, b""))
            return
        usable = min(len(immediate), needed)
        task = _WriteTask(command=command, plan=plan, needed=needed, immediate=immediate[:usable])
        task.received = usable
        # RFC 7143 §4.6.1.3: without InitialR2T the initiator may follow the immediate data with
        # unsolicited Data-Out up to FirstBurstLength, ending that sequence with F=1.
        unsolicited_end = len(immediate)
        if not self._params.initial_r2t and not command.final:
            unsolicited_end = min(edtl, self._params.first_burst_length)
            task.unsolicited = _Burst(len(immediate), unsolicited_end, len(immediate))
        task.next_r2t_offset = unsolicited_end
        self._tasks[command.itt] = task
        # Unsolicited data arrives whether we are ready or not, so such a task starts at once.
        if (
            task.unsolicited is not None
            or task.received >= needed
            or self._active_writes < MAX_ACTIVE_WRITES
        ):
            self._activate(task, out)
        else:
            self._waiting_writes.append(task)

    def _activate(self, task: _WriteTask, out: list[Frame]) -> None:
        task.active = True
        self._active_writes += 1
        task.buffer = self._take_buffer(task.needed)
        task.buffer[: len(task.immediate)] = task.immediate
        task.immediate = memoryview(b"")
        self._advance_write(task, out)

    def _take_buffer(self, size: int) -> bytearray:
        """A write buffer of at least ``size`` bytes; its old contents are all overwritten, since
        a write runs only once every byte it needs has arrived."""
        spares = self._spare_buffers
        for index, spare in enumerate(spares):
            if len(spare) >= size:
                return spares.pop(index)
        return bytearray(size)

    def _give_back(self, buffer: bytearray) -> None:
        if len(buffer) >= _SPARE_MIN_BYTES and len(self._spare_buffers) < _SPARE_WRITE_BUFFERS:
            self._spare_buffers.append(buffer)

    def _finish(self, task: _WriteTask, out: list[Frame]) -> None:
        """The task leaves the table (done, failed or aborted); a waiting write may start."""
        self._tasks.pop(task.command.itt, None)
        if task.active:
            task.active = False
            self._active_writes -= 1
            self._give_back(task.buffer)
            task.buffer = bytearray()
        while self._waiting_writes and self._active_writes < MAX_ACTIVE_WRITES:
            waiting = self._waiting_writes.popleft()
            if self._tasks.get(waiting.command.itt) is waiting:
                self._activate(waiting, out)

    def _advance_write(self, task: _WriteTask, out: list[Frame]) -> None:
        """Send the R2Ts the task may have outstanding, or run it once all its data is in."""
        if task.received >= task.needed and task.unsolicited is None and not task.r2ts:
            self._execute_write(task, out)
            self._finish(task, out)
            return
        edtl = task.command.expected_data_transfer_length
        limit = min(edtl, task.needed) if task.needed < edtl else edtl
        while (
            len(task.r2ts) < self._params.max_outstanding_r2t
            and task.next_r2t_offset < limit
            and task.next_r2t_offset < task.needed
        ):
            offset = task.next_r2t_offset
            length = min(self._params.max_burst_length, task.needed - offset)
            ttt = self._allocate_ttt()
            task.r2ts[ttt] = _Burst(offset, offset + length, offset)
            task.next_r2t_offset = offset + length
            out.append(
                Frame(
                    encode_r2t(
                        lun=task.command.lun,
                        itt=task.command.itt,
                        ttt=ttt,
                        statsn=self._statsn,
                        expcmdsn=self._window.expcmdsn,
                        maxcmdsn=self._window.maxcmdsn,
                        r2tsn=task.r2tsn,
                        buffer_offset=offset,
                        desired_data_transfer_length=length,
                    )
                )
            )
            task.r2tsn += 1

    def _allocate_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = 1 if ttt >= 0xFFFFFFFE else ttt + 1
        return ttt

    def _data_out(self, data_out: DataOut, out: list[Frame]) -> None:
        task = self._tasks.get(data_out.itt)
        if task is None:
            if data_out.itt not in self._dead_tasks:
                out.append(self._reject(RejectReason.PROTOCOL_ERROR, b""))
            return
        unsolicited = data_out.ttt == RESERVED_TAG
        burst = task.unsolicited if unsolicited else task.r2ts.get(data_out.ttt)
        length = len(data_out.data)
        if (
            burst is None
            or data_out.datasn != burst.next_datasn
            or data_out.buffer_offset != burst.next_offset
            or data_out.buffer_offset + length > burst.end
        ):
            # RFC 7143 §7.12 with ErrorRecoveryLevel 0: the command cannot complete.
            self._fail_write(task, Asc.DATA_PHASE_ERROR, out)
            return
        offset = data_out.buffer_offset
        if offset < task.needed:
            take = min(length, task.needed - offset)
            task.buffer[offset : offset + take] = data_out.data[:take]
        task.received += length
        burst.next_offset += length
        burst.next_datasn += 1
        if data_out.final:
            if burst.next_offset != burst.end:
                # A burst ended early, the unsolicited one included (RFC 7143 §13.14: it runs to
                # FirstBurstLength or the EDTL): its missing bytes would never be asked for.
                self._fail_write(task, Asc.DATA_PHASE_ERROR, out)
                return
            if burst is task.unsolicited:
                task.unsolicited = None
            else:
                del task.r2ts[data_out.ttt]
            self._advance_write(task, out)
        elif burst.next_offset == burst.end:
            self._fail_write(task, Asc.DATA_PHASE_ERROR, out)  # its last PDU must carry F

    def _fail_write(self, task: _WriteTask, asc: Asc, out: list[Frame]) -> None:
        self._remember_dead(task.command.itt)
        failure = CommandResult(
            ScsiStatus.CHECK_CONDITION, fixed_sense(SenseKey.ABORTED_COMMAND, asc)
        )
        self._respond(task.command, failure, transferred_plan=task.plan, out=out)
        self._finish(task, out)

    def _execute_write(self, task: _WriteTask, out: list[Frame]) -> None:
        assert self._lu is not None
        command = task.command
        edtl = command.expected_data_transfer_length
        cdb = command.cdb
        data = memoryview(task.buffer)[: task.needed]
        if edtl < task.plan.transfer_length:
            # Only the EDTL bytes the initiator sent are written (what tgt and libiscsi expect);
            # a cut inside a block can't be honoured, which libiscsi also accepts (SAM-5 §5.3).
            shortened = self._lu.shorten_data_out(cdb, edtl)
            if shortened is None:
                failure = CommandResult(
                    ScsiStatus.CHECK_CONDITION,
                    fixed_sense(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_INFORMATION_UNIT),
                )
                self._respond(command, failure, transferred_plan=task.plan, out=out)
                return
            cdb = shortened
            data = data[:edtl]
        result = self._lu.execute(cdb, data, self._nexus)
        self._respond(command, result, transferred_plan=task.plan, out=out)

    # -- responses ------------------------------------------------------------------------------

    def _respond(
        self,
        command: ScsiCommand,
        result: CommandResult,
        *,
        transferred_plan: CommandPlan | None,
        out: list[Frame],
    ) -> None:
        edtl = command.expected_data_transfer_length
        # RFC 7143 §11.4.5: residuals compare EDTL with what the command wanted to move.
        returned = result.data_length
        if transferred_plan is not None and transferred_plan.direction is DataDirection.WRITE:
            wanted = transferred_plan.transfer_length
        else:
            wanted = returned
        overflow = wanted > edtl
        underflow = wanted < edtl
        residual = abs(wanted - edtl)
        # Only GOOD carries Data-In (CHECK CONDITION answers carry sense instead); its last
        # Data-In PDU also carries the status, so no SCSI Response follows (phase collapse).
        if returned and result.status == ScsiStatus.GOOD:
            self._data_in(
                command,
                result.data,
                min(edtl, returned),
                out,
                status=int(result.status),
                overflow=overflow,
                underflow=underflow,
                residual=residual,
            )
            return
        sense = result.sense
        data = (len(sense).to_bytes(2, "big") + sense) if sense else b""
        header = encode_scsi_response(
            itt=command.itt,
            statsn=self._take_statsn(),
            expcmdsn=self._window.expcmdsn,
            maxcmdsn=self._window.maxcmdsn,
            status=int(result.status),
            residual_count=residual if (overflow or underflow) else 0,
            overflow=overflow,
            underflow=underflow,
            data_length=len(data),
        )
        out.append(Frame(header, data, len(data)))

    def _data_in(
        self,
        command: ScsiCommand,
        extents: list[Extent],
        length: int,
        out: list[Frame],
        *,
        status: int | None,
        overflow: bool = False,
        underflow: bool = False,
        residual: int = 0,
    ) -> None:
        """Data-In PDUs of at most the initiator's segment size; the last may carry status."""
        if length == 0 and status is not None:
            header = encode_scsi_response(
                itt=command.itt,
                statsn=self._take_statsn(),
                expcmdsn=self._window.expcmdsn,
                maxcmdsn=self._window.maxcmdsn,
                status=status,
                residual_count=residual if (overflow or underflow) else 0,
                overflow=overflow,
                underflow=underflow,
            )
            out.append(Frame(header))
            return
        if status is not None and length <= self._segment:
            # One PDU carrying the status, what most reads of a boot are: no cutting loop.
            whole = sum(extent.length for extent in extents) == length
            piece = extents if whole else next(_split_extents(extents, length, length))
            header = self._final_data_in(
                command,
                0,
                0,
                length,
                status,
                overflow=overflow,
                underflow=underflow,
                residual=residual,
            )
            out.append(Frame(header, piece, length))
            return
        burst = self._params.max_burst_length
        offset = 0
        for datasn, piece in enumerate(_split_extents(extents, length, self._segment)):
            size = sum(extent.length for extent in piece)
            last = offset + size >= length
            # RFC 7143 §11.7.1: F marks the end of each Data-In sequence (MaxBurstLength).
            sequence_end = last or (offset + size) % burst == 0
            if last and status is not None:
                header = self._final_data_in(
                    command,
                    datasn,
                    offset,
                    size,
                    status,
                    overflow=overflow,
                    underflow=underflow,
                    residual=residual,
                )
            else:
                header = encode_data_in(
                    itt=command.itt,
                    datasn=datasn,
                    buffer_offset=offset,
                    data_length=size,
                    expcmdsn=self._window.expcmdsn,
                    maxcmdsn=self._window.maxcmdsn,
                    statsn=self._statsn,
                    final=sequence_end,
                )
            out.append(Frame(header, piece, size))
            offset += size

    def _final_data_in(
        self,
        command: ScsiCommand,
        datasn: int,
        offset: int,
        size: int,
        status: int,
        *,
        overflow: bool,
        underflow: bool,
        residual: int,
    ) -> bytes:
        """The header of the Data-In PDU that ends ``command`` and carries its status."""
        return encode_data_in(
            itt=command.itt,
            datasn=datasn,
            buffer_offset=offset,
            data_length=size,
            expcmdsn=self._window.expcmdsn,
            maxcmdsn=self._window.maxcmdsn,
            statsn=self._take_statsn(),
            status=status,
            residual_count=residual if (overflow or underflow) else 0,
            overflow=overflow,
            underflow=underflow,
        )

    # -- other requests -------------------------------------------------------------------------

    def _nop_out(self, nop: NopOut, out: list[Frame]) -> None:
        if nop.itt == RESERVED_TAG:
            return  # an answer to our ping or an ExpStatSN update: nothing to say
        data = bytes(nop.data[: self._segment])
        header = encode_nop_in(
            itt=nop.itt,
            ttt=RESERVED_TAG,
            statsn=self._take_statsn(),
            expcmdsn=self._window.expcmdsn,
            maxcmdsn=self._window.maxcmdsn,
            lun=nop.lun,
            data_length=len(data),
        )
        out.append(Frame(header, data, len(data)))

    def _text(self, request: TextRequest, out: list[Frame]) -> None:
        if request.ttt != RESERVED_TAG and request.ttt in self._text_pending:
            remainder = self._text_pending.pop(request.ttt)
        else:
            self._text_pending.clear()
            pairs = parse_text(request.data) if request.data else []
            remainder = answer_text_request(
                pairs,
                self._initiator_name,
                self._directory,
                self._portal,
                session_type=self._session_type,
                current_target=self._target_name,
            )
        chunk, remainder = remainder[: self._segment], remainder[self._segment :]
        ttt = RESERVED_TAG
        if remainder:
            # RFC 7143 §11.11: too long for one PDU, continue when the initiator asks (C bit).
            ttt = self._allocate_ttt()
            self._text_pending[ttt] = remainder
        header = encode_text_response(
            final=not remainder,
            cont=bool(remainder),
            itt=request.itt,
            ttt=ttt,
            statsn=self._take_statsn(),
            expcmdsn=self._window.expcmdsn,
            maxcmdsn=self._window.maxcmdsn,
            lun=request.lun,
            data_length=len(chunk),
        )
        out.append(Frame(header, chunk, len(chunk)))

    def _logout(self, request: LogoutRequest, out: list[Frame]) -> None:
        if request.reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
            response = LogoutResponse.RECOVERY_NOT_SUPPORTED
        else:
            response = LogoutResponse.CLOSED
        self._abort_all()
        header = encode_logout_response(
            response=response,
            itt=request.itt,
            statsn=self._take_statsn(),
            expcmdsn=self._window.expcmdsn,
            maxcmdsn=self._window.maxcmdsn,
            time2wait=_TIME2WAIT,
            time2retain=_TIME2RETAIN,
        )
        out.append(Frame(header, close_after=response == LogoutResponse.CLOSED))

    def _task_management(self, request: TaskManagementRequest, out: list[Frame]) -> None:
        function = request.function
        close = False
        if function == TaskManagementFunction.ABORT_TASK:
            response = self._abort_task(request, out)
        elif function in (
            TaskManagementFunction.ABORT_TASK_SET,
            TaskManagementFunction.CLEAR_TASK_SET,
        ):
            self._abort_all()
            response = TaskManagementResponse.FUNCTION_COMPLETE
        elif function in (
            TaskManagementFunction.LOGICAL_UNIT_RESET,
            TaskManagementFunction.TARGET_WARM_RESET,
            TaskManagementFunction.TARGET_COLD_RESET,
        ):
            if request.lun != 0 and function == TaskManagementFunction.LOGICAL_UNIT_RESET:
                response = TaskManagementResponse.LUN_DOES_NOT_EXIST
            else:
                self._abort_all()
                if self._lu is not None:
                    self._lu.reset(
                        self._nexus, reason=_RESET_REASONS[TaskManagementFunction(function)]
                    )
                response = TaskManagementResponse.FUNCTION_COMPLETE
                close = function == TaskManagementFunction.TARGET_COLD_RESET
        elif function == TaskManagementFunction.TASK_REASSIGN:
            response = TaskManagementResponse.TASK_REASSIGNMENT_NOT_SUPPORTED
        else:
            response = TaskManagementResponse.FUNCTION_NOT_SUPPORTED
        header = encode_task_management_response(
            response=response,
            itt=request.itt,
            statsn=self._take_statsn(),
            expcmdsn=self._window.expcmdsn,
            maxcmdsn=self._window.maxcmdsn,
        )
        out.append(Frame(header, close_after=close))

    def _abort_task(
        self, request: TaskManagementRequest, out: list[Frame]
    ) -> TaskManagementResponse:
        """ABORT TASK (RFC 7143 §11.5.1 and §4.2.3.2): the referenced command never completes."""
        tag = request.referenced_task_tag
        task = self._tasks.get(tag)
        if task is not None:
            self._remember_dead(tag)
            self._finish(task, out)
            return TaskManagementResponse.FUNCTION_COMPLETE
        for waiting in self._window.waiting:
            if isinstance(waiting, ScsiCommand) and waiting.itt == tag:
                self._window.remove_waiting(waiting)
                return TaskManagementResponse.FUNCTION_COMPLETE
        # Not received yet but inside the window and older than this TMF: it must never run.
        if self._window.in_window(request.refcmdsn) and serial_lt(request.refcmdsn, request.cmdsn):
            self._window.skip(request.refcmdsn)
            return TaskManagementResponse.FUNCTION_COMPLETE
        return TaskManagementResponse.TASK_DOES_NOT_EXIST

    def _abort_all(self) -> None:
        for itt in list(self._tasks):
            self._remember_dead(itt)
        self._tasks.clear()
        self._waiting_writes.clear()
        self._active_writes = 0
        self._window.discard_waiting()


_RESET_REASONS = {
    TaskManagementFunction.LOGICAL_UNIT_RESET: ResetReason.LOGICAL_UNIT_RESET,
    TaskManagementFunction.TARGET_WARM_RESET: ResetReason.TARGET_WARM_RESET,
    TaskManagementFunction.TARGET_COLD_RESET: ResetReason.TARGET_COLD_RESET,
}


def _split_extents(extents: list[Extent], length: int, segment: int) -> Iterator[list[Extent]]:
    """Cut a read plan into PDU-sized pieces covering its first ``length`` bytes."""
    piece: list[Extent] = []
    room = segment
    remaining = length
    for extent in extents:
        position = 0
        while position < extent.length and remaining:
            take = min(extent.length - position, room, remaining)
            piece.append(_slice(extent, position, take))
            position += take
            room -= take
            remaining -= take
            if room == 0 or remaining == 0:
                yield piece
                piece = []
                room = segment
        if not remaining:
            break
    if piece:
        yield piece


def _slice(extent: Extent, start: int, length: int) -> Extent:
    if start == 0 and length == extent.length:
        return extent
    if isinstance(extent, FileExtent):
        return FileExtent(extent.fd, extent.offset + start, length)
    if isinstance(extent, ZeroExtent):
        return ZeroExtent(length)
    return BufferExtent(memoryview(extent.data)[start : start + length])
