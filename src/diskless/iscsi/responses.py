"""Target PDU headers (RFC 7143 §11): every response the target sends, as its 48-byte BHS.

Each encoder takes the RFC's field names as keyword arguments and returns only the BHS: the caller
sends the data segment after it (READ data can go out with ``sendfile``), with padding and, when
negotiated, digests from framing.py. DataSegmentLength comes from an explicit ``data_length``.
Asking for something the wire cannot carry raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import struct

from .constants import (
    BHS_LENGTH,
    MAX_DATA_SEGMENT_LENGTH,
    RESERVED_TAG,
    Opcode,
    ScsiResponseCode,
)
from .errors import LocalProtocolError

__all__ = [
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
]

_FINAL = 0x80
_CONTINUE = 0x40  # Login and Text
_TRANSIT = 0x80  # Login
_ACKNOWLEDGE = 0x40  # Data-In
_DATA_IN_OVERFLOW = 0x04
_DATA_IN_UNDERFLOW = 0x02
_DATA_IN_STATUS = 0x01
_DATA_IN_OPCODE = int(Opcode.DATA_IN)
_BIDI_OVERFLOW = 0x10  # SCSI Response "o"
_BIDI_UNDERFLOW = 0x08  # SCSI Response "u"
_RESIDUAL_OVERFLOW = 0x04  # SCSI Response "O"
_RESIDUAL_UNDERFLOW = 0x02  # SCSI Response "U"

# The BHS as fourteen fields: opcode byte, byte 1, bytes 2 and 3, TotalAHSLength|DataSegmentLength,
# LUN/opcode-specific (8 bytes) and the seven 32-bit words at offsets 16..44.
_WORDS = struct.Struct(">BBBBIQIIIIIIII")
# Login Response: ISID (6) and TSIH (2) replace the LUN.
_LOGIN_RESPONSE = struct.Struct(">BBBBI6sHI4xIIIBB10x")
# Logout Response: Time2Wait and Time2Retain are 16-bit fields at bytes 40 and 42.
_LOGOUT_RESPONSE = struct.Struct(">BBBxIQIIIIIIHHI")
# Async Message: AsyncEvent, AsyncVCode and three 16-bit parameters at bytes 36..43.
_ASYNC_MESSAGE = struct.Struct(">BBxxIQIIIIIBBHHHI")


def _lengths(data_length: int) -> int:
    """The TotalAHSLength|DataSegmentLength word; target PDUs never carry an AHS."""
    if not 0 <= data_length <= MAX_DATA_SEGMENT_LENGTH:
        raise LocalProtocolError(f"data segment length {data_length} does not fit 24 bits")
    return data_length


def _pack_words(
    opcode: Opcode,
    flags: int,
    byte2: int = 0,
    byte3: int = 0,
    *,
    data_length: int = 0,
    lun: int = 0,
    itt: int,
    words: tuple[int, int, int, int, int, int, int],
) -> bytes:
    try:
        return _WORDS.pack(opcode, flags, byte2, byte3, _lengths(data_length), lun, itt, *words)
    except struct.error as exc:
        raise LocalProtocolError(f"{opcode.name}: field out of range ({exc})") from exc


def _residual_flags(overflow: bool, underflow: bool, over_bit: int, under_bit: int) -> int:
    if overflow and underflow:
        raise LocalProtocolError("a residual is either an overflow or an underflow")
    return (over_bit if overflow else 0) | (under_bit if underflow else 0)


def encode_scsi_response(
    *,
    itt: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    status: int,
    response: int = ScsiResponseCode.COMMAND_COMPLETED,
    expdatasn: int = 0,
    residual_count: int = 0,
    overflow: bool = False,
    underflow: bool = False,
    bidi_read_residual_count: int = 0,
    bidi_overflow: bool = False,
    bidi_underflow: bool = False,
    snack_tag: int = 0,
    data_length: int = 0,
) -> bytes:
    """SCSI Response (RFC 7143 §11.4); data = 2-byte SenseLength + sense data, if any."""
    flags = (
        _FINAL
        | _residual_flags(bidi_overflow, bidi_underflow, _BIDI_OVERFLOW, _BIDI_UNDERFLOW)
        | _residual_flags(overflow, underflow, _RESIDUAL_OVERFLOW, _RESIDUAL_UNDERFLOW)
    )
    words = (
        snack_tag,
        statsn,
        expcmdsn,
        maxcmdsn,
        expdatasn,
        bidi_read_residual_count,
        residual_count,
    )
    return _pack_words(
        Opcode.SCSI_RESPONSE,
        flags,
        response,
        status,
        data_length=data_length,
        itt=itt,
        words=words,
    )


def encode_data_in(
    *,
    itt: int,
    datasn: int,
    buffer_offset: int,
    data_length: int,
    expcmdsn: int,
    maxcmdsn: int,
    final: bool = False,
    statsn: int = 0,
    status: int | None = None,
    residual_count: int = 0,
    overflow: bool = False,
    underflow: bool = False,
    acknowledge: bool = False,
    lun: int = 0,
    ttt: int = RESERVED_TAG,
) -> bytes:
    """SCSI Data-In (RFC 7143 §11.7).

    Passing ``status`` collapses the SCSI Response into this PDU: it sets S (and F, which S
    requires), the status byte and the residual fields. Without it, StatSN is only informative;
    pass the current StatSN anyway, since iPXE copies it from every PDU it receives.
    """
    flags = _FINAL if final or status is not None else 0
    if acknowledge:
        flags |= _ACKNOWLEDGE
    if status is not None:
        flags |= _DATA_IN_STATUS | _residual_flags(
            overflow, underflow, _DATA_IN_OVERFLOW, _DATA_IN_UNDERFLOW
        )
    elif overflow or underflow or residual_count:
        raise LocalProtocolError("residuals travel only with status (S bit)")
    words = (ttt, statsn, expcmdsn, maxcmdsn, datasn, buffer_offset, residual_count)
    return _pack_words(
        Opcode.DATA_IN,
        flags,
        0,
        status or 0,
        data_length=data_length,
        lun=lun,
        itt=itt,
        words=words,
    )


def encode_good_data_in(
    itt: int, data_length: int, statsn: int, expcmdsn: int, maxcmdsn: int
) -> bytes:
    """The one Data-In PDU of a read that returns every expected byte: GOOD, no residual.

    What :func:`encode_data_in` builds with ``status=GOOD`` at DataSN 0 and offset 0, packed in
    one call: it heads most of the PDUs a boot sends.
    """
    return _WORDS.pack(
        _DATA_IN_OPCODE,
        _FINAL | _DATA_IN_STATUS,
        0,
        0,
        _lengths(data_length),
        0,
        itt,
        RESERVED_TAG,
        statsn,
        expcmdsn,
        maxcmdsn,
        0,
        0,
        0,
    )


def encode_r2t(
    *,
    lun: int,
    itt: int,
    ttt: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    r2tsn: int,
    buffer_offset: int,
    desired_data_transfer_length: int,
) -> bytes:
    """Ready To Transfer (RFC 7143 §11.8); StatSN is the next one, not consumed."""
    if ttt == RESERVED_TAG:
        raise LocalProtocolError("an R2T needs a Target Transfer Tag other than 0xffffffff")
    words = (ttt, statsn, expcmdsn, maxcmdsn, r2tsn, buffer_offset, desired_data_transfer_length)
    return _pack_words(Opcode.R2T, _FINAL, lun=lun, itt=itt, words=words)


def encode_nop_in(
    *,
    itt: int,
    ttt: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    lun: int = 0,
    data_length: int = 0,
) -> bytes:
    """NOP-In (RFC 7143 §11.19): a reply (ITT echoed, TTT reserved) or a ping (ITT reserved)."""
    words = (ttt, statsn, expcmdsn, maxcmdsn, 0, 0, 0)
    return _pack_words(
        Opcode.NOP_IN, _FINAL, data_length=data_length, lun=lun, itt=itt, words=words
    )


def encode_login_response(
    *,
    transit: bool,
    cont: bool,
    csg: int,
    nsg: int,
    isid: bytes,
    tsih: int,
    itt: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    status_class: int = 0,
    status_detail: int = 0,
    version_max: int = 0,
    version_active: int = 0,
    data_length: int = 0,
) -> bytes:
    """Login Response (RFC 7143 §11.13)."""
    if len(isid) != 6 or not (0 <= csg <= 3 and 0 <= nsg <= 3):
        raise LocalProtocolError("ISID is 6 bytes and stages are 2-bit values")
    if transit and cont:
        raise LocalProtocolError("T and C cannot both be set (RFC 7143 §11.13.1)")
    flags = (_TRANSIT if transit else 0) | (_CONTINUE if cont else 0) | (csg << 2) | nsg
    try:
        return _LOGIN_RESPONSE.pack(
            Opcode.LOGIN_RESPONSE,
            flags,
            version_max,
            version_active,
            _lengths(data_length),
            isid,
            tsih,
            itt,
            statsn,
            expcmdsn,
            maxcmdsn,
            status_class,
            status_detail,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"LOGIN_RESPONSE: field out of range ({exc})") from exc


def encode_text_response(
    *,
    final: bool,
    itt: int,
    ttt: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    cont: bool = False,
    lun: int = 0,
    data_length: int = 0,
) -> bytes:
    """Text Response (RFC 7143 §11.11); C=1 with a TTT when the answer continues."""
    if final and cont:
        raise LocalProtocolError("F and C cannot both be set (RFC 7143 §11.11.1)")
    flags = (_FINAL if final else 0) | (_CONTINUE if cont else 0)
    words = (ttt, statsn, expcmdsn, maxcmdsn, 0, 0, 0)
    return _pack_words(
        Opcode.TEXT_RESPONSE, flags, data_length=data_length, lun=lun, itt=itt, words=words
    )


def encode_logout_response(
    *,
    response: int,
    itt: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    time2wait: int = 0,
    time2retain: int = 0,
) -> bytes:
    """Logout Response (RFC 7143 §11.15)."""
    try:
        return _LOGOUT_RESPONSE.pack(
            Opcode.LOGOUT_RESPONSE,
            _FINAL,
            response,
            0,
            0,
            itt,
            0,
            statsn,
            expcmdsn,
            maxcmdsn,
            0,
            time2wait,
            time2retain,
            0,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"LOGOUT_RESPONSE: field out of range ({exc})") from exc


def encode_task_management_response(
    *, response: int, itt: int, statsn: int, expcmdsn: int, maxcmdsn: int
) -> bytes:
    """Task Management Function Response (RFC 7143 §11.6)."""
    words = (0, statsn, expcmdsn, maxcmdsn, 0, 0, 0)
    return _pack_words(Opcode.TASK_MANAGEMENT_RESPONSE, _FINAL, response, itt=itt, words=words)


def encode_reject(
    *,
    reason: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    datasn_r2tsn: int = 0,
    data_length: int = BHS_LENGTH,
) -> bytes:
    """Reject (RFC 7143 §11.17); the data segment is the rejected PDU's BHS."""
    words = (0, statsn, expcmdsn, maxcmdsn, datasn_r2tsn, 0, 0)
    return _pack_words(
        Opcode.REJECT, _FINAL, reason, data_length=data_length, itt=RESERVED_TAG, words=words
    )


def encode_async_message(
    *,
    async_event: int,
    statsn: int,
    expcmdsn: int,
    maxcmdsn: int,
    lun: int = 0,
    async_vcode: int = 0,
    parameter1: int = 0,
    parameter2: int = 0,
    parameter3: int = 0,
    data_length: int = 0,
) -> bytes:
    """Asynchronous Message (RFC 7143 §11.9); e.g. event 1 asks the initiator to log out."""
    try:
        return _ASYNC_MESSAGE.pack(
            Opcode.ASYNC_MESSAGE,
            _FINAL,
            _lengths(data_length),
            lun,
            RESERVED_TAG,
            0,
            statsn,
            expcmdsn,
            maxcmdsn,
            async_event,
            async_vcode,
            parameter1,
            parameter2,
            parameter3,
            0,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"ASYNC_MESSAGE: field out of range ({exc})") from exc
