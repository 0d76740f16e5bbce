"""iSCSI PDU codec (RFC 7143 §11): initiator PDUs in, and the whole codec surface re-exported.

Owns the 48-byte Basic Header Segment as the initiator sends it, the request PDUs of every
initiator opcode and the Additional Header Segments of the SCSI Command. Pure functions over
bytes: no sockets, no clocks; decoding raises only :class:`MalformedPdu`. The target side lives
next door and is re-exported here, so ``diskless.iscsi.pdu`` is the one import for the codec:
constants.py (opcodes and codes), responses.py (target BHS encoders) and framing.py (padding,
CRC32C digests).

All integers are big-endian; field names follow the RFC (``statsn``, ``expcmdsn``, ``datasn``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .constants import (
    BHS_LENGTH,
    MAX_DATA_SEGMENT_LENGTH,
    RESERVED_TAG,
    AsyncEvent,
    LoginStage,
    LoginStatus,
    LogoutReason,
    LogoutResponse,
    Opcode,
    RejectReason,
    ScsiResponseCode,
    TaskAttribute,
    TaskManagementFunction,
    TaskManagementResponse,
)
from .errors import LocalProtocolError, MalformedPdu
from .framing import (
    DIGEST_LENGTH,
    DataDigest,
    crc32c,
    data_digest,
    header_digest,
    pad_length,
    padded_length,
    verify_data_digest,
    verify_header_digest,
)
from .responses import (
    encode_async_message,
    encode_data_in,
    encode_good_data_in,
    encode_login_response,
    encode_logout_response,
    encode_nop_in,
    encode_r2t,
    encode_reject,
    encode_scsi_response,
    encode_task_management_response,
    encode_text_response,
)

__all__ = [
    "BHS_LENGTH",
    "DIGEST_LENGTH",
    "MAX_DATA_SEGMENT_LENGTH",
    "RESERVED_TAG",
    "AsyncEvent",
    "BasicHeader",
    "DataDigest",
    "DataOut",
    "LoginRequest",
    "LoginStage",
    "LoginStatus",
    "LogoutReason",
    "LogoutRequest",
    "LogoutResponse",
    "NopOut",
    "Opcode",
    "RejectReason",
    "Request",
    "ScsiCommand",
    "ScsiResponseCode",
    "Snack",
    "TaskAttribute",
    "TaskManagementFunction",
    "TaskManagementRequest",
    "TaskManagementResponse",
    "TextRequest",
    "crc32c",
    "data_digest",
    "decode_bare_scsi_command",
    "decode_request",
    "encode_async_message",
    "encode_data_in",
    "encode_good_data_in",
    "encode_login_response",
    "encode_logout_response",
    "encode_nop_in",
    "encode_r2t",
    "encode_reject",
    "encode_scsi_response",
    "encode_task_management_response",
    "encode_text_response",
    "header_digest",
    "lun_from_number",
    "lun_to_number",
    "pad_length",
    "padded_length",
    "parse_bhs",
    "remaining_length",
    "verify_data_digest",
    "verify_header_digest",
]

# Every AHS starts with AHSLength (2), AHSType (1) and one type-specific byte (RFC 7143 §11.2.2).
_AHS_HEADER = 3

_INITIATOR_OPCODES: Final[dict[int, Opcode]] = {
    opcode.value: opcode
    for opcode in (
        Opcode.NOP_OUT,
        Opcode.SCSI_COMMAND,
        Opcode.TASK_MANAGEMENT_REQUEST,
        Opcode.LOGIN_REQUEST,
        Opcode.TEXT_REQUEST,
        Opcode.DATA_OUT,
        Opcode.LOGOUT_REQUEST,
        Opcode.SNACK,
    )
}
"""Initiator opcodes by value: a dict lookup, where ``Opcode(code)`` costs ~0.5 µs a PDU."""

# Byte 1 flags.
_FINAL = 0x80
_IMMEDIATE = 0x40  # byte 0
_OPCODE_MASK = 0x3F
_READ = 0x40
_WRITE = 0x20
_ATTR_MASK = 0x07
_SCSI_COMMAND_CODE = int(Opcode.SCSI_COMMAND)
_CONTINUE = 0x40  # Login and Text
_TRANSIT = 0x80  # Login
_FUNCTION_MASK = 0x7F  # TMF function, Logout reason
_SNACK_TYPE_MASK = 0x0F

# AHS types (RFC 7143 §11.2.2.3-4).
_AHS_EXTENDED_CDB = 1
_AHS_BIDI_READ_LENGTH = 2
_BIDI_AHS_LENGTH = 5  # reserved byte + 4-byte Bidirectional Read Expected Data Transfer Length

# The BHS as fourteen fields: opcode byte, byte 1, bytes 2 and 3, TotalAHSLength|DataSegmentLength,
# LUN/opcode-specific (8 bytes) and the seven 32-bit words at offsets 16..44.
_WORDS = struct.Struct(">BBBBIQIIIIIIII")
# SCSI Command: the 16-byte CDB occupies bytes 32..47.
_SCSI_COMMAND = struct.Struct(">BBxxIQIIII16s")
# Login Request: ISID (6) and TSIH (2) replace the LUN; CID sits at bytes 20..21.
_LOGIN_REQUEST = struct.Struct(">BBBBI6sHIHxxII16x")
_AHS_PREFIX = struct.Struct(">HB")
_U32 = struct.Struct(">I")


# ---------------------------------------------------------------------------------------------
# Basic Header Segment


# Not frozen: a frozen dataclass's __init__ costs ~3 µs more, paid on every PDU of the data
# path (measured); treat instances as immutable all the same.
@dataclass(slots=True)
class BasicHeader:
    """The fields every BHS shares (RFC 7143 §11.2.1), plus the raw bytes for the rest."""

    opcode: Opcode
    immediate: bool
    final: bool
    flags: int  # byte 1 whole; its low bits are opcode-specific
    total_ahs_length: int  # in bytes (the wire field counts 4-byte words)
    data_segment_length: int  # in bytes, without padding or digest
    lun: int  # bytes 8..15 as a 64-bit integer (opcode-specific for some PDUs)
    itt: int
    raw: bytes  # all 48 bytes, for the opcode-specific fields and for Reject data


def parse_bhs(bhs: bytes | bytearray | memoryview, *, max_data_segment_length: int) -> BasicHeader:
    """Read the common fields of an initiator's BHS.

    ``max_data_segment_length`` is what we declared as MaxRecvDataSegmentLength (8192 during
    login). Raises :class:`MalformedPdu` with the PDU's lengths set, so the caller may skip the
    rest of the PDU and send a Reject, for a target or unknown opcode (reason 0x05) or a data
    segment longer than allowed (reason 0x04). A buffer that is not 48 bytes has no lengths.
    """
    if len(bhs) != BHS_LENGTH:
        raise MalformedPdu(f"a BHS is {BHS_LENGTH} bytes, got {len(bhs)}")
    raw = bytes(bhs)
    byte0, flags, _, _, lengths, lun, itt, *_ = _WORDS.unpack(raw)
    total_ahs_length = (lengths >> 24) * 4
    data_segment_length = lengths & MAX_DATA_SEGMENT_LENGTH
    code = byte0 & _OPCODE_MASK
    opcode = _INITIATOR_OPCODES.get(code)
    if opcode is None:
        raise MalformedPdu(
            f"opcode {code:#04x} is not an initiator opcode",
            reject_reason=RejectReason.COMMAND_NOT_SUPPORTED,
            bhs=raw,
            total_ahs_length=total_ahs_length,
            data_segment_length=data_segment_length,
        )
    if data_segment_length > max_data_segment_length:
        # RFC 7143 §13.12: the sender must respect the receiver's MaxRecvDataSegmentLength.
        raise MalformedPdu(
            f"data segment of {data_segment_length} bytes exceeds {max_data_segment_length}",
            bhs=raw,
            total_ahs_length=total_ahs_length,
            data_segment_length=data_segment_length,
        )
    return BasicHeader(
        opcode=opcode,
        immediate=bool(byte0 & _IMMEDIATE),
        final=bool(flags & _FINAL),
        flags=flags,
        total_ahs_length=total_ahs_length,
        data_segment_length=data_segment_length,
        lun=lun,
        itt=itt,
        raw=raw,
    )


# ---------------------------------------------------------------------------------------------
# Initiator requests


@dataclass(slots=True)
class ScsiCommand:
    """SCSI Command (RFC 7143 §11.3)."""

    immediate: bool
    final: bool
    read: bool
    write: bool
    attr: int  # TaskAttribute value; kept raw so the SCSI layer can refuse unknown ones
    lun: int
    itt: int
    expected_data_transfer_length: int
    cmdsn: int
    expstatsn: int
    cdb: bytes  # 16 bytes, plus the Extended CDB AHS when present
    bidi_read_expected_data_transfer_length: int | None
    immediate_data: memoryview


@dataclass(slots=True)
class DataOut:
    """SCSI Data-Out (RFC 7143 §11.7)."""

    final: bool
    lun: int
    itt: int
    ttt: int
    expstatsn: int
    datasn: int
    buffer_offset: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class NopOut:
    """NOP-Out (RFC 7143 §11.18); ``itt == RESERVED_TAG`` means no reply is wanted."""

    immediate: bool
    lun: int
    itt: int
    ttt: int
    cmdsn: int
    expstatsn: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """Login Request (RFC 7143 §11.12); stages are kept raw for the login machine to judge."""

    transit: bool
    cont: bool
    csg: int
    nsg: int
    version_max: int
    version_min: int
    isid: bytes
    tsih: int
    itt: int
    cid: int
    cmdsn: int
    expstatsn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TextRequest:
    """Text Request (RFC 7143 §11.10)."""

    immediate: bool
    final: bool
    cont: bool
    lun: int
    itt: int
    ttt: int
    cmdsn: int
    expstatsn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """Logout Request (RFC 7143 §11.14)."""

    immediate: bool
    reason: LogoutReason
    itt: int
    cid: int
    cmdsn: int
    expstatsn: int


@dataclass(frozen=True, slots=True)
class TaskManagementRequest:
    """Task Management Function Request (RFC 7143 §11.5); unknown functions get response 5."""

    immediate: bool
    function: int
    lun: int
    itt: int
    referenced_task_tag: int
    cmdsn: int
    expstatsn: int
    refcmdsn: int
    expdatasn: int


@dataclass(frozen=True, slots=True)
class Snack:
    """SNACK Request (RFC 7143 §11.16); only meaningful at ErrorRecoveryLevel > 0."""

    type: int
    lun: int
    itt: int
    ttt: int  # Target Transfer Tag or SNACK Tag
    expstatsn: int
    begrun: int
    runlength: int


Request = (
    ScsiCommand
    | DataOut
    | NopOut
    | LoginRequest
    | TextRequest
    | LogoutRequest
    | TaskManagementRequest
    | Snack
)


def decode_request(
    header: BasicHeader, ahs: bytes | memoryview, data: bytes | memoryview
) -> Request:
    """Decode a whole initiator PDU: its parsed header, its AHS and its unpadded data segment.

    Raises :class:`MalformedPdu` (reason 0x09, invalid PDU field) when the pieces disagree with
    the header or an opcode-specific field is invalid.
    """
    if len(ahs) != header.total_ahs_length or len(data) != header.data_segment_length:
        raise _invalid(header, "AHS or data segment does not match the header's lengths")
    if header.total_ahs_length and header.opcode is not Opcode.SCSI_COMMAND:
        raise _invalid(header, f"{header.opcode.name} carries no AHS")
    if header.data_segment_length and header.opcode in _NO_DATA_OPCODES:
        raise _invalid(header, f"{header.opcode.name} carries no data segment")
    return _DECODERS[header.opcode](header, memoryview(ahs), memoryview(data))


_NO_DATA_OPCODES: Final = frozenset(
    {Opcode.TASK_MANAGEMENT_REQUEST, Opcode.LOGOUT_REQUEST, Opcode.SNACK}
)


def _invalid(header: BasicHeader, reason: str) -> MalformedPdu:
    return MalformedPdu(reason, reject_reason=RejectReason.INVALID_PDU_FIELD, bhs=header.raw)


def _decode_scsi_command(header: BasicHeader, ahs: memoryview, data: memoryview) -> ScsiCommand:
    _, flags, _, lun, itt, edtl, cmdsn, expstatsn, cdb = _SCSI_COMMAND.unpack(header.raw)
    extended_cdb = b""
    bidi_length: int | None = None
    offset = 0
    while offset < len(ahs):
        if len(ahs) - offset < _AHS_HEADER + 1:
            raise _invalid(header, "truncated AHS")
        length, kind = _AHS_PREFIX.unpack_from(ahs, offset)
        body = ahs[offset + _AHS_HEADER : offset + _AHS_HEADER + length]
        if length == 0 or len(body) != length:
            raise _invalid(header, f"AHS length {length} does not fit")
        if kind == _AHS_EXTENDED_CDB and not extended_cdb:
            extended_cdb = bytes(body[1:])  # RFC 7143 §11.2.2.3: AHSLength = CDB length - 15
        elif kind == _AHS_BIDI_READ_LENGTH and bidi_length is None and length == _BIDI_AHS_LENGTH:
            (bidi_length,) = _U32.unpack_from(body, 1)
        else:
            raise _invalid(header, f"unexpected AHS type {kind} of length {length}")
        offset += padded_length(_AHS_HEADER + length)
    return ScsiCommand(
        immediate=header.immediate,
        final=header.final,
        read=bool(flags & _READ),
        write=bool(flags & _WRITE),
        attr=flags & _ATTR_MASK,
        lun=lun,
        itt=itt,
        expected_data_transfer_length=edtl,
        cmdsn=cmdsn,
        expstatsn=expstatsn,
        cdb=cdb + extended_cdb,
        bidi_read_expected_data_transfer_length=bidi_length,
        immediate_data=data,
    )


_NO_DATA: Final = memoryview(b"")


def decode_bare_scsi_command(
    buffer: bytes | bytearray | memoryview, offset: int = 0
) -> ScsiCommand | None:
    """The SCSI Command whose BHS starts at ``offset``, if it is a bare one; else ``None``.

    A bare command has no AHS and no data segment: every READ, most of a boot. It is decoded in
    one unpack straight from the receive buffer, where :func:`parse_bhs` then
    :func:`decode_request` would unpack it twice; ``None`` (any other PDU, or fewer than 48
    bytes) means "take the general path", which also judges every error.
    """
    # The opcode byte first: a Data-Out (every write's data) is turned away without an unpack.
    if len(buffer) - offset < BHS_LENGTH or buffer[offset] & _OPCODE_MASK != _SCSI_COMMAND_CODE:
        return None
    byte0, flags, lengths, lun, itt, edtl, cmdsn, expstatsn, cdb = _SCSI_COMMAND.unpack_from(
        buffer, offset
    )
    if lengths:
        return None
    return ScsiCommand(
        bool(byte0 & _IMMEDIATE),
        bool(flags & _FINAL),
        bool(flags & _READ),
        bool(flags & _WRITE),
        flags & _ATTR_MASK,
        lun,
        itt,
        edtl,
        cmdsn,
        expstatsn,
        cdb,
        None,
        _NO_DATA,
    )


def _decode_data_out(header: BasicHeader, _ahs: memoryview, data: memoryview) -> DataOut:
    *_, ttt, _w24, expstatsn, _w32, datasn, offset, _w44 = _WORDS.unpack(header.raw)
    return DataOut(
        final=header.final,
        lun=header.lun,
        itt=header.itt,
        ttt=ttt,
        expstatsn=expstatsn,
        datasn=datasn,
        buffer_offset=offset,
        data=data,
    )


def _decode_nop_out(header: BasicHeader, _ahs: memoryview, data: memoryview) -> NopOut:
    *_, ttt, cmdsn, expstatsn, _w32, _w36, _w40, _w44 = _WORDS.unpack(header.raw)
    return NopOut(
        immediate=header.immediate,
        lun=header.lun,
        itt=header.itt,
        ttt=ttt,
        cmdsn=cmdsn,
        expstatsn=expstatsn,
        data=data,
    )


def _decode_login(header: BasicHeader, _ahs: memoryview, data: memoryview) -> LoginRequest:
    _, flags, vmax, vmin, _, isid, tsih, itt, cid, cmdsn, expstatsn = _LOGIN_REQUEST.unpack(
        header.raw
    )
    return LoginRequest(
        transit=bool(flags & _TRANSIT),
        cont=bool(flags & _CONTINUE),
        csg=(flags >> 2) & 0x03,
        nsg=flags & 0x03,
        version_max=vmax,
        version_min=vmin,
        isid=isid,
        tsih=tsih,
        itt=itt,
        cid=cid,
        cmdsn=cmdsn,
        expstatsn=expstatsn,
        data=bytes(data),
    )


def _decode_text(header: BasicHeader, _ahs: memoryview, data: memoryview) -> TextRequest:
    *_, ttt, cmdsn, expstatsn, _w32, _w36, _w40, _w44 = _WORDS.unpack(header.raw)
    return TextRequest(
        immediate=header.immediate,
        final=header.final,
        cont=bool(header.flags & _CONTINUE),
        lun=header.lun,
        itt=header.itt,
        ttt=ttt,
        cmdsn=cmdsn,
        expstatsn=expstatsn,
        data=bytes(data),
    )


def _decode_logout(header: BasicHeader, _ahs: memoryview, _data: memoryview) -> LogoutRequest:
    *_, cid_word, cmdsn, expstatsn, _w32, _w36, _w40, _w44 = _WORDS.unpack(header.raw)
    code = header.flags & _FUNCTION_MASK
    if code not in LogoutReason._value2member_map_:
        raise _invalid(header, f"unknown logout reason {code}")
    return LogoutRequest(
        immediate=header.immediate,
        reason=LogoutReason(code),
        itt=header.itt,
        cid=cid_word >> 16,
        cmdsn=cmdsn,
        expstatsn=expstatsn,
    )


def _decode_task_management(
    header: BasicHeader, _ahs: memoryview, _data: memoryview
) -> TaskManagementRequest:
    *_, rtt, cmdsn, expstatsn, refcmdsn, expdatasn, _w40, _w44 = _WORDS.unpack(header.raw)
    return TaskManagementRequest(
        immediate=header.immediate,
        function=header.flags & _FUNCTION_MASK,
        lun=header.lun,
        itt=header.itt,
        referenced_task_tag=rtt,
        cmdsn=cmdsn,
        expstatsn=expstatsn,
        refcmdsn=refcmdsn,
        expdatasn=expdatasn,
    )


def _decode_snack(header: BasicHeader, _ahs: memoryview, _data: memoryview) -> Snack:
    *_, ttt, _w24, expstatsn, _w32, _w36, begrun, runlength = _WORDS.unpack(header.raw)
    return Snack(
        type=header.flags & _SNACK_TYPE_MASK,
        lun=header.lun,
        itt=header.itt,
        ttt=ttt,
        expstatsn=expstatsn,
        begrun=begrun,
        runlength=runlength,
    )


_Decoder = Callable[[BasicHeader, memoryview, memoryview], Request]
_DECODERS: Final[dict[Opcode, _Decoder]] = {
    Opcode.NOP_OUT: _decode_nop_out,
    Opcode.SCSI_COMMAND: _decode_scsi_command,
    Opcode.TASK_MANAGEMENT_REQUEST: _decode_task_management,
    Opcode.LOGIN_REQUEST: _decode_login,
    Opcode.TEXT_REQUEST: _decode_text,
    Opcode.DATA_OUT: _decode_data_out,
    Opcode.LOGOUT_REQUEST: _decode_logout,
    Opcode.SNACK: _decode_snack,
}


# ---------------------------------------------------------------------------------------------
# Framing


def remaining_length(header: BasicHeader, *, header_digest: bool, data_digest: bool) -> int:
    """Bytes of the PDU that follow its BHS on the wire: AHS, digests, padded data."""
    length = header.total_ahs_length + padded_length(header.data_segment_length)
    if header_digest:
        length += DIGEST_LENGTH
    if data_digest and header.data_segment_length:
        length += DIGEST_LENGTH  # RFC 7143 §11.1: no data digest without a data segment
    return length


# ---------------------------------------------------------------------------------------------
# LUN field (SAM-5 §4.7: single-level peripheral or flat-space addressing)

_PERIPHERAL = 0b00
_FLAT_SPACE = 0b01
_MAX_FLAT_LUN = 0x3FFF


def lun_from_number(number: int) -> int:
    """The 8-byte LUN field for logical unit ``number`` (< 256 peripheral, else flat space)."""
    if not 0 <= number <= _MAX_FLAT_LUN:
        raise LocalProtocolError(f"LUN {number} needs more than single-level addressing")
    if number < 256:
        return number << 48
    return ((_FLAT_SPACE << 14) | number) << 48


def lun_to_number(lun: int) -> int | None:
    """The logical unit number in a LUN field, or ``None`` if it is not single-level."""
    first_level, rest = lun >> 48, lun & ((1 << 48) - 1)
    method = first_level >> 14
    if rest or method not in (_PERIPHERAL, _FLAT_SPACE):
        return None
    if method == _PERIPHERAL:
        bus = (first_level >> 8) & 0x3F
        return first_level & 0xFF if bus == 0 else None
    return first_level & _MAX_FLAT_LUN
