"""The magic packet codec, SecureOn passwords, and the choice of interface (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskless.wol import (
    MAGIC_PACKET_SIZE,
    WakeInterfaceError,
    check_interface_name,
    magic_packet,
    parse_secureon,
    resolve_interface,
)

MAC = bytes.fromhex("525400180010")


def test_magic_packet_is_sync_then_sixteen_macs() -> None:
    packet = magic_packet(MAC)

    assert len(packet) == MAGIC_PACKET_SIZE == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:12] == MAC
    assert packet == bytes.fromhex("ff" * 6 + "525400180010" * 16)


def test_secureon_password_is_appended() -> None:
    assert magic_packet(MAC, b"\x01\x02\x03\x04\x05\x06")[-6:] == b"\x01\x02\x03\x04\x05\x06"
    assert len(magic_packet(MAC, bytes(4))) == 106


@pytest.mark.parametrize(("mac", "password"), [(b"\x00" * 5, b""), (MAC, b"\x01\x02\x03")])
def test_bad_sizes_are_refused(mac: bytes, password: bytes) -> None:
    with pytest.raises(ValueError, match="bytes"):
        magic_packet(mac, password)


@given(
    mac=st.binary(min_size=6, max_size=6),
    password=st.sampled_from([0, 4, 6]).flatmap(
        lambda size: st.binary(min_size=size, max_size=size)
    ),
)
def test_any_mac_gives_a_packet_a_nic_recognises(mac: bytes, password: bytes) -> None:
    packet = magic_packet(mac, password)

    assert len(packet) == MAGIC_PACKET_SIZE + len(password)
    assert packet.startswith(b"\xff" * 6)
    body = packet[6:MAGIC_PACKET_SIZE]
    assert [body[i : i + 6] for i in range(0, 96, 6)] == [mac] * 16
    assert packet[MAGIC_PACKET_SIZE:] == password


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("01:02:03:04:05:06", b"\x01\x02\x03\x04\x05\x06"),
        ("01-02-03-04-05-06", b"\x01\x02\x03\x04\x05\x06"),
        ("192.168.1.1", b"\xc0\xa8\x01\x01"),
        ("deadbeef", b"\xde\xad\xbe\xef"),
    ],
)
def test_secureon_spellings(text: str, expected: bytes) -> None:
    assert parse_secureon(text) == expected


@pytest.mark.parametrize("text", ["", "01:02:03", "300.1.1.1", "password"])
def test_bad_secureon_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="6 bytes"):
        parse_secureon(text)


@pytest.mark.parametrize("name", ["eth0", "enp3s0f1", "br-lan.10"])
def test_interface_names(name: str) -> None:
    assert check_interface_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 16, "eth 0", "../x", ".", "eth0:1"])
def test_bad_interface_names(name: str) -> None:
    with pytest.raises(ValueError, match="interface name"):
        check_interface_name(name)


def test_interface_choice_order() -> None:
    groups = {"lab": "eth1"}

    assert resolve_interface(
        explicit="eth9", group="lab", group_interfaces=groups, default="eth0"
    ) == ("eth9", "request")
    assert resolve_interface(
        explicit=None, group="lab", group_interfaces=groups, default="eth0"
    ) == ("eth1", "wake.group_interfaces[lab]")
    assert resolve_interface(
        explicit=None, group="hall", group_interfaces=groups, default="eth0"
    ) == ("eth0", "server settings")


def test_no_interface_is_refused_never_all_interfaces() -> None:
    with pytest.raises(WakeInterfaceError, match="no interface to send the magic packet from"):
        resolve_interface(explicit=None, group=None, group_interfaces={}, default=None)
