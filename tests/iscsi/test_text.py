"""Text segments: strict ``key=value\\0`` parsing, encoding and value encodings (RFC 7143 §6.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.iscsi.errors import LocalProtocolError, MalformedText
from diskless.iscsi.text import (
    MAX_KEY_LENGTH,
    MAX_LARGE_VALUE_LENGTH,
    MAX_VALUE_LENGTH,
    decode_binary,
    encode_base64,
    encode_hex,
    encode_text,
    parse_number,
    parse_text,
    split_list,
)

IPXE_FIRST_PDU = (
    b"InitiatorName=iqn.2010-04.org.ipxe:pc1\0"
    b"TargetName=iqn.2025-01.org.diskless:pc1\0"
    b"SessionType=Normal\0"
    b"AuthMethod=None\0"
)


def test_parses_what_ipxe_sends_in_order() -> None:
    assert parse_text(IPXE_FIRST_PDU) == [
        ("InitiatorName", "iqn.2010-04.org.ipxe:pc1"),
        ("TargetName", "iqn.2025-01.org.diskless:pc1"),
        ("SessionType", "Normal"),
        ("AuthMethod", "None"),
    ]


def test_empty_segment_has_no_pairs() -> None:
    assert parse_text(b"") == []


def test_values_may_be_empty_contain_equals_and_utf8() -> None:
    text = "SendTargets=\0X-vendor.note=a=b\0TargetAlias=Disque de Zoé\0".encode()
    assert parse_text(text) == [
        ("SendTargets", ""),
        ("X-vendor.note", "a=b"),
        ("TargetAlias", "Disque de Zoé"),
    ]


def test_duplicates_are_kept_for_the_caller_to_judge() -> None:
    assert parse_text(b"A=1\0A=2\0") == [("A", "1"), ("A", "2")]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"InitiatorName=x", id="no-terminator"),
        pytest.param(b"InitiatorName\0", id="no-equals"),
        pytest.param(b"=value\0", id="empty-key"),
        pytest.param(b"A=1\0\0", id="empty-pair"),
        pytest.param(b"K" * (MAX_KEY_LENGTH + 1) + b"=1\0", id="long-key"),
        pytest.param(b"Key with space=1\0", id="bad-key-chars"),
        pytest.param(b"A=" + b"v" * (MAX_VALUE_LENGTH + 1) + b"\0", id="long-value"),
        pytest.param(b"CHAP_C=" + b"0" * (MAX_LARGE_VALUE_LENGTH + 1) + b"\0", id="long-chap"),
        pytest.param(b"A=\xff\xfe\0", id="not-utf8"),
        pytest.param(b"\xc3\xa9=1\0", id="non-ascii-key"),
    ],
)
def test_strict_parsing(data: bytes) -> None:
    with pytest.raises(MalformedText):
        parse_text(data)


def test_chap_values_may_be_large() -> None:
    value = "0x" + "ab" * 1024
    assert parse_text(f"CHAP_C={value}\0".encode()) == [("CHAP_C", value)]


def test_encode_round_trip() -> None:
    pairs = [("HeaderDigest", "None"), ("MaxRecvDataSegmentLength", "262144"), ("Empty", "")]
    encoded = encode_text(pairs)
    assert encoded == b"HeaderDigest=None\0MaxRecvDataSegmentLength=262144\0Empty=\0"
    assert parse_text(encoded) == pairs


@pytest.mark.parametrize(
    ("key", "value"),
    [("", "x"), ("Bad Key", "x"), ("A", "x\0y"), ("A", "v" * 256), ("K" * 64, "x")],
)
def test_encode_refuses_illegal_pairs(key: str, value: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_text([(key, value)])


_KEY_CHARS = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-+@_")
_PAIRS = st.lists(
    st.tuples(
        st.text(_KEY_CHARS, min_size=1, max_size=MAX_KEY_LENGTH),
        st.text(st.characters(blacklist_characters="\0", codec="utf-8"), max_size=60),
    ),
    max_size=12,
)


@settings(max_examples=200, derandomize=True, database=None)
@given(_PAIRS)
def test_encode_then_parse_is_identity(pairs: list[tuple[str, str]]) -> None:
    assert parse_text(encode_text(pairs)) == pairs


@settings(max_examples=400, derandomize=True, database=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(st.sampled_from([b"A", b"=", b"\0", b"\xff", b"CHAP_R", b"x" * 70])).map(b"".join),
    )
)
def test_any_bytes_parse_or_raise_malformed_text(data: bytes) -> None:
    try:
        pairs = parse_text(data)
    except MalformedText:
        return
    assert all(key and "=" not in key for key, _ in pairs)


@pytest.mark.parametrize(
    ("text", "number"),
    [("0", 0), ("262144", 262144), ("0x40000", 262144), ("0X1f", 31), ("007", 7)],
)
def test_numbers(text: str, number: int) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1.5", "0x", "Yes", str(1 << 64), "0b01"])
def test_not_numbers(text: str) -> None:
    with pytest.raises(MalformedText):
        parse_number(text)


def test_binary_values_hex_and_base64() -> None:
    data = bytes(range(20))
    assert decode_binary(encode_hex(data)) == data
    assert decode_binary(encode_base64(data)) == data
    assert decode_binary("0XABcd") == b"\xab\xcd"
    assert decode_binary("0xabc") == b"\x0a\xbc"  # odd digit count: leading zero implied
    assert encode_hex(b"\x01\xff") == "0x01ff"
    assert encode_base64(b"\xff\xff") == "0b//8="


@pytest.mark.parametrize("text", ["abcd", "0x", "0xzz", "0x ab", "0b!!", "0babc", "1234"])
def test_bad_binary_values(text: str) -> None:
    with pytest.raises(MalformedText):
        decode_binary(text)


def test_split_list() -> None:
    assert split_list("CHAP,None") == ["CHAP", "None"]
    assert split_list("None") == ["None"]
