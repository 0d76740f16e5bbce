"""The DHCP codec: round trips, RFC 3396 splitting, option overload, and malformed input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.dhcp.codec import (
    BOOTREPLY,
    MIN_MESSAGE_SIZE,
    DhcpFormatError,
    DhcpMessage,
    MessageType,
    Option,
    encode_message,
    parse_message,
)

MAC = bytes.fromhex("525400180010")


def _reply(**fields: object) -> DhcpMessage:
    return DhcpMessage(op=BOOTREPLY, xid=7, chaddr=MAC, **fields)  # type: ignore[arg-type]


def test_round_trip_keeps_header_and_options_in_order() -> None:
    options = [(Option.MESSAGE_TYPE, b"\x02"), (Option.SUBNET_MASK, bytes((255, 255, 255, 0)))]
    data = encode_message(_reply(yiaddr=bytes((198, 18, 0, 10)), file=b"undionly.kpxe"), options)
    assert len(data) == MIN_MESSAGE_SIZE
    parsed = parse_message(data)
    assert parsed.message_type is MessageType.OFFER
    assert parsed.yiaddr == bytes((198, 18, 0, 10))
    assert parsed.file == b"undionly.kpxe"
    assert list(parsed.options) == [Option.MESSAGE_TYPE, Option.SUBNET_MASK]
    assert parsed.chaddr == MAC


def test_long_options_are_split_and_concatenated_back() -> None:
    long_value = bytes(range(256)) * 2  # 512 bytes: three instances on the wire
    data = encode_message(_reply(), [(Option.ROOT_PATH, long_value)], max_size=1500)
    assert parse_message(data).options[Option.ROOT_PATH] == long_value


def test_options_overflow_into_file_and_sname_with_overload() -> None:
    options = [(Option.MESSAGE_TYPE, b"\x05")] + [(200 + n, bytes(60)) for n in range(3)]
    data = encode_message(_reply(), options, max_size=300)
    assert len(data) == 300
    assert data[236 + 4 : 236 + 7] == bytes((Option.OVERLOAD, 1, 3))
    parsed = parse_message(data)
    assert {code: len(value) for code, value in parsed.options.items()} == {
        Option.MESSAGE_TYPE: 1,
        **{200 + n: 60 for n in range(3)},
    }
    assert parsed.file == b""
    assert parsed.sname == b""


def test_options_that_cannot_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        encode_message(_reply(file=b"x", sname=b"y"), [(200, bytes(250)), (201, bytes(250))])


def test_overload_inside_overloaded_fields_is_ignored() -> None:
    # The file field itself claims overload of sname, which holds garbage: no loop, no error.
    file_field = bytes((Option.OVERLOAD, 1, 2, Option.HOSTNAME, 2)) + b"pc" + b"\xff"
    header = bytearray(encode_message(_reply(), [(Option.OVERLOAD, b"\x01")]))
    header[108 : 108 + len(file_field)] = file_field
    parsed = parse_message(bytes(header))
    assert parsed.options[Option.HOSTNAME] == b"pc"
    assert Option.OVERLOAD not in parsed.options


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda data: data[:200], "shorter than a DHCP header"),
        (lambda data: data + bytes(5000), "larger than any DHCP message"),
        (lambda data: b"\x05" + data[1:], "neither BOOTREQUEST"),
        (lambda data: data[:2] + b"\x20" + data[3:], "hardware address length"),
        (lambda data: data[:236] + b"\x00\x00\x00\x00" + data[240:], "magic cookie"),
        (lambda data: data[:240] + bytes((Option.HOSTNAME, 40, 65)), "runs past"),
        (lambda data: data[:240] + bytes((Option.HOSTNAME,)), "truncated"),
    ],
)
def test_malformed_messages_raise_the_codec_error(mutate: object, reason: str) -> None:
    data = encode_message(_reply(), [(Option.MESSAGE_TYPE, b"\x01")])
    with pytest.raises(DhcpFormatError, match=reason):
        parse_message(mutate(data))  # type: ignore[operator]


@settings(max_examples=600, deadline=None)
@given(st.binary(min_size=0, max_size=700))
def test_arbitrary_bytes_parse_or_raise_only_the_codec_error(data: bytes) -> None:
    with contextlib.suppress(DhcpFormatError):
        parse_message(data)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=240, max_size=240),
    st.lists(
        st.tuples(
            st.integers(1, 254).filter(lambda code: code != Option.OVERLOAD),
            st.binary(max_size=300),
        ),
        max_size=8,
    ),
    st.booleans(),
)
def test_valid_prefix_with_arbitrary_options(
    header: bytes, options: list[tuple[int, bytes]], truncate: bool
) -> None:
    base = bytearray(header)
    base[0], base[2] = 1, 6
    base[236:240] = b"\x63\x82\x53\x63"
    body = b"".join(bytes((code, min(len(value), 255))) + value[:255] for code, value in options)
    if truncate:
        with pytest.raises(DhcpFormatError):
            parse_message(bytes(base) + body + bytes((Option.HOSTNAME, 9)))
        return
    parsed = parse_message(bytes(base) + body)
    for code, value in options:
        assert value[:255] in parsed.options[code]
