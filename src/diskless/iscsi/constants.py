"""iSCSI protocol constants (RFC 7143 §11): opcodes, stages and every status and reason code.

Owns the numbers the PDUs carry, as IntEnums, so the codec, the login machine and the session
speak in names. No behaviour lives here.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = [
    "BHS_LENGTH",
    "MAX_DATA_SEGMENT_LENGTH",
    "RESERVED_TAG",
    "AsyncEvent",
    "LoginStage",
    "LoginStatus",
    "LogoutReason",
    "LogoutResponse",
    "Opcode",
    "RejectReason",
    "ScsiResponseCode",
    "TaskAttribute",
    "TaskManagementFunction",
    "TaskManagementResponse",
]

BHS_LENGTH: Final = 48
RESERVED_TAG: Final = 0xFFFFFFFF
# DataSegmentLength is a 24-bit field (RFC 7143 §11.2.1.5); MaxRecvDataSegmentLength tops out here.
MAX_DATA_SEGMENT_LENGTH: Final = (1 << 24) - 1


class Opcode(IntEnum):
    """BHS byte 0, bits 5..0 (RFC 7143 §11.2.1.2)."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MANAGEMENT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MANAGEMENT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


class LoginStage(IntEnum):
    """CSG/NSG values of Login PDUs (RFC 7143 §11.12.3); 2 is reserved."""

    SECURITY_NEGOTIATION = 0
    OPERATIONAL_NEGOTIATION = 1
    FULL_FEATURE_PHASE = 3


class LoginStatus(IntEnum):
    """Status-Class (high byte) and Status-Detail (low byte) of a Login Response (§11.13.5)."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302

    @property
    def status_class(self) -> int:
        return self.value >> 8

    @property
    def status_detail(self) -> int:
        return self.value & 0xFF


class ScsiResponseCode(IntEnum):
    """SCSI Response byte 2 (RFC 7143 §11.4.3)."""

    COMMAND_COMPLETED = 0x00
    TARGET_FAILURE = 0x01


class TaskAttribute(IntEnum):
    """SCSI Command ATTR bits (RFC 7143 §11.3.1 / SAM)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class TaskManagementFunction(IntEnum):
    """TMF Request function codes (RFC 7143 §11.5.1; 9-12 from RFC 7144)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8
    QUERY_TASK = 9
    QUERY_TASK_SET = 10
    I_T_NEXUS_RESET = 11
    QUERY_ASYNC_EVENT = 12


class TaskManagementResponse(IntEnum):
    """TMF Response byte 2 (RFC 7143 §11.6.1)."""

    FUNCTION_COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    TASK_REASSIGNMENT_NOT_SUPPORTED = 4
    FUNCTION_NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    FUNCTION_REJECTED = 255


class LogoutReason(IntEnum):
    """Logout Request reason code (RFC 7143 §11.14.1)."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_CONNECTION_FOR_RECOVERY = 2


class LogoutResponse(IntEnum):
    """Logout Response byte 2 (RFC 7143 §11.15.1)."""

    CLOSED = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


class RejectReason(IntEnum):
    """Reject byte 2 (RFC 7143 §11.17.1)."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    DEPRECATED_NEGOTIATION_RESET = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class AsyncEvent(IntEnum):
    """Asynchronous Message AsyncEvent codes (RFC 7143 §11.9.1)."""

    SCSI_ASYNC_EVENT = 0
    LOGOUT_REQUESTED = 1
    CONNECTION_DROP = 2
    SESSION_DROP = 3
    NEGOTIATION_REQUESTED = 4
    TASK_TERMINATION = 5
    VENDOR_SPECIFIC = 255
