"""The TFTP packet codec: what real clients send parses, anything else is MalformedPacket."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.tftp import (
    Ack,
    Data,
    ErrorCode,
    ErrorPacket,
    MalformedPacket,
    Mode,
    Opcode,
    OptionAck,
    Request,
    encode_ack,
    encode_data,
    encode_error,
    encode_option_ack,
    encode_request,
    parse_packet,
)
from diskless.tftp.codec import MAX_REQUEST_LENGTH, pack_data_header


def test_a_curl_read_request_with_options() -> None:
    # What curl 7.88 sends for `curl tftp://host/ipxe.efi --tftp-blksize 1468`.
    datagram = b"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00timeout\x006\x00"

    packet = parse_packet(datagram)

    assert packet == Request(
        Opcode.READ_REQUEST,
        "ipxe.efi",
        Mode.OCTET,
        {"tsize": "0", "blksize": "1468", "timeout": "6"},
    )


def test_mode_and_option_names_are_case_insensitive_and_the_first_value_wins() -> None:
    datagram = b"\x00\x01a\x00NetASCII\x00BLKSIZE\x00512\x00blksize\x001024\x00"

    packet = parse_packet(datagram)

    assert isinstance(packet, Request)
    assert packet.mode is Mode.NETASCII
    assert dict(packet.options) == {"blksize": "512"}


def test_trailing_padding_after_the_options_is_tolerated() -> None:
    # Some PXE ROMs pad the request with NULs.
    packet = parse_packet(b"\x00\x01pxelinux.0\x00octet\x00tsize\x000\x00\x00\x00\x00")

    assert isinstance(packet, Request)
    assert dict(packet.options) == {"tsize": "0"}


def test_file_names_that_are_not_utf8_survive_as_surrogates() -> None:
    packet = parse_packet(b"\x00\x01caf\xe9\x00octet\x00")

    assert isinstance(packet, Request)
    assert packet.filename.encode("utf-8", "surrogateescape") == b"caf\xe9"


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        (b"\x00\x04\x12\x34", Ack(0x1234)),
        (b"\x00\x04\x00\x07\x00\x00", Ack(7)),  # padded ACK
        (b"\x00\x03\x00\x01abc", Data(1, b"abc")),
        (b"\x00\x05\x00\x08refused\x00", ErrorPacket(8, "refused")),
        (b"\x00\x05\x00\x00no terminator", ErrorPacket(0, "no terminator")),
        (b"\x00\x06blksize\x001468\x00", OptionAck({"blksize": "1468"})),
    ],
)
def test_other_packets(datagram: bytes, expected: object) -> None:
    assert parse_packet(datagram) == expected


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00",
        b"\x00\x04\x00",  # truncated ACK
        b"\x00\x03\x00",  # truncated DATA
        b"\x00\x05\x00",  # truncated ERROR
        b"\x00\x09\x00\x00",  # unknown opcode
        b"\x00\x01file",  # no terminator
        b"\x00\x01file\x00",  # no mode
        b"\x00\x01\x00octet\x00",  # empty name
        b"\x00\x01file\x00binary\x00",  # unknown mode
        b"\x00\x01file\x00oct\xffet\x00",  # mode not ASCII
        b"\x00\x01" + b"a" * MAX_REQUEST_LENGTH + b"\x00octet\x00",  # oversized
    ],
)
def test_malformed_datagrams(datagram: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_packet(datagram)


def test_encoders() -> None:
    assert encode_ack(65536 + 3) == b"\x00\x04\x00\x03"  # block numbers roll over to 0
    assert encode_data(65536, b"xy") == b"\x00\x03\x00\x00xy"
    assert encode_error(ErrorCode.FILE_NOT_FOUND, "nope") == b"\x00\x05\x00\x01nope\x00"
    assert encode_option_ack({"blksize": "1468", "tsize": "9"}) == (
        b"\x00\x06blksize\x001468\x00tsize\x009\x00"
    )
    header = bytearray(8)
    pack_data_header(header, 4, 65537)
    assert header == b"\x00\x00\x00\x00\x00\x03\x00\x01"


_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=60
)
_options = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=10),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    opcode=st.sampled_from([Opcode.READ_REQUEST, Opcode.WRITE_REQUEST]),
    name=_names,
    mode=st.sampled_from(list(Mode)),
    options=_options,
)
def test_requests_round_trip(
    opcode: Opcode, name: str, mode: Mode, options: dict[str, str]
) -> None:
    datagram = encode_request(opcode, name, mode, options)
    if len(datagram) > MAX_REQUEST_LENGTH:
        with pytest.raises(MalformedPacket):
            parse_packet(datagram)
        return

    assert parse_packet(datagram) == Request(opcode, name, mode, options)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600) | st.binary(max_size=40).map(lambda tail: b"\x00\x01" + tail))
def test_any_datagram_parses_or_is_malformed(datagram: bytes) -> None:
    try:
        packet = parse_packet(datagram)
    except MalformedPacket:
        return
    assert isinstance(packet, Request | Data | Ack | ErrorPacket | OptionAck)
