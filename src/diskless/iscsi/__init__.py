"""The iSCSI target (RFC 7143): each client's copy-on-write disk, served over TCP port 3260.

Layers, bottom up; everything but the endpoint is sans-I/O (bytes in, bytes out, no clock):

* ``pdu``: the PDU codec: initiator requests in; re-exports ``constants`` (opcodes, codes),
  ``responses`` (target BHS encoders) and ``framing`` (padding, CRC32C digests).
* ``text``: ``key=value`` text segments and their value encodings.
* ``negotiation``: operational keys (RFC 7143 §13) → :class:`SessionParameters`.
* ``chap``: target-side CHAP, one-way and mutual.
* ``discovery``: the targets the portal exposes (:class:`TargetAccess`) and SendTargets.
* ``login``: the login phase of one connection as a state machine (:class:`LoginMachine`).
* ``window``: the CmdSN window of a session.
* session, connection and endpoint: full feature phase and the asyncio shell.

Errors all derive from :class:`ProtocolError`.
"""

from .chap import ChapAlgorithm, ChapAuthenticator, ChapCredentials
from .discovery import PortalInfo, TargetAccess, TargetDirectory, answer_text_request, send_targets
from .errors import (
    AuthenticationFailed,
    DigestError,
    LocalProtocolError,
    LoginRejected,
    MalformedPdu,
    MalformedText,
    NegotiationError,
    ProtocolError,
)
from .login import (
    LOGIN_MAX_DATA_SEGMENT_LENGTH,
    LoginMachine,
    LoginResult,
    LoginStep,
    SessionAdmission,
)
from .negotiation import Digest, SessionParameters, SessionType, TargetLimits
from .pdu import (
    BHS_LENGTH,
    RESERVED_TAG,
    BasicHeader,
    DataOut,
    LoginRequest,
    LogoutRequest,
    NopOut,
    Opcode,
    Request,
    ScsiCommand,
    Snack,
    TaskManagementRequest,
    TextRequest,
    decode_request,
    parse_bhs,
)
from .text import encode_text, parse_text

__all__ = [
    "BHS_LENGTH",
    "LOGIN_MAX_DATA_SEGMENT_LENGTH",
    "RESERVED_TAG",
    "AuthenticationFailed",
    "BasicHeader",
    "ChapAlgorithm",
    "ChapAuthenticator",
    "ChapCredentials",
    "DataOut",
    "Digest",
    "DigestError",
    "LocalProtocolError",
    "LoginMachine",
    "LoginRejected",
    "LoginRequest",
    "LoginResult",
    "LoginStep",
    "LogoutRequest",
    "MalformedPdu",
    "MalformedText",
    "NegotiationError",
    "NopOut",
    "Opcode",
    "PortalInfo",
    "ProtocolError",
    "Request",
    "ScsiCommand",
    "SessionAdmission",
    "SessionParameters",
    "SessionType",
    "Snack",
    "TargetAccess",
    "TargetDirectory",
    "TargetLimits",
    "TaskManagementRequest",
    "TextRequest",
    "answer_text_request",
    "decode_request",
    "encode_text",
    "parse_bhs",
    "parse_text",
    "send_targets",
]
