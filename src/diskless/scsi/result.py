"""What the SCSI layer hands back to the transport: a data plan, or the outcome of a command."""

from __future__ import annotations

from dataclasses import dataclass, field

from diskless.scsi.constants import DataDirection, ScsiStatus
from diskless.scsi.sense import CheckCondition
from diskless.storage.blockdev import BufferExtent, Extent

__all__ = ["NO_DATA", "CommandPlan", "CommandResult"]


@dataclass(frozen=True, slots=True)
class CommandPlan:
    """How many bytes the CDB says will move, and which way.

    For Data-In commands ``transfer_length`` is the most the command may return (its ALLOCATION
    LENGTH or block count); the answer may be shorter, and the transport computes the residual
    from the bytes it actually sends.
    """

    direction: DataDirection
    transfer_length: int


NO_DATA = CommandPlan(DataDirection.NONE, 0)
"""The plan of every command that moves no data (shared; plans are immutable)."""


# Not frozen: one is built per command, and a frozen __init__ costs microseconds on the hot
# path; treat it as immutable all the same.
@dataclass(slots=True)
class CommandResult:
    """Status, sense data and Data-In payload of one command.

    ``sense`` is fixed-format sense data (18 bytes) with CHECK CONDITION and empty otherwise.
    ``data`` is the Data-In payload in order: for READ it is the device's read plan (so
    :class:`~diskless.storage.blockdev.FileExtent` pieces can go out with ``os.sendfile``); every
    other command returns at most one :class:`~diskless.storage.blockdev.BufferExtent`, already cut
    to the command's allocation length.
    """

    status: ScsiStatus
    sense: bytes = b""
    data: list[Extent] = field(default_factory=list)

    @property
    def data_length(self) -> int:
        """Bytes of Data-In (before the transport cuts it to the expected transfer length)."""
        return sum(extent.length for extent in self.data)

    @classmethod
    def good(cls, payload: bytes | None = None) -> CommandResult:
        """GOOD status, with ``payload`` as Data-In when given and not empty."""
        if payload:
            return cls(ScsiStatus.GOOD, b"", [BufferExtent(payload)])
        return cls(ScsiStatus.GOOD)

    @classmethod
    def check_condition(cls, error: CheckCondition) -> CommandResult:
        return cls(ScsiStatus.CHECK_CONDITION, error.sense())
