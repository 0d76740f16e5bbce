"""The logical unit: one client disk seen through SCSI, shared by every session of that client.

The transport drives it in two steps per command. :meth:`LogicalUnit.plan` decodes the CDB and says
which way data moves and how much, so the transport knows what to solicit (R2T) or expect; an
invalid CDB is answered right away. :meth:`LogicalUnit.execute` then runs the command against the
block device and returns status, sense and Data-In.

State kept here, and why:

* unit attentions per I_T nexus (SAM-5 §5.14): a nexus's first command reports POWER ON, RESET,
  OR BUS DEVICE RESET OCCURRED (29h/00h) unless ``power_on_unit_attention=False``; a reset reports
  BUS DEVICE RESET FUNCTION OCCURRED (29h/03h) to every *other* nexus; a MODE SELECT that changes
  a value reports MODE PARAMETERS CHANGED (2Ah/01h) to the others. INQUIRY, REPORT LUNS and
  REQUEST SENSE never report one; REQUEST SENSE returns it as its data and clears it.
* the medium of a removable LU (START STOP UNIT with LOEJ) and PREVENT ALLOW MEDIUM REMOVAL, which
  is per nexus and ends with the nexus or a reset;
* the mode pages (WCE, SWP), shared by all nexuses.

Precedence: :meth:`plan` knows no nexus, so CDB errors (unknown opcode, invalid field, LBA out of
range, transfer too long) are reported before a pending unit attention; within :meth:`execute`
the order is unit attention, NOT READY (no medium), then the command's own checks (write protect
among them).

Thread safety: the LU's own state changes under a lock, so ``execute`` may run on executor threads
concurrently; ordering between commands is the transport's business (the control mode page says
QUEUE ALGORITHM MODIFIER 1, unrestricted reordering of SIMPLE commands).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Hashable
from enum import StrEnum

from diskless.observe.log import get_logger
from diskless.scsi.cdb import DATA_OUT_LENGTH_FIELDS, LAYOUT_10, LAYOUT_16, BlockLayout
from diskless.scsi.commands import NACA, lookup
from diskless.scsi.constants import Asc, DataDirection, ScsiStatus, SenseKey
from diskless.scsi.dispatch import Command
from diskless.scsi.identity import BlockLimits, LuIdentity
from diskless.scsi.inquiry import InquiryData
from diskless.scsi.mode import ModePages
from diskless.scsi.result import CommandPlan, CommandResult
from diskless.scsi.sbc import PROTECT_FIELDS
from diskless.scsi.sense import CheckCondition, fixed_sense
from diskless.storage.blockdev import BlockDevice, Extent
from diskless.storage.errors import OutOfRangeError, ReadOnlyError, StorageError

__all__ = ["LogicalUnit", "ResetReason"]

_log = get_logger(__name__)

MAX_TRACKED_NEXUSES = 256
"""I_T nexuses remembered per LU; past this the oldest is forgotten (it sees a power-on UA again).
A client has a handful (iPXE's abandoned session, the OS's, maybe a second path); the bound only
protects against a transport that never calls :meth:`LogicalUnit.nexus_gone`."""

MAX_PENDING_UNIT_ATTENTIONS = 8
"""Unit attentions queued per nexus; SPC-4 lets a device drop the excess."""

_RESET_CLASS = 0x29  # ASC 29h: every kind of reset; a newer one supersedes an older one
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_VERIFY_OPCODES = frozenset({0x2F, 0xAF, 0x8F})
_PLAIN_READS: dict[int, BlockLayout] = {0x28: LAYOUT_10, 0x88: LAYOUT_16}  # READ(10), READ(16)


class ResetReason(StrEnum):
    """Why :meth:`LogicalUnit.reset` is called (the task management function, RFC 7143 §11.5.1)."""

    LOGICAL_UNIT_RESET = "logical unit reset"
    TARGET_WARM_RESET = "target warm reset"
    TARGET_COLD_RESET = "target cold reset"


class LogicalUnit:
    """SCSI logical unit 0 over a :class:`~diskless.storage.blockdev.BlockDevice`.

    ``read_only`` (or a read-only device) makes every write fail with DATA PROTECT / WRITE
    PROTECTED and sets WP in the MODE SENSE header. ``removable`` sets RMB, which lets START STOP
    UNIT eject and load the medium. The device's size is rounded down to whole logical blocks; a
    device smaller than one block is refused (:class:`ValueError`).
    """

    def __init__(
        self,
        device: BlockDevice,
        identity: LuIdentity,
        *,
        read_only: bool = False,
        removable: bool = False,
        limits: BlockLimits | None = None,
        power_on_unit_attention: bool = True,
    ) -> None:
        block_size = device.block_size
        if block_size < 512 or block_size & (block_size - 1):
            raise ValueError(f"logical block size {block_size} is not a power of two >= 512")
        blocks = device.size // block_size
        if blocks == 0:
            raise ValueError(f"device of {device.size} bytes holds no whole logical block")
        self._device = device
        self._identity = identity
        self._limits = limits if limits is not None else BlockLimits()
        self._read_only = read_only or device.read_only
        self._removable = removable
        self._blocks = blocks
        self._block_size = block_size
        self._block_shift = block_size.bit_length() - 1
        self._power_on_ua = power_on_unit_attention
        self._inquiry = InquiryData(identity, self._limits, removable=removable)
        self._mode = ModePages()
        self._lock = threading.Lock()
        # nexus -> pending unit attentions, oldest first; insertion order = age of the nexus.
        self._nexuses: dict[Hashable, list[Asc]] = {}
        self._preventing: set[Hashable] = set()
        self._loaded = True

    # -- what the command handlers read ---------------------------------------------------------

    @property
    def device(self) -> BlockDevice:
        return self._device

    @property
    def identity(self) -> LuIdentity:
        return self._identity

    @property
    def limits(self) -> BlockLimits:
        return self._limits

    @property
    def inquiry_data(self) -> InquiryData:
        return self._inquiry

    @property
    def blocks(self) -> int:
        """Capacity in logical blocks."""
        return self._blocks

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def block_shift(self) -> int:
        """log2 of the block size: ``lba << block_shift`` is a byte offset."""
        return self._block_shift

    @property
    def removable(self) -> bool:
        return self._removable

    @property
    def read_only(self) -> bool:
        """Write protected by configuration or by the device (not counting SWP)."""
        return self._read_only

    @property
    def write_protected(self) -> bool:
        """Read-only, or software write protected through the control mode page."""
        return self._read_only or self._mode.software_write_protect

    @property
    def write_cache_enabled(self) -> bool:
        """WCE of the caching mode page; when clear every write is done with FUA."""
        return self._mode.write_cache_enabled

    @property
    def medium_present(self) -> bool:
        return self._loaded

    # -- the transport's interface ---------------------------------------------------------------

    def plan(self, cdb: bytes) -> CommandPlan | CommandResult:
        """Decode ``cdb``: the data direction and byte count to expect, or the error right away.

        Only CHECK CONDITION results come back from here; the transport must still drain any
        data the initiator sends unsolicited. Never raises for any ``cdb``.
        """
        try:
            command = lookup(cdb)
            return command.plan(self, cdb)
        except CheckCondition as error:
            return CommandResult.check_condition(error)

    def plain_read(self, cdb: bytes, nexus: Hashable) -> tuple[list[Extent], int] | None:
        """The read plan and byte count of a READ(10)/READ(16) with nothing else to answer.

        The transport's shortcut for the command that is most of a boot: it takes only what the
        general path (:meth:`plan`, then :meth:`execute`) would answer GOOD with this very plan,
        from a nexus already seen and with no unit attention pending, a medium loaded, no NACA or
        protection bits, at least one block and all of them inside the disk and the transfer
        limit. ``None`` means "ask the general path", which also reports every error.
        """
        layout = _PLAIN_READS.get(cdb[0]) if cdb else None
        if layout is None or len(cdb) < layout.size or cdb[layout.size - 1] & NACA:
            return None
        pending = self._nexuses.get(nexus)
        if pending is None or pending or not self._loaded:
            return None
        flags, lba, blocks = layout.decode(cdb)
        if (
            flags & PROTECT_FIELDS
            or not blocks
            or lba + blocks > self.blocks
            or blocks > self.limits.max_transfer_blocks
        ):
            return None
        shift = self.block_shift
        length = blocks << shift
        try:
            return self.device.read_plan(lba << shift, length), length
        except (StorageError, OSError):
            return None

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview | None, nexus: Hashable
    ) -> CommandResult:
        """Run ``cdb`` for ``nexus``; ``data_out`` holds exactly ``plan(cdb).transfer_length``
        bytes for Data-Out commands (else :class:`ValueError`, a transport bug).

        Device errors become sense data (MEDIUM ERROR, or DATA PROTECT / SPACE ALLOCATION FAILED
        when the host file system is full) and are logged; anything else that escapes is a bug.
        """
        command: Command | None = None
        try:
            command = lookup(cdb)
            refusal = self._preamble(command, nexus)
            if refusal is not None:
                return refusal
            return command.run(self, cdb, data_out, nexus)
        except CheckCondition as error:
            return CommandResult.check_condition(error)
        except (StorageError, OSError) as error:
            return self._storage_failure(cdb, command, error)

    def precheck(self, cdb: bytes, nexus: Hashable) -> CommandResult | None:
        """For a Data-Out command: the answer that makes its data pointless, or None.

        A pending unit attention, an ejected medium or write protection ends the command before
        the transport solicits any data (as SBC targets do), so a read-only disk never receives
        the blocks it would refuse. A refusal here consumes the unit attention it reports.
        """
        try:
            command = lookup(cdb)
            refusal = self._preamble(command, nexus)
            if refusal is None and command.writes:
                self._check_writable()
        except CheckCondition as error:
            return CommandResult.check_condition(error)
        return refusal

    def _preamble(self, command: Command, nexus: Hashable) -> CommandResult | None:
        """Unit attention and medium checks every command goes through first (SAM-5 §5.14)."""
        if command.reports_unit_attention:
            pending = self._nexuses.get(nexus)
            if pending is None or pending:
                attention = self._take_unit_attention(nexus)
                if attention is not None:
                    return CommandResult(
                        ScsiStatus.CHECK_CONDITION,
                        fixed_sense(SenseKey.UNIT_ATTENTION, attention),
                    )
        elif nexus not in self._nexuses:
            with self._lock:
                self._known(nexus)
        if command.needs_medium and not self._loaded:
            raise CheckCondition(SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT)
        return None

    def shorten_data_out(self, cdb: bytes, length: int) -> bytes | None:
        """``cdb`` rewritten to send only the first ``length`` bytes of its Data-Out, or None.

        For an initiator whose EXPECTED DATA TRANSFER LENGTH is below what the CDB says (RFC 7143
        §11.4.5.2, residual overflow): execute the returned CDB with those ``length`` bytes and
        report the residual. Block-counted commands (WRITE, WRITE AND VERIFY, VERIFY with BYTCHK
        01b) need whole blocks; parameter lists (UNMAP, MODE SELECT) any length. None when the
        command cannot be cut that way (a partial block, WRITE SAME, VERIFY with BYTCHK 11b,
        WRITE(6) to zero blocks, which would mean 256): answer CHECK CONDITION instead, e.g.
        INVALID FIELD IN COMMAND INFORMATION UNIT (0Eh/03h), which libiscsi accepts.
        """
        plan = self.plan(cdb)
        if isinstance(plan, CommandResult) or plan.direction is not DataDirection.WRITE:
            return None
        if not 0 <= length <= plan.transfer_length:
            return None
        if length == plan.transfer_length:
            return bytes(cdb)
        field = DATA_OUT_LENGTH_FIELDS.get(cdb[0])
        if field is None:
            return None
        value = length
        if field.in_blocks:
            if length % self._block_size or (cdb[0] in _VERIFY_OPCODES and cdb[1] & 0x06 != 0x02):
                return None
            value = length >> self._block_shift
            if value == 0 and field.size == 1:
                return None
        shortened = bytearray(cdb)
        shortened[field.byte : field.byte + field.size] = value.to_bytes(field.size, "big")
        return bytes(shortened)

    def reset(self, nexus: Hashable, *, reason: ResetReason | str) -> None:
        """A LOGICAL UNIT RESET or TARGET WARM/COLD RESET arrived on ``nexus``.

        Every *other* known nexus will see BUS DEVICE RESET FUNCTION OCCURRED (29h/03h) on its
        next command; a cold reset forgets all nexuses instead (their sessions are closed, and
        whoever logs in again sees 29h/00h). Medium removal prevention ends and the mode pages
        return to their defaults; a loaded or ejected medium stays as it is. Aborting tasks is
        the transport's job.
        """
        reason = ResetReason(reason)
        with self._lock:
            self._preventing.clear()
            self._mode.reset()
            if reason is ResetReason.TARGET_COLD_RESET:
                self._nexuses.clear()
                return
            self._known(nexus)
            for other, pending in self._nexuses.items():
                if other != nexus:
                    _queue(pending, Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED)

    def nexus_gone(self, nexus: Hashable) -> None:
        """The I_T nexus ended (logout, session reinstatement, dropped connection).

        Its pending unit attentions and its medium removal prevention go with it (SPC-4 §6.15:
        prevention ends on I_T nexus loss).
        """
        with self._lock:
            self._nexuses.pop(nexus, None)
            self._preventing.discard(nexus)

    # -- state changes for the command handlers ----------------------------------------------------

    def _known(self, nexus: Hashable) -> list[Asc]:
        """The nexus's pending list, registering it (with a power-on UA) if new. Lock held."""
        pending = self._nexuses.get(nexus)
        if pending is None:
            if len(self._nexuses) >= MAX_TRACKED_NEXUSES:
                oldest = next(iter(self._nexuses))
                del self._nexuses[oldest]
                self._preventing.discard(oldest)
            pending = [Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET] if self._power_on_ua else []
            self._nexuses[nexus] = pending
        return pending

    def _take_unit_attention(self, nexus: Hashable) -> Asc | None:
        """Pop the oldest pending unit attention of ``nexus`` (registering the nexus if new)."""
        with self._lock:
            pending = self._known(nexus)
            return pending.pop(0) if pending else None

    def _announce(self, nexus: Hashable, asc: Asc) -> None:
        """Queue ``asc`` for every known nexus except ``nexus``. Lock held."""
        for other, pending in self._nexuses.items():
            if other != nexus:
                _queue(pending, asc)

    def _check_writable(self) -> None:
        if self._read_only:
            raise CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
        if self._mode.software_write_protect:
            raise CheckCondition(SenseKey.DATA_PROTECT, Asc.SOFTWARE_WRITE_PROTECTED)

    def _set_prevent(self, nexus: Hashable, prevent: bool) -> None:
        with self._lock:
            if prevent:
                self._known(nexus)
                self._preventing.add(nexus)
            else:
                self._preventing.discard(nexus)

    def _load_or_eject(self, *, load: bool) -> None:
        """START STOP UNIT with LOEJ: refused while any nexus prevents medium removal."""
        with self._lock:
            if self._preventing:
                raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.MEDIUM_REMOVAL_PREVENTED)
            self._loaded = load

    def _mode_sense(self, cdb: bytes, *, ten: bool) -> bytes:
        with self._lock:
            return self._mode.sense(
                cdb,
                ten=ten,
                blocks=self._blocks,
                block_size=self._block_size,
                write_protected=self.write_protected,
            )

    def _mode_select(
        self, params: bytes | bytearray | memoryview, nexus: Hashable, *, ten: bool
    ) -> None:
        with self._lock:
            changed = self._mode.select(
                params, ten=ten, blocks=self._blocks, block_size=self._block_size
            )
            if changed:
                self._known(nexus)
                self._announce(nexus, Asc.MODE_PARAMETERS_CHANGED)

    # -- device failures --------------------------------------------------------------------------

    def _storage_failure(
        self, cdb: bytes, command: Command | None, error: StorageError | OSError
    ) -> CommandResult:
        writes = command is not None and command.writes
        if isinstance(error, ReadOnlyError):
            key, asc = SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED
        elif isinstance(error, OutOfRangeError):
            key, asc = SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE
        elif _errno(error) in _NO_SPACE_ERRNOS:
            # SBC-3 §4.7.3.6: a thin-provisioned LU that cannot allocate reports this.
            key, asc = SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT
        elif writes:
            key, asc = SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR
        else:
            key, asc = SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR
        _log.warning(
            "scsi command failed on the device",
            device=str(self._device.path),
            cdb=bytes(cdb[:16]).hex(),
            command=command.name if command is not None else None,
            error=str(error),
            sense=f"{key.name}/{asc.name}",
        )
        return CommandResult(ScsiStatus.CHECK_CONDITION, fixed_sense(key, asc))


def _queue(pending: list[Asc], asc: Asc) -> None:
    """Add a unit attention: a reset supersedes everything pending; duplicates are dropped."""
    if asc.asc == _RESET_CLASS:
        if not any(queued.asc == _RESET_CLASS for queued in pending):
            pending[:] = [asc]
        return
    if asc not in pending and len(pending) < MAX_PENDING_UNIT_ATTENTIONS:
        pending.append(asc)


def _errno(error: BaseException) -> int | None:
    """The errno of ``error`` or of the OSError it wraps."""
    seen: BaseException | None = error
    for _ in range(8):  # exception chains are short; the bound guards against a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None
