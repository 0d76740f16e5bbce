"""The DHCP responder, sans-I/O: full-mode lease life cycle, proxy mode, boot options."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from dhcp_packets import PXE_VENDOR, client_message
from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.boot import (
    BootSite,
    BootStage,
    BootTimeline,
    Firmware,
    Machine,
    MachineBook,
    parse_mac,
)
from diskless.dhcp.codec import DhcpMessage, MessageType, Option, encode_message, parse_message
from diskless.dhcp.leases import LeaseTable
from diskless.dhcp.responder import (
    _MEMORY_LIMIT,
    DISCOVERED_INTERVAL,
    DhcpConfig,
    DhcpResponder,
    Reply,
)

SERVER = IPv4Address("198.18.0.1")
SERVER_ID = SERVER.packed
KNOWN = parse_mac("52:54:00:18:00:10")
STRANGER = parse_mac("52:54:00:18:00:99")
SITE = BootSite(
    server=SERVER,
    loaders={
        Firmware.BIOS: "undionly.kpxe",
        Firmware.UEFI_X64: "ipxe.efi",
        Firmware.UEFI_ARM64: "ipxe-arm64.efi",
    },
)
BOOK = MachineBook([Machine(mac=KNOWN, hostname="seat-01", ip=IPv4Address("198.18.0.170"))])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _full(tmp_path: Path | None = None, site: BootSite = SITE) -> DhcpResponder:
    leases = LeaseTable(
        IPv4Address("198.18.0.100"),
        IPv4Address("198.18.0.102"),
        reservations={KNOWN: IPv4Address("198.18.0.170")},
        journal=None if tmp_path is None else tmp_path / "leases.jsonl",
    )
    return DhcpResponder(
        config=DhcpConfig(
            mode="full",
            server=SERVER,
            network=IPv4Network("198.18.0.0/24"),
            lease_time=600,
            routers=(IPv4Address("198.18.0.254"),),
        ),
        site=site,
        machines=lambda: BOOK,
        leases=leases,
        timeline=BootTimeline(),
        clock=Clock(),
    )


def _proxy() -> DhcpResponder:
    return DhcpResponder(
        config=DhcpConfig(mode="proxy", server=SERVER, network=IPv4Network("198.18.0.0/24")),
        site=SITE,
        machines=lambda: BOOK,
        timeline=BootTimeline(),
    )


def _answer(responder: DhcpResponder, data: bytes, port: int = 67) -> tuple[Reply, DhcpMessage]:
    reply = responder.handle(data, ("0.0.0.0", 68), port)
    assert reply is not None
    return reply, parse_message(reply.data)


def _dora(responder: DhcpResponder, mac: bytes, **facts: object) -> DhcpMessage:
    _, offer = _answer(responder, client_message(MessageType.DISCOVER, mac, **facts))  # type: ignore[arg-type]
    assert offer.message_type is MessageType.OFFER
    _, ack = _answer(
        responder,
        client_message(
            MessageType.REQUEST,
            mac,
            requested=offer.yiaddr,
            server_id=SERVER_ID,
            **facts,  # type: ignore[arg-type]
        ),
    )
    assert ack.message_type is MessageType.ACK
    assert ack.yiaddr == offer.yiaddr
    return ack


def test_a_reserved_machine_gets_its_address_and_name() -> None:
    ack = _dora(_full(), KNOWN)
    assert IPv4Address(ack.yiaddr) == IPv4Address("198.18.0.170")
    assert ack.options[Option.HOSTNAME] == b"seat-01"
    assert ack.options[Option.SUBNET_MASK] == bytes((255, 255, 255, 0))
    assert ack.options[Option.ROUTER] == IPv4Address("198.18.0.254").packed
    assert int.from_bytes(ack.options[Option.LEASE_TIME], "big") == 600
    assert Option.BOOTFILE not in ack.options  # Not a PXE client: no boot information.


def test_pool_addresses_renewal_and_exhaustion() -> None:
    responder = _full()
    macs = [parse_mac(f"0200000000{n:02x}") for n in range(4)]
    addresses = [IPv4Address(_dora(responder, mac).yiaddr) for mac in macs[:3]]
    assert addresses == [IPv4Address(f"198.18.0.{n}") for n in (100, 101, 102)]
    assert (
        responder.handle(client_message(MessageType.DISCOVER, macs[3]), ("0.0.0.0", 68), 67) is None
    )
    assert responder.stats.pool_exhausted == 1
    renew = client_message(MessageType.REQUEST, macs[0], ciaddr=addresses[0].packed, flags=0)
    reply, ack = _answer(responder, renew)
    assert ack.message_type is MessageType.ACK
    assert (reply.host, reply.port) == ("198.18.0.100", 68)  # unicast to a bound client


def test_request_for_someone_elses_address_is_nakked() -> None:
    responder = _full()
    first = _dora(responder, parse_mac("020000000001"))
    reply, nak = _answer(
        responder,
        client_message(MessageType.REQUEST, parse_mac("020000000002"), requested=first.yiaddr),
    )
    assert nak.message_type is MessageType.NAK
    assert reply.broadcast
    _, off_subnet = _answer(
        responder,
        client_message(MessageType.REQUEST, KNOWN, requested=IPv4Address("10.0.0.5").packed),
    )
    assert off_subnet.message_type is MessageType.NAK


def test_selecting_another_server_frees_our_offer() -> None:
    responder = _full()
    mac = parse_mac("020000000001")
    _, offer = _answer(responder, client_message(MessageType.DISCOVER, mac))
    other = client_message(
        MessageType.REQUEST, mac, requested=offer.yiaddr, server_id=bytes((198, 18, 0, 2))
    )
    assert responder.handle(other, ("0.0.0.0", 68), 67) is None
    assert responder.leases is not None
    assert responder.leases.lease(mac) is None


def test_release_and_decline() -> None:
    responder = _full()
    mac = parse_mac("020000000001")
    ack = _dora(responder, mac)
    responder.handle(client_message(MessageType.RELEASE, mac, ciaddr=ack.yiaddr), ("x", 68), 67)
    assert responder.stats.releases == 1
    responder.handle(
        client_message(MessageType.DECLINE, mac, requested=ack.yiaddr, server_id=SERVER_ID),
        ("0.0.0.0", 68),
        67,
    )
    assert responder.stats.declines == 1
    _, offer = _answer(responder, client_message(MessageType.DISCOVER, parse_mac("020000000002")))
    assert offer.yiaddr != ack.yiaddr  # the declined address is held back


def test_inform_gets_options_without_an_address() -> None:
    responder = _full()
    reply, ack = _answer(
        responder,
        client_message(MessageType.INFORM, STRANGER, ciaddr=bytes((198, 18, 0, 50)), flags=0),
    )
    assert ack.message_type is MessageType.ACK
    assert ack.yiaddr == bytes(4)
    assert Option.LEASE_TIME not in ack.options
    assert reply.host == "198.18.0.50"


def test_relayed_requests_are_answered_to_the_relay() -> None:
    responder = _full()
    relay = bytes((198, 18, 0, 2))
    reply, offer = _answer(responder, client_message(MessageType.DISCOVER, STRANGER, giaddr=relay))
    assert (reply.host, reply.port) == ("198.18.0.2", 67)
    assert offer.giaddr == relay
    foreign = client_message(MessageType.DISCOVER, STRANGER, giaddr=bytes((10, 0, 0, 1)))
    assert responder.handle(foreign, ("10.0.0.1", 67), 67) is None


@pytest.mark.parametrize(
    ("arch", "vendor", "expected"),
    [
        (0, PXE_VENDOR, "undionly.kpxe"),
        (7, b"PXEClient:Arch:00007:UNDI:003016", "ipxe.efi"),
        (9, b"PXEClient:Arch:00009:UNDI:003016", "ipxe.efi"),
        (11, b"PXEClient:Arch:00011:UNDI:003016", "ipxe-arm64.efi"),
        (16, b"HTTPClient:Arch:00016:UNDI:003001", "http://198.18.0.1:8080/ipxe/ipxe.efi"),
    ],
)
def test_each_architecture_gets_its_boot_program(arch: int, vendor: bytes, expected: str) -> None:
    ack = _dora(_full(), KNOWN, arch=arch, vendor=vendor, uuid=bytes(range(16)))
    assert ack.options[Option.BOOTFILE].decode() == expected
    assert ack.file.decode() == expected
    assert ack.siaddr == SERVER_ID
    assert ack.options[Option.CLIENT_UUID] == b"\x00" + bytes(range(16))
    assert ack.options[Option.VENDOR_CLASS] == vendor.split(b":")[0]
    if not expected.startswith("http"):
        assert ack.options[Option.VENDOR_SPECIFIC] == bytes((6, 1, 8, 255))
        # A sanboot machine's iSCSI root path, for NICs with iSCSI boot firmware.
        assert ack.options[Option.ROOT_PATH] == (
            b"iscsi:198.18.0.1::3260:0:iqn.2026-11.org.diskless:disk.seat-01"
        )


@pytest.mark.parametrize(
    "facts",
    [
        {"user_class": b"iPXE", "vendor": PXE_VENDOR},
        {"ipxe_options": True, "arch": 7},
        {"user_class": b"\x04iPXE"},
    ],
)
def test_ipxe_gets_its_script_url_and_no_pxedhcp(facts: dict[str, object]) -> None:
    ack = _dora(_full(), KNOWN, **facts)
    assert ack.options[Option.BOOTFILE] == b"http://198.18.0.1:8080/boot/52:54:00:18:00:10.ipxe"
    assert ack.options[Option.IPXE_ENCAPSULATED] == bytes((176, 1, 1))
    # iPXE takes only a "PXEClient" offer as a ProxyDHCP offer, even for an http:// file.
    assert ack.options[Option.VENDOR_CLASS] == b"PXEClient"
    assert Option.ROOT_PATH not in ack.options
    assert Option.VENDOR_SPECIFIC not in ack.options


def test_a_user_class_other_than_ipxe_means_a_firmware_client() -> None:
    # The lab's LegacyPXE trick: iPXE (with option 175) posing as a PXE ROM.
    ack = _dora(
        _full(), KNOWN, user_class=b"LegacyPXE", ipxe_options=True, arch=0, vendor=PXE_VENDOR
    )
    assert ack.options[Option.BOOTFILE] == b"undionly.kpxe"


def test_unknown_pxe_clients_are_recorded_or_ignored() -> None:
    responder = _full()
    ack = _dora(responder, STRANGER, arch=0, vendor=PXE_VENDOR)
    assert ack.options[Option.BOOTFILE] == b"undionly.kpxe"
    assert responder.timeline is not None
    assert responder.timeline.discovered() == [STRANGER]
    # One DISCOVERED event per DISCOVER, with what the inventory records about a stranger.
    (event,) = responder.timeline.events(STRANGER)
    assert event.stage is BootStage.DISCOVERED
    assert not event.known
    assert event.detail == "dhcp arch=0 vendor=PXEClient:Arch:00000:UNDI:002001"
    ignoring = _full(site=BootSite(server=SERVER, loaders=SITE.loaders, unknown_target=None))
    quiet = _dora(ignoring, STRANGER, arch=0, vendor=PXE_VENDOR)
    assert Option.BOOTFILE not in quiet.options  # an address, but nothing to boot


def test_proxy_answers_only_pxe_clients_without_an_address() -> None:
    responder = _proxy()
    plain = client_message(MessageType.DISCOVER, KNOWN)
    assert responder.handle(plain, ("0.0.0.0", 68), 67) is None
    reply, offer = _answer(
        responder, client_message(MessageType.DISCOVER, KNOWN, arch=0, vendor=PXE_VENDOR)
    )
    assert reply.broadcast
    assert offer.message_type is MessageType.OFFER
    assert offer.yiaddr == bytes(4)
    assert offer.options[Option.VENDOR_CLASS] == b"PXEClient"
    assert offer.options[Option.VENDOR_SPECIFIC] == bytes((6, 1, 8, 255))
    assert offer.file == b"undionly.kpxe"
    assert Option.LEASE_TIME not in offer.options
    request = client_message(MessageType.REQUEST, KNOWN, arch=0, vendor=PXE_VENDOR)
    assert responder.handle(request, ("0.0.0.0", 68), 67) is None  # the real server's job


def test_proxy_uefi_offer_omits_option_43_and_answers_on_4011() -> None:
    responder = _proxy()
    uefi = b"PXEClient:Arch:00007:UNDI:003016"
    _, offer = _answer(responder, client_message(MessageType.DISCOVER, KNOWN, arch=7, vendor=uefi))
    assert Option.VENDOR_SPECIFIC not in offer.options
    request = client_message(
        MessageType.REQUEST, KNOWN, arch=7, vendor=uefi, ciaddr=bytes((198, 18, 0, 77)), flags=0
    )
    reply = responder.handle(request, ("198.18.0.77", 4011), 4011)
    assert reply is not None
    assert (reply.host, reply.port) == ("198.18.0.77", 4011)
    ack = parse_message(reply.data)
    assert ack.message_type is MessageType.ACK
    assert ack.file == b"ipxe.efi"
    assert responder.stats.proxy_acks == 1


def test_proxy_gives_ipxe_its_script_on_4011() -> None:
    responder = _proxy()
    request = client_message(
        MessageType.REQUEST, KNOWN, user_class=b"iPXE", ciaddr=bytes((198, 18, 0, 77)), flags=0
    )
    reply = responder.handle(request, ("198.18.0.77", 68), 4011)
    assert reply is not None
    assert parse_message(reply.data).options[Option.BOOTFILE].endswith(b"52:54:00:18:00:10.ipxe")


@pytest.mark.parametrize(
    "datagram",
    [b"", b"\x01" * 100, bytes(300), bytes(5000)],
)
def test_garbage_is_dropped_and_counted(datagram: bytes) -> None:
    responder = _full()
    assert responder.handle(datagram, ("0.0.0.0", 68), 67) is None
    assert responder.stats.malformed + responder.stats.ignored == 1


def test_leases_survive_a_restart(tmp_path: Path) -> None:
    first = _full(tmp_path)
    ack = _dora(first, parse_mac("020000000001"))
    assert first.leases is not None
    first.leases.close()
    second = _full(tmp_path)
    _, offer = _answer(second, client_message(MessageType.DISCOVER, parse_mac("020000000002")))
    assert offer.yiaddr != ack.yiaddr
    _, again = _answer(second, client_message(MessageType.DISCOVER, parse_mac("020000000001")))
    assert again.yiaddr == ack.yiaddr


_INTERESTING_CODES = [
    Option.MESSAGE_TYPE,
    Option.REQUESTED_ADDRESS,
    Option.SERVER_ID,
    Option.VENDOR_CLASS,
    Option.USER_CLASS,
    Option.CLIENT_ARCH,
    Option.CLIENT_UUID,
    Option.IPXE_ENCAPSULATED,
    Option.MAX_MESSAGE_SIZE,
    Option.OVERLOAD,
    Option.PARAMETER_LIST,
]


@settings(max_examples=400, deadline=None)
@given(
    mode=st.sampled_from(["full", "proxy"]),
    port=st.sampled_from([67, 4011]),
    mac=st.sampled_from([KNOWN, STRANGER, bytes(6)]),
    ciaddr=st.sampled_from([bytes(4), bytes((198, 18, 0, 5)), bytes((10, 1, 1, 1))]),
    giaddr=st.sampled_from([bytes(4), bytes((198, 18, 0, 2)), bytes((192, 0, 2, 1))]),
    options=st.lists(
        st.tuples(
            st.sampled_from(_INTERESTING_CODES),
            st.one_of(
                st.binary(max_size=40),
                st.integers(1, 8).map(lambda kind: bytes((kind,))),
                st.sampled_from([SERVER_ID, bytes((198, 18, 0, 101)), b"iPXE", PXE_VENDOR]),
            ),
        ),
        max_size=8,
    ),
)
def test_responder_never_raises_on_arbitrary_requests(
    *,
    mode: str,
    port: int,
    mac: bytes,
    ciaddr: bytes,
    giaddr: bytes,
    options: list[tuple[int, bytes]],
) -> None:
    responder = _full() if mode == "full" else _proxy()
    message = DhcpMessage(op=1, xid=1, chaddr=mac, ciaddr=ciaddr, giaddr=giaddr)
    datagram = encode_message(message, options, max_size=1500)
    reply = responder.handle(datagram, ("198.18.0.5", 68), port)
    stats = responder.stats
    answered = (
        stats.offers
        + stats.acks
        + stats.naks
        + stats.proxy_offers
        + stats.proxy_acks
        + stats.informs
    )
    assert stats.received == 1
    if reply is not None:
        parsed = parse_message(reply.data)
        assert parsed.xid == 1
        assert parsed.chaddr == mac
        assert answered >= 1


def test_the_lease_table_names_who_holds_an_address() -> None:
    responder = _full()
    mac = parse_mac("020000000001")
    ack = _dora(responder, mac)
    assert responder.leases is not None
    address = int.from_bytes(ack.yiaddr, "big")
    assert responder.leases.holder(address, 1000.0) == mac
    assert responder.leases.holder(address, 1000.0 + 601) is None  # expired
    assert responder.leases.holder(address + 1, 1000.0) is None


def test_a_retransmission_is_answered_from_memory_with_its_own_transaction_id() -> None:
    responder = _full()
    first, offer = _answer(
        responder, client_message(MessageType.DISCOVER, KNOWN, xid=0x1111, vendor=PXE_VENDOR)
    )
    again, retry = _answer(
        responder, client_message(MessageType.DISCOVER, KNOWN, xid=0x2222, vendor=PXE_VENDOR)
    )
    assert (offer.xid, retry.xid) == (0x1111, 0x2222)
    # Byte for byte the same answer but for the transaction id.
    assert first.data[:4] + first.data[8:] == again.data[:4] + again.data[8:]
    assert retry.options[Option.BOOTFILE] == b"undionly.kpxe"
    # Each sending is a boot event, even when the bytes come from memory.
    stages = [event.stage for event in responder.timeline.events(KNOWN)]  # type: ignore[union-attr]
    assert stages == [BootStage.DHCP_OFFER, BootStage.DHCP_OFFER]


def test_a_new_machine_book_is_answered_from_it_not_from_memory() -> None:
    books = [MachineBook()]
    responder = _full()
    responder.machines = lambda: books[-1]
    discover = client_message(MessageType.DISCOVER, KNOWN, vendor=PXE_VENDOR)
    _, before = _answer(responder, discover)
    assert Option.HOSTNAME not in before.options
    books.append(BOOK)  # the operator enrolled the machine
    _, after = _answer(responder, discover)
    assert after.options[Option.HOSTNAME] == b"seat-01"


def test_a_stranger_is_discovered_once_per_interval_not_per_datagram() -> None:
    responder = _full()
    clock = responder.clock
    assert isinstance(clock, Clock)
    for xid in range(5):
        _answer(
            responder,
            client_message(MessageType.DISCOVER, STRANGER, xid=xid, arch=0, vendor=PXE_VENDOR),
        )
    assert len(responder.timeline.events(STRANGER)) == 1  # type: ignore[union-attr]
    clock.now += DISCOVERED_INTERVAL
    _answer(responder, client_message(MessageType.DISCOVER, STRANGER, arch=0, vendor=PXE_VENDOR))
    assert len(responder.timeline.events(STRANGER)) == 2  # type: ignore[union-attr]
    assert responder.stats.offers == 6


def test_remembered_requests_stay_bounded() -> None:
    responder = _full()
    for xid in range(3 * _MEMORY_LIMIT):
        # A distinct secs field makes each one a new request: a hostile client cannot grow memory.
        data = bytearray(client_message(MessageType.DISCOVER, KNOWN, xid=xid, vendor=PXE_VENDOR))
        data[8:10] = (xid % 65536).to_bytes(2, "big")
        assert responder.handle(bytes(data), ("0.0.0.0", 68), 67) is not None
    assert 0 < len(responder._requests) <= _MEMORY_LIMIT
    assert 0 < len(responder._answers) <= _MEMORY_LIMIT
    assert responder.stats.offers == 3 * _MEMORY_LIMIT


def test_a_machine_enrolled_while_serving_gets_its_reservation_at_once() -> None:
    books = [MachineBook()]
    responder = _full()
    responder.machines = lambda: books[-1]
    assert IPv4Address(_dora(responder, KNOWN).yiaddr) == IPv4Address("198.18.0.100")  # pool
    books.append(BOOK)  # enrolled through the API with 198.18.0.170
    ack = _dora(responder, KNOWN)
    assert IPv4Address(ack.yiaddr) == IPv4Address("198.18.0.170")
    assert ack.options[Option.HOSTNAME] == b"seat-01"
