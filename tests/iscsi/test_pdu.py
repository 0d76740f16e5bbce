"""The PDU codec against the byte layouts of RFC 7143 §11.

Requests are laid out by hand with ``struct`` here (independently of the codec's own Structs) and
decoded; target PDUs are compared with golden hex written field by field from the RFC tables.
The digest vectors are RFC 3720 Appendix B.4's. A fuzz test holds the codec's one promise: any
bytes either decode or raise :class:`MalformedPdu`.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.iscsi.errors import DigestError, LocalProtocolError, MalformedPdu
from diskless.iscsi.pdu import (
    BHS_LENGTH,
    RESERVED_TAG,
    DataDigest,
    DataOut,
    LoginRequest,
    LogoutReason,
    LogoutRequest,
    NopOut,
    Opcode,
    RejectReason,
    ScsiCommand,
    Snack,
    TaskManagementRequest,
    TextRequest,
    crc32c,
    data_digest,
    decode_bare_scsi_command,
    decode_request,
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
    header_digest,
    lun_from_number,
    lun_to_number,
    pad_length,
    padded_length,
    parse_bhs,
    remaining_length,
    verify_data_digest,
    verify_header_digest,
)

LIMIT = 262144


def bhs(
    opcode: int,
    flags: int,
    *,
    byte2: int = 0,
    byte3: int = 0,
    ahs_words: int = 0,
    data_length: int = 0,
    field8: bytes = bytes(8),
    itt: int = 0,
    rest: bytes = bytes(28),
) -> bytes:
    """A BHS laid out as RFC 7143 §11.2.1 draws it."""
    assert len(field8) == 8
    assert len(rest) == 28
    raw = struct.pack(
        ">BBBBB3s8sI28s",
        opcode,
        flags,
        byte2,
        byte3,
        ahs_words,
        data_length.to_bytes(3, "big"),
        field8,
        itt,
        rest,
    )
    assert len(raw) == BHS_LENGTH
    return raw


def words(*values: int) -> bytes:
    """Bytes 20..47 as seven 32-bit words."""
    return struct.pack(">7I", *values, *([0] * (7 - len(values))))


def decode(raw: bytes, ahs: bytes = b"", data: bytes = b"") -> object:
    header = parse_bhs(raw, max_data_segment_length=LIMIT)
    return decode_request(header, ahs, data)


# --- requests -----------------------------------------------------------------------------


def test_ipxe_read10_command() -> None:
    cdb = bytes.fromhex("28000000080000000800") + bytes(6)
    rest = struct.pack(">III16s", 4096, 7, 3, cdb)
    raw = bhs(0x01, 0x80 | 0x40 | 0x01, itt=0x18AE0001, rest=rest)

    command = decode(raw)

    assert command == ScsiCommand(
        immediate=False,
        final=True,
        read=True,
        write=False,
        attr=1,
        lun=0,
        itt=0x18AE0001,
        expected_data_transfer_length=4096,
        cmdsn=7,
        expstatsn=3,
        cdb=cdb,
        bidi_read_expected_data_transfer_length=None,
        immediate_data=memoryview(b""),
    )


def test_write_with_immediate_data_extended_cdb_and_bidi_ahs() -> None:
    cdb = bytes(range(32))
    # Extended CDB AHS: AHSLength = 32 - 15 = 17, type 1, reserved byte, 16 more CDB bytes, pad 0.
    extended = struct.pack(">HBB", 17, 1, 0) + cdb[16:]
    bidi = struct.pack(">HBBI", 5, 2, 0, 8192)  # 3 + 5 = 8 bytes, no padding
    ahs = extended + bidi
    assert len(ahs) % 4 == 0
    rest = struct.pack(">III16s", 1024, 1, 1, cdb[:16])
    lun = lun_from_number(2).to_bytes(8, "big")
    raw = bhs(0x41, 0xA0, ahs_words=len(ahs) // 4, data_length=5, field8=lun, itt=9, rest=rest)

    command = decode(raw, ahs, b"hello")

    assert isinstance(command, ScsiCommand)
    assert command.immediate
    assert command.write
    assert command.final
    assert not command.read
    assert command.cdb == cdb
    assert command.bidi_read_expected_data_transfer_length == 8192
    assert bytes(command.immediate_data) == b"hello"
    assert lun_to_number(command.lun) == 2


def test_data_out() -> None:
    rest = words(0x1234, 0, 5, 0, 2, 1024)
    raw = bhs(0x05, 0x80, data_length=512, field8=bytes(8), itt=0x18AE0002, rest=rest)

    data_out = decode(raw, data=bytes(512))

    assert data_out == DataOut(
        final=True,
        lun=0,
        itt=0x18AE0002,
        ttt=0x1234,
        expstatsn=5,
        datasn=2,
        buffer_offset=1024,
        data=memoryview(bytes(512)),
    )


def test_nop_out_ping() -> None:
    raw = bhs(0x40, 0x80, data_length=4, itt=0x10, rest=words(RESERVED_TAG, 8, 9))

    nop = decode(raw, data=b"ping")

    assert nop == NopOut(
        immediate=True,
        lun=0,
        itt=0x10,
        ttt=RESERVED_TAG,
        cmdsn=8,
        expstatsn=9,
        data=memoryview(b"ping"),
    )


def test_login_request_as_ipxe_sends_it() -> None:
    text = b"InitiatorName=iqn.2010-04.org.ipxe:pc1\0"
    isid = bytes.fromhex("400027231234")
    field8 = isid + struct.pack(">H", 0)
    rest = struct.pack(">HHII16x", 0, 0, 1, 1)
    raw = bhs(0x43, 0x80 | 0x01, data_length=len(text), field8=field8, itt=0x18AE0000, rest=rest)

    login = decode(raw, data=text)

    assert login == LoginRequest(
        transit=True,
        cont=False,
        csg=0,
        nsg=1,
        version_max=0,
        version_min=0,
        isid=isid,
        tsih=0,
        itt=0x18AE0000,
        cid=0,
        cmdsn=1,
        expstatsn=1,
        data=text,
    )


def test_text_request_with_continue() -> None:
    raw = bhs(0x44, 0x40, data_length=4, itt=3, rest=words(RESERVED_TAG, 11, 12))

    text = decode(raw, data=b"a=b\0")

    assert text == TextRequest(
        immediate=True,
        final=False,
        cont=True,
        lun=0,
        itt=3,
        ttt=RESERVED_TAG,
        cmdsn=11,
        expstatsn=12,
        data=b"a=b\0",
    )


def test_logout_request() -> None:
    raw = bhs(0x46, 0x80 | 0x01, itt=4, rest=words(7 << 16, 20, 21))

    assert decode(raw) == LogoutRequest(
        immediate=True,
        reason=LogoutReason.CLOSE_CONNECTION,
        itt=4,
        cid=7,
        cmdsn=20,
        expstatsn=21,
    )


def test_task_management_request() -> None:
    lun = lun_from_number(0).to_bytes(8, "big")
    raw = bhs(0x02, 0x80 | 0x01, field8=lun, itt=5, rest=words(0x99, 30, 31, 29, 0))

    assert decode(raw) == TaskManagementRequest(
        immediate=False,
        function=1,
        lun=0,
        itt=5,
        referenced_task_tag=0x99,
        cmdsn=30,
        expstatsn=31,
        refcmdsn=29,
        expdatasn=0,
    )


def test_snack() -> None:
    raw = bhs(0x10, 0x80 | 0x01, itt=6, rest=words(0x55, 0, 40, 0, 0, 3, 2))

    assert decode(raw) == Snack(type=1, lun=0, itt=6, ttt=0x55, expstatsn=40, begrun=3, runlength=2)


# --- malformed requests -------------------------------------------------------------------


def test_target_opcode_is_refused_with_lengths_to_skip() -> None:
    raw = bhs(0x21, 0x80, ahs_words=2, data_length=10)

    with pytest.raises(MalformedPdu) as caught:
        parse_bhs(raw, max_data_segment_length=LIMIT)

    assert caught.value.reject_reason == RejectReason.COMMAND_NOT_SUPPORTED
    assert (caught.value.total_ahs_length, caught.value.data_segment_length) == (8, 10)
    assert caught.value.bhs == raw


@pytest.mark.parametrize("opcode", [0x07, 0x1C, 0x3F, 0x3E])
def test_unknown_opcodes_are_not_supported(opcode: int) -> None:
    with pytest.raises(MalformedPdu) as caught:
        parse_bhs(bhs(opcode, 0x80), max_data_segment_length=LIMIT)
    assert caught.value.reject_reason == RejectReason.COMMAND_NOT_SUPPORTED


def test_data_segment_over_our_limit() -> None:
    raw = bhs(0x05, 0x80, data_length=8193)

    with pytest.raises(MalformedPdu) as caught:
        parse_bhs(raw, max_data_segment_length=8192)

    assert caught.value.reject_reason == RejectReason.PROTOCOL_ERROR
    assert caught.value.data_segment_length == 8193


@pytest.mark.parametrize("length", [0, 47, 49])
def test_a_bhs_is_48_bytes(length: int) -> None:
    with pytest.raises(MalformedPdu) as caught:
        parse_bhs(bytes(length), max_data_segment_length=LIMIT)
    assert caught.value.data_segment_length is None  # framing lost


@pytest.mark.parametrize(
    ("raw", "ahs", "data"),
    [
        pytest.param(bhs(0x05, 0x80, data_length=4), b"", b"abc", id="short-data"),
        pytest.param(bhs(0x05, 0x80, ahs_words=1), bytes(4), b"", id="ahs-on-data-out"),
        pytest.param(bhs(0x46, 0x80, data_length=4), b"", b"abcd", id="data-on-logout"),
        pytest.param(bhs(0x46, 0x85), b"", b"", id="unknown-logout-reason"),
        pytest.param(
            bhs(0x01, 0x80, ahs_words=1), struct.pack(">HBB", 1, 9, 0), b"", id="ahs-type-9"
        ),
        pytest.param(bhs(0x01, 0x80, ahs_words=1), struct.pack(">HBB", 9, 1, 0), b"", id="ahs-len"),
        pytest.param(bhs(0x01, 0x80, ahs_words=1), struct.pack(">HBB", 0, 1, 0), b"", id="ahs-0"),
        pytest.param(
            bhs(0x01, 0x80, ahs_words=4),
            struct.pack(">HBBI", 5, 2, 0, 1) * 2,
            b"",
            id="two-bidi-ahs",
        ),
    ],
)
def test_inconsistent_pdus_are_invalid_fields(raw: bytes, ahs: bytes, data: bytes) -> None:
    header = parse_bhs(raw, max_data_segment_length=LIMIT)

    with pytest.raises(MalformedPdu) as caught:
        decode_request(header, ahs, data)

    assert caught.value.reject_reason == RejectReason.INVALID_PDU_FIELD
    assert caught.value.bhs == raw


_INITIATOR_OPCODES = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10]


@settings(max_examples=400, derandomize=True, database=None)
@given(
    st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH + 600),
    st.one_of(st.sampled_from(_INITIATOR_OPCODES), st.integers(0, 0xFF)),
    st.integers(0, 3),
    st.booleans(),
)
def test_any_bytes_decode_or_raise_malformed_pdu(
    blob: bytes, byte0: int, ahs_words: int, honest_lengths: bool
) -> None:
    # Invariant (as h11's fuzzer states it): we either decode a request or raise MalformedPdu.
    # Most draws get a real initiator opcode and a small AHS so the opcode decoders are reached.
    raw = bytearray(blob[:BHS_LENGTH])
    raw[0], raw[4] = byte0, ahs_words
    rest = blob[BHS_LENGTH:]
    try:
        header = parse_bhs(bytes(raw), max_data_segment_length=LIMIT)
        if honest_lengths:
            ahs = rest[: header.total_ahs_length]
            data = rest[len(ahs) : len(ahs) + header.data_segment_length]
        else:
            ahs, data = rest[:16], rest[16:]
        request = decode_request(header, ahs, data)
    except MalformedPdu:
        return
    assert isinstance(
        request,
        ScsiCommand
        | DataOut
        | NopOut
        | LoginRequest
        | TextRequest
        | LogoutRequest
        | TaskManagementRequest
        | Snack,
    )


@settings(max_examples=200, derandomize=True, database=None)
@given(st.binary(max_size=64), st.integers(0, 0xFFFF))
def test_random_ahs_on_a_scsi_command_decodes_or_is_invalid(ahs: bytes, cdb_seed: int) -> None:
    ahs = ahs[: len(ahs) - len(ahs) % 4]
    rest = struct.pack(">III16s", 0, 1, 1, cdb_seed.to_bytes(16, "big"))
    header = parse_bhs(
        bhs(0x01, 0x80, ahs_words=len(ahs) // 4, rest=rest), max_data_segment_length=LIMIT
    )
    reason: int | None = None
    try:
        command = decode_request(header, ahs, b"")
    except MalformedPdu as exc:
        reason = exc.reject_reason
    if reason is not None:
        assert reason == RejectReason.INVALID_PDU_FIELD
    else:
        assert isinstance(command, ScsiCommand)
        assert len(command.cdb) >= 16


@settings(max_examples=500, derandomize=True, database=None)
@given(
    st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH + 8),
    st.sampled_from([0x01, 0x41, 0x05, 0x00, 0x21]),
    st.booleans(),
    st.integers(0, 8),
)
def test_the_bare_command_shortcut_agrees_with_the_general_path(
    blob: bytes, byte0: int, bare: bool, offset: int
) -> None:
    # The receive loop decodes bare SCSI Commands straight from its buffer: whatever it accepts
    # must decode to exactly what parse_bhs + decode_request give, and it declines the rest.
    raw = bytearray(blob[:BHS_LENGTH])
    raw[0] = byte0
    if bare:
        raw[4:8] = bytes(4)
    buffer = bytes(offset) + bytes(raw)
    command = decode_bare_scsi_command(buffer, offset)
    if command is None:
        assert raw[0] & 0x3F != 0x01 or raw[4:8] != bytes(4)
        return
    assert command == decode(bytes(raw))


def test_the_bare_command_shortcut_needs_a_whole_bhs() -> None:
    cdb = bytes.fromhex("28000000080000000800") + bytes(6)
    raw = bhs(0x01, 0xC1, itt=1, rest=struct.pack(">III16s", 4096, 7, 3, cdb))
    assert decode_bare_scsi_command(raw[:47]) is None
    assert decode_bare_scsi_command(raw) == decode(raw)


@settings(max_examples=200, derandomize=True, database=None)
@given(
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
)
def test_the_good_data_in_encoder_is_the_general_one(
    itt: int, length: int, statsn: int, expcmdsn: int, maxcmdsn: int
) -> None:
    assert encode_good_data_in(itt, length, statsn, expcmdsn, maxcmdsn) == encode_data_in(
        itt=itt,
        datasn=0,
        buffer_offset=0,
        data_length=length,
        expcmdsn=expcmdsn,
        maxcmdsn=maxcmdsn,
        statsn=statsn,
        status=0,
    )


# --- target PDUs: golden bytes from the RFC 7143 §11 layouts --------------------------------


def test_scsi_response_golden() -> None:
    header = encode_scsi_response(
        itt=0x11223344,
        statsn=5,
        expcmdsn=6,
        maxcmdsn=7,
        status=0x02,
        expdatasn=1,
        residual_count=512,
        underflow=True,
        data_length=20,
    )
    assert header.hex() == (
        "21820002" "00000014" "0000000000000000" "11223344" "00000000" "00000005"
        "00000006" "00000007" "00000001" "00000000" "00000200"
    )  # fmt: skip


def test_scsi_response_bidi_overflow_flags() -> None:
    header = encode_scsi_response(
        itt=1, statsn=0, expcmdsn=0, maxcmdsn=0, status=0, bidi_overflow=True, overflow=True,
        response=1,
    )  # fmt: skip
    assert header[1] == 0x80 | 0x10 | 0x04
    assert header[2] == 1


def test_data_in_with_collapsed_status_golden() -> None:
    header = encode_data_in(
        itt=0x18AE0001,
        datasn=3,
        buffer_offset=0x3000,
        data_length=0x1000,
        expcmdsn=10,
        maxcmdsn=137,
        statsn=9,
        status=0,
        underflow=True,
        residual_count=0x200,
    )
    assert header.hex() == (
        "25830000" "00001000" "0000000000000000" "18ae0001" "ffffffff" "00000009"
        "0000000a" "00000089" "00000003" "00003000" "00000200"
    )  # fmt: skip


def test_data_in_without_status_golden() -> None:
    header = encode_data_in(
        itt=2, datasn=0, buffer_offset=0, data_length=512, expcmdsn=4, maxcmdsn=5, statsn=3
    )
    assert header.hex() == (
        "25000000" "00000200" "0000000000000000" "00000002" "ffffffff" "00000003"
        "00000004" "00000005" "00000000" "00000000" "00000000"
    )  # fmt: skip


def test_data_in_status_with_overflow_sets_final() -> None:
    header = encode_data_in(
        itt=2, datasn=0, buffer_offset=0, data_length=200, expcmdsn=4, maxcmdsn=5, status=0,
        overflow=True, residual_count=312,
    )  # fmt: skip
    assert header[1] == 0x80 | 0x04 | 0x01


def test_r2t_golden() -> None:
    header = encode_r2t(
        lun=lun_from_number(1),
        itt=0x18AE0002,
        ttt=0x10,
        statsn=9,
        expcmdsn=11,
        maxcmdsn=138,
        r2tsn=0,
        buffer_offset=0,
        desired_data_transfer_length=0x10000,
    )
    assert header.hex() == (
        "31800000" "00000000" "0001000000000000" "18ae0002" "00000010" "00000009"
        "0000000b" "0000008a" "00000000" "00000000" "00010000"
    )  # fmt: skip


def test_nop_in_reply_golden() -> None:
    header = encode_nop_in(
        itt=0x42, ttt=RESERVED_TAG, statsn=4, expcmdsn=5, maxcmdsn=6, data_length=3
    )
    assert header.hex() == (
        "20800000" "00000003" "0000000000000000" "00000042" "ffffffff" "00000004"
        "00000005" "00000006" "00000000" "00000000" "00000000"
    )  # fmt: skip


def test_login_response_golden() -> None:
    header = encode_login_response(
        transit=True,
        cont=False,
        csg=1,
        nsg=3,
        isid=bytes.fromhex("400027231234"),
        tsih=0x0102,
        itt=1,
        statsn=0x10,
        expcmdsn=0x20,
        maxcmdsn=0x9F,
        data_length=0x55,
    )
    assert header.hex() == (
        "23870000" "00000055" "400027231234" "0102" "00000001" "00000000" "00000010"
        "00000020" "0000009f" "0000" "0000" "0000000000000000"
    )  # fmt: skip


def test_login_response_failure_status_golden() -> None:
    header = encode_login_response(
        transit=False, cont=False, csg=0, nsg=0, isid=bytes(6), tsih=0, itt=7, statsn=1,
        expcmdsn=2, maxcmdsn=2, status_class=2, status_detail=1,
    )  # fmt: skip
    assert header[1] == 0
    assert header[36:38] == b"\x02\x01"


def test_text_response_golden() -> None:
    header = encode_text_response(
        final=True, itt=7, ttt=RESERVED_TAG, statsn=1, expcmdsn=2, maxcmdsn=3, data_length=0x40
    )
    assert header.hex() == (
        "24800000" "00000040" "0000000000000000" "00000007" "ffffffff" "00000001"
        "00000002" "00000003" "00000000" "00000000" "00000000"
    )  # fmt: skip
    continued = encode_text_response(
        final=False, cont=True, itt=7, ttt=5, statsn=1, expcmdsn=2, maxcmdsn=3
    )
    assert continued[1] == 0x40
    assert continued[20:24] == b"\x00\x00\x00\x05"


def test_logout_response_golden() -> None:
    header = encode_logout_response(
        response=0, itt=9, statsn=1, expcmdsn=2, maxcmdsn=3, time2wait=2, time2retain=0
    )
    assert header.hex() == (
        "26800000" "00000000" "0000000000000000" "00000009" "00000000" "00000001"
        "00000002" "00000003" "00000000" "00020000" "00000000"
    )  # fmt: skip


def test_task_management_response_golden() -> None:
    header = encode_task_management_response(response=5, itt=0x77, statsn=1, expcmdsn=2, maxcmdsn=3)
    assert header.hex() == (
        "22800500" "00000000" "0000000000000000" "00000077" "00000000" "00000001"
        "00000002" "00000003" "00000000" "00000000" "00000000"
    )  # fmt: skip


def test_reject_golden() -> None:
    header = encode_reject(reason=RejectReason.INVALID_PDU_FIELD, statsn=1, expcmdsn=2, maxcmdsn=3)
    assert header.hex() == (
        "3f800900" "00000030" "0000000000000000" "ffffffff" "00000000" "00000001"
        "00000002" "00000003" "00000000" "00000000" "00000000"
    )  # fmt: skip


def test_async_message_golden() -> None:
    header = encode_async_message(
        async_event=1, statsn=1, expcmdsn=2, maxcmdsn=3, parameter2=2, parameter3=5
    )
    assert header.hex() == (
        "32800000" "00000000" "0000000000000000" "ffffffff" "00000000" "00000001"
        "00000002" "00000003" "01000000" "00020005" "00000000"
    )  # fmt: skip


@pytest.mark.parametrize(
    "encode",
    [
        lambda: encode_r2t(
            lun=0, itt=1, ttt=RESERVED_TAG, statsn=0, expcmdsn=0, maxcmdsn=0, r2tsn=0,
            buffer_offset=0, desired_data_transfer_length=1,
        ),
        lambda: encode_nop_in(itt=1, ttt=1, statsn=0, expcmdsn=0, maxcmdsn=0, data_length=1 << 24),
        lambda: encode_scsi_response(
            itt=1, statsn=0, expcmdsn=0, maxcmdsn=0, status=0, overflow=True, underflow=True
        ),
        lambda: encode_data_in(
            itt=1, datasn=0, buffer_offset=0, data_length=0, expcmdsn=0, maxcmdsn=0,
            residual_count=4,
        ),
        lambda: encode_login_response(
            transit=True, cont=True, csg=0, nsg=1, isid=bytes(6), tsih=0, itt=0, statsn=0,
            expcmdsn=0, maxcmdsn=0,
        ),
        lambda: encode_text_response(
            final=True, cont=True, itt=0, ttt=0, statsn=0, expcmdsn=0, maxcmdsn=0
        ),
        lambda: encode_logout_response(response=0, itt=1 << 32, statsn=0, expcmdsn=0, maxcmdsn=0),
    ],
    ids=["r2t-reserved-ttt", "data-too-long", "over-and-under", "residual-without-status",
         "login-t-and-c", "text-f-and-c", "itt-too-big"],
)  # fmt: skip
def test_encoders_refuse_what_iscsi_cannot_express(encode: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode()  # type: ignore[operator]


# --- framing and digests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (bytes(32), "aa36918a"),
        (b"\xff" * 32, "43aba862"),
        (bytes(range(32)), "4e79dd46"),
        (bytes(range(31, -1, -1)), "5cdb3f11"),
        # The SCSI Read (10) command PDU of RFC 3720 Appendix B.4.
        (
            bytes.fromhex(
                "01c00000000000000000000000000000140000000000040000000014000000182800000000"
                "00000002000000000000000000"[:96]
            ),
            "563a96d9",
        ),
    ],
    ids=["zeros", "ones", "incrementing", "decrementing", "read10-pdu"],
)
def test_crc32c_vectors_of_rfc3720_b4(data: bytes, wire: str) -> None:
    assert header_digest(data).hex() == wire


def test_data_digest_covers_padding_and_streams() -> None:
    expected = header_digest(b"abcde\0\0\0")
    assert data_digest([b"abcde"]) == expected
    assert data_digest([b"ab", memoryview(b"c"), bytearray(b"de")]) == expected
    streamed = DataDigest()
    for chunk in (b"a", b"bcd", b"e"):
        streamed.update(chunk)
    assert streamed.digest() == expected
    assert crc32c(b"abc", crc32c(b"de")) != crc32c(b"abcde")  # order matters


def test_digest_verification() -> None:
    raw = bhs(0x00, 0x80)
    verify_header_digest(raw, header_digest(raw))
    with pytest.raises(DigestError):
        verify_header_digest(raw, b"\0\0\0\0")
    verify_data_digest(b"abcde\0\0\0", data_digest([b"abcde"]))
    verify_data_digest(b"abcde", data_digest([b"abcde"]))
    with pytest.raises(DigestError) as caught:
        verify_data_digest(b"abcde\0\0\1", data_digest([b"abcde"]))
    assert caught.value.reject_reason == RejectReason.DATA_DIGEST_ERROR


@pytest.mark.parametrize(("n", "pad"), [(0, 0), (1, 3), (2, 2), (3, 1), (4, 0), (513, 3)])
def test_padding(n: int, pad: int) -> None:
    assert pad_length(n) == pad
    assert padded_length(n) == n + pad


def test_remaining_length_counts_ahs_padding_and_digests() -> None:
    header = parse_bhs(bhs(0x01, 0x80, ahs_words=2, data_length=5), max_data_segment_length=LIMIT)
    assert remaining_length(header, header_digest=False, data_digest=False) == 8 + 8
    assert remaining_length(header, header_digest=True, data_digest=True) == 8 + 4 + 8 + 4
    empty = parse_bhs(bhs(0x00, 0x80), max_data_segment_length=LIMIT)
    assert remaining_length(empty, header_digest=True, data_digest=True) == 4


@pytest.mark.parametrize(
    ("number", "field"),
    [(0, 0), (1, 0x0001 << 48), (255, 0x00FF << 48), (256, 0x4100 << 48), (0x3FFF, 0x7FFF << 48)],
)
def test_lun_addressing(number: int, field: int) -> None:
    assert lun_from_number(number) == field
    assert lun_to_number(field) == number


def test_lun_beyond_single_level_is_not_a_number() -> None:
    assert lun_to_number(1) is None  # second-level bits set
    assert lun_to_number(0x0101 << 48) is None  # peripheral with a bus id
    assert lun_to_number(0xC000 << 48) is None  # extended addressing
    with pytest.raises(LocalProtocolError):
        lun_from_number(0x4000)


def test_opcodes_cover_the_rfc_table() -> None:
    assert {op.value for op in Opcode if op.value < 0x20} == {0, 1, 2, 3, 4, 5, 6, 0x10}
    assert {op.value for op in Opcode if op.value >= 0x20} == {
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3F,
    }  # fmt: skip
