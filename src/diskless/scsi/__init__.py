"""The SCSI layer: a transport-independent logical unit over a block device.

Public surface:

* :class:`LogicalUnit` -- LUN 0 of a target: ``plan(cdb)`` then ``execute(cdb, data_out, nexus)``
  per command, ``reset(nexus, reason=...)`` for task management, ``nexus_gone(nexus)`` when an
  I_T nexus ends. Pure logic over a :class:`~diskless.storage.blockdev.BlockDevice`: no sockets,
  no event loop; ``execute`` may block on the device and may run on executor threads.
* :class:`LuIdentity` (vendor, product, revision, serial, NAA designator, optional target name)
  with :func:`naa_locally_assigned`/:func:`naa_registered_extended`, and :class:`BlockLimits`.
* :class:`CommandPlan`, :class:`CommandResult`, :class:`DataDirection`, :class:`ScsiStatus`,
  :class:`SenseKey`, :class:`Asc`, :class:`ResetReason`.
* :func:`absent_lun_result` -- the whole answer to a command addressed to a LUN that does not
  exist (INQUIRY with peripheral qualifier 3, REPORT LUNS, REQUEST SENSE, else LOGICAL UNIT NOT
  SUPPORTED).

Supported commands are listed in :data:`diskless.scsi.commands.COMMANDS` (which REPORT SUPPORTED
OPERATION CODES reports); every other opcode is ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
"""

from diskless.scsi.absent import absent_lun_result
from diskless.scsi.constants import Asc, DataDirection, Opcode, ScsiStatus, SenseKey
from diskless.scsi.identity import (
    BlockLimits,
    LuIdentity,
    naa_locally_assigned,
    naa_registered_extended,
)
from diskless.scsi.lu import LogicalUnit, ResetReason
from diskless.scsi.result import CommandPlan, CommandResult

__all__ = [
    "Asc",
    "BlockLimits",
    "CommandPlan",
    "CommandResult",
    "DataDirection",
    "LogicalUnit",
    "LuIdentity",
    "Opcode",
    "ResetReason",
    "ScsiStatus",
    "SenseKey",
    "absent_lun_result",
    "naa_locally_assigned",
    "naa_registered_extended",
]
