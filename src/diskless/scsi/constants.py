"""Numbers from the SCSI standards: operation codes, status, sense keys and additional sense codes.

Names follow the standards (SPC-4 = T10/BSR INCITS 513, SBC-3 = INCITS 514, SAM-5 = INCITS 515)
so they can be looked up there: ``Opcode.SERVICE_ACTION_IN_16``, ``Asc.LBA_OUT_OF_RANGE``.
"""

from __future__ import annotations

from enum import IntEnum, unique

__all__ = [
    "Asc",
    "DataDirection",
    "ModePage",
    "Opcode",
    "ScsiStatus",
    "SenseKey",
    "ServiceAction",
    "VpdPage",
]


@unique
class DataDirection(IntEnum):
    """Which way a command's data moves, seen from the initiator's side of the wire."""

    NONE = 0
    READ = 1  # Data-In: target to initiator
    WRITE = 2  # Data-Out: initiator to target


@unique
class ScsiStatus(IntEnum):
    """SAM-5 §5.3.1 status codes."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


@unique
class SenseKey(IntEnum):
    """SPC-4 §4.5.6 table 27."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE


@unique
class Asc(IntEnum):
    """Additional sense code and qualifier, as ``ASC << 8 | ASCQ`` (SPC-4 annex D, table D.1).

    Packing both bytes into one number is what libiscsi's ``sense.ascq`` does too, so the values
    read the same in its logs.
    """

    NO_ADDITIONAL_SENSE = 0x0000
    LUN_NOT_READY_INITIALIZING_COMMAND_REQUIRED = 0x0402
    WRITE_ERROR = 0x0C00
    INFORMATION_UNIT_TOO_SHORT = 0x0E01
    INFORMATION_UNIT_TOO_LONG = 0x0E02
    INVALID_FIELD_IN_INFORMATION_UNIT = 0x0E03  # "INVALID FIELD IN COMMAND INFORMATION UNIT"
    UNRECOVERED_READ_ERROR = 0x1100
    PARAMETER_LIST_LENGTH_ERROR = 0x1A00
    MISCOMPARE_DURING_VERIFY = 0x1D00
    INVALID_COMMAND_OPERATION_CODE = 0x2000
    LBA_OUT_OF_RANGE = 0x2100
    INVALID_FIELD_IN_CDB = 0x2400
    LOGICAL_UNIT_NOT_SUPPORTED = 0x2500
    INVALID_FIELD_IN_PARAMETER_LIST = 0x2600
    WRITE_PROTECTED = 0x2700
    SOFTWARE_WRITE_PROTECTED = 0x2702
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = 0x2707
    NOT_READY_TO_READY_CHANGE = 0x2800
    POWER_ON_RESET_OR_BUS_DEVICE_RESET = 0x2900
    POWER_ON_OCCURRED = 0x2901
    SCSI_BUS_RESET_OCCURRED = 0x2902
    BUS_DEVICE_RESET_FUNCTION_OCCURRED = 0x2903
    I_T_NEXUS_LOSS_OCCURRED = 0x2907
    MODE_PARAMETERS_CHANGED = 0x2A01
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = 0x2F00
    SAVING_PARAMETERS_NOT_SUPPORTED = 0x3900
    MEDIUM_NOT_PRESENT = 0x3A00
    DATA_PHASE_ERROR = 0x4B00
    INVALID_TARGET_PORT_TRANSFER_TAG_RECEIVED = 0x4B01
    TOO_MUCH_WRITE_DATA = 0x4B02
    DATA_OFFSET_ERROR = 0x4B05
    MEDIUM_REMOVAL_PREVENTED = 0x5302

    @property
    def asc(self) -> int:
        return self.value >> 8

    @property
    def ascq(self) -> int:
        return self.value & 0xFF


@unique
class Opcode(IntEnum):
    """Operation codes of the commands this package knows (SPC-4 annex E, SBC-3 §5)."""

    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SELECT_6 = 0x15
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    WRITE_AND_VERIFY_10 = 0x2E
    VERIFY_10 = 0x2F
    PRE_FETCH_10 = 0x34
    SYNCHRONIZE_CACHE_10 = 0x35
    WRITE_SAME_10 = 0x41
    UNMAP = 0x42
    MODE_SELECT_10 = 0x55
    MODE_SENSE_10 = 0x5A
    READ_16 = 0x88
    WRITE_16 = 0x8A
    WRITE_AND_VERIFY_16 = 0x8E
    VERIFY_16 = 0x8F
    PRE_FETCH_16 = 0x90
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0
    MAINTENANCE_IN = 0xA3
    READ_12 = 0xA8
    WRITE_12 = 0xAA
    WRITE_AND_VERIFY_12 = 0xAE
    VERIFY_12 = 0xAF


@unique
class ServiceAction(IntEnum):
    """Service actions of the two service-action opcodes we implement."""

    READ_CAPACITY_16 = 0x10  # under SERVICE ACTION IN(16), SBC-3 §5.16
    GET_LBA_STATUS = 0x12  # under SERVICE ACTION IN(16), SBC-3 §5.6
    REPORT_SUPPORTED_OPERATION_CODES = 0x0C  # under MAINTENANCE IN, SPC-4 §6.35


@unique
class VpdPage(IntEnum):
    """Vital product data pages (SPC-4 §7.8, SBC-3 §6.5)."""

    SUPPORTED_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83
    BLOCK_LIMITS = 0xB0
    BLOCK_DEVICE_CHARACTERISTICS = 0xB1
    LOGICAL_BLOCK_PROVISIONING = 0xB2


@unique
class ModePage(IntEnum):
    """Mode pages (SPC-4 §7.5, SBC-3 §6.4)."""

    CACHING = 0x08
    CONTROL = 0x0A
    INFORMATIONAL_EXCEPTIONS_CONTROL = 0x1C
    ALL_PAGES = 0x3F
