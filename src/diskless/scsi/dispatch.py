"""The shape of a command handler, and helpers the handlers share.

Each supported command is a :class:`Command`: a ``plan`` function (decode and validate the CDB,
say what data moves) and a ``run`` function (do it), both raising
:class:`~diskless.scsi.sense.CheckCondition` for errors. Handlers receive the
:class:`~diskless.scsi.lu.LogicalUnit` and may use its underscore methods: that is the
package-private contract between ``lu.py`` and the ``spc.py``/``sbc.py`` handlers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from diskless.scsi.constants import Asc, DataDirection, SenseKey
from diskless.scsi.result import NO_DATA, CommandPlan, CommandResult
from diskless.scsi.sense import CheckCondition, FieldPointer

if TYPE_CHECKING:
    from diskless.scsi.lu import LogicalUnit

__all__ = [
    "Command",
    "DataOut",
    "PlanFunction",
    "RunFunction",
    "check_lba_range",
    "data_in",
    "data_out",
    "invalid_field",
    "no_data",
    "payload",
    "require_data",
]

DataOut: TypeAlias = bytes | bytearray | memoryview | None
PlanFunction: TypeAlias = Callable[["LogicalUnit", bytes], CommandPlan]
RunFunction: TypeAlias = Callable[["LogicalUnit", bytes, DataOut, Hashable], CommandResult]


@dataclass(frozen=True, slots=True)
class Command:
    """One supported command (an opcode, or an opcode and service action)."""

    name: str
    usage: bytes
    """CDB USAGE DATA for REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35.3): byte 0 is the opcode,
    byte 1 holds the service action if any, other bits set where the CDB field is used. Its
    length is the CDB length."""
    plan: PlanFunction
    run: RunFunction
    service_action: int | None = None
    needs_medium: bool = True
    """Fails with NOT READY / MEDIUM NOT PRESENT while a removable medium is ejected."""
    reports_unit_attention: bool = True
    """False for INQUIRY, REPORT LUNS and REQUEST SENSE (SPC-4 §7.5 / SAM-5 §5.14)."""
    writes: bool = False
    """Modifies the medium: a device error becomes WRITE ERROR rather than a read error."""

    @property
    def opcode(self) -> int:
        return self.usage[0]

    @property
    def cdb_length(self) -> int:
        return len(self.usage)


def invalid_field(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / INVALID FIELD IN CDB, pointing at the field."""
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, field=FieldPointer(byte, bit)
    )


def check_lba_range(unit: LogicalUnit, lba: int, blocks: int) -> None:
    """LOGICAL BLOCK ADDRESS OUT OF RANGE unless ``[lba, lba+blocks)`` lies inside the unit.

    ``lba == capacity`` with zero blocks is in range (SBC-3 §4.5; libiscsi's ZeroBlocks tests).
    """
    if lba + blocks > unit.blocks:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)


def no_data(unit: LogicalUnit, cdb: bytes) -> CommandPlan:
    """The plan of a command with nothing to validate beyond the opcode and no data."""
    return NO_DATA


@functools.lru_cache(maxsize=512)
def data_in(length: int) -> CommandPlan:
    """The plan of a Data-In command moving ``length`` bytes.

    Memoised: plans are immutable and a disk sees few distinct transfer sizes (4 KiB, 64 KiB,
    ...), so READ reuses one instead of building a dataclass per I/O.
    """
    return CommandPlan(DataDirection.READ, length) if length else NO_DATA


@functools.lru_cache(maxsize=512)
def data_out(length: int) -> CommandPlan:
    """The plan of a Data-Out command moving ``length`` bytes (memoised like :func:`data_in`)."""
    return CommandPlan(DataDirection.WRITE, length) if length else NO_DATA


def require_data(data: DataOut, length: int) -> memoryview:
    """The Data-Out buffer, which must be exactly ``length`` bytes long (the transport's duty)."""
    if data is None:
        if length == 0:
            return memoryview(b"")
        raise ValueError(f"command expects {length} bytes of Data-Out, got none")
    view = memoryview(data)
    if view.nbytes != length:
        raise ValueError(f"command expects {length} bytes of Data-Out, got {view.nbytes}")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def payload(data: bytes, allocation_length: int) -> CommandResult:
    """GOOD with ``data`` cut to the ALLOCATION LENGTH (SPC-4 §4.2.5.6: never an error)."""
    return CommandResult.good(data[:allocation_length])
