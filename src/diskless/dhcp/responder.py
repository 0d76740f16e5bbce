"""The DHCP server's decisions, sans-I/O: a datagram and its arrival in, at most one reply out.

:class:`DhcpResponder` implements both modes:

* **full**: DISCOVER/OFFER, REQUEST/ACK/NAK in each client state (selecting, init-reboot,
  renewing, rebinding), DECLINE, RELEASE, INFORM, relays (``giaddr``), reservations from the
  machine book and the pool in :class:`~diskless.dhcp.leases.LeaseTable`; no ping before an offer
  (the client's DECLINE covers a conflict, and a ping wait stalls boot storms);
* **proxy**: beside a DHCP server we do not control, it answers only PXE/HTTP-boot/iPXE clients,
  with boot information and no address: on port 67 to their DISCOVER, and on port 4011 to the
  request they send there (UEFI firmware and iPXE both ask on 4011).

What a client boots comes from :func:`diskless.boot.decide`, so DHCP, TFTP and HTTP agree.
Malformed datagrams are dropped and counted in :class:`DhcpStats`; nothing raises to the caller.

A boot storm is the same few hundred clients asking the same questions: each request is parsed
once and each answer encoded once, then reused for every datagram that differs only in its
transaction id (retransmissions, renewals, the next boot), until the machine book changes. Both
memories are bounded; the lease table is still consulted for every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Literal, TypeVar

from diskless.boot.arch import Firmware
from diskless.boot.events import BootEvent, BootStage, BootTimeline
from diskless.boot.machines import BootTarget, Machine, MachineBook, SanbootTarget
from diskless.boot.policy import BootPlan, BootSite, RequestFacts, decide, iscsi_names
from diskless.dhcp.codec import (
    BOOTREPLY,
    BOOTREQUEST,
    DhcpFormatError,
    DhcpMessage,
    MessageType,
    Option,
    encode_message,
    parse_message,
)
from diskless.dhcp.leases import LeaseTable

__all__ = [
    "CLIENT_PORT",
    "SERVER_PORT",
    "DhcpConfig",
    "DhcpResponder",
    "DhcpStats",
    "Reply",
    "reservations",
]

SERVER_PORT = 67
CLIENT_PORT = 68
PXE_PORT = 4011
_BROADCAST = "255.255.255.255"
_ZERO = bytes(4)
_LEASE_ONLY = frozenset((Option.LEASE_TIME, Option.RENEWAL_TIME, Option.REBINDING_TIME))
# PXE vendor options (option 43): tag 6, PXE_DISCOVERY_CONTROL, bit 3 = "use the boot file name
# in this offer, skip boot-server discovery".
_PXE_DISCOVERY_USE_BOOTFILE = bytes((6, 1, 8, 255))
_Key = TypeVar("_Key")
_Value = TypeVar("_Value")
_MEMORY_LIMIT = 8192
"""Requests (and answers) remembered; the memory is emptied when full, so it stays bounded."""
DISCOVERED_INTERVAL = 5.0
"""Seconds between two DISCOVERED events for the same stranger: a PXE ROM retries every few
seconds, and the inventory needs to know it is there, not each of its datagrams."""
# iPXE option 175.176 (no-pxedhcp): we are the only DHCP server, so iPXE need not wait ~3 s for
# ProxyDHCP offers that will never come.
_IPXE_NO_PXEDHCP = bytes((176, 1, 1))


@dataclass(frozen=True, slots=True)
class DhcpConfig:
    """What the responder needs from the settings and the interface, resolved once."""

    mode: Literal["full", "proxy"]
    server: IPv4Address
    network: IPv4Network
    lease_time: int = 3600
    routers: tuple[IPv4Address, ...] = ()
    dns_servers: tuple[IPv4Address, ...] = ()
    domain_name: str | None = None


@dataclass(slots=True)
class DhcpStats:
    """Counters for metrics and tests; every received datagram lands in exactly one outcome."""

    received: int = 0
    malformed: int = 0
    ignored: int = 0
    offers: int = 0
    acks: int = 0
    naks: int = 0
    proxy_offers: int = 0
    proxy_acks: int = 0
    releases: int = 0
    declines: int = 0
    informs: int = 0
    pool_exhausted: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    host: str
    port: int

    @property
    def broadcast(self) -> bool:
        return self.host == _BROADCAST


@dataclass(frozen=True, slots=True)
class _Answer:
    """A reply as encoded for the first request it answered (whose transaction id it carries)."""

    data: bytes
    host: str
    port: int
    event: tuple[BootStage, str, bool] | None = None
    """What each sending of it records on the timeline: stage, detail, whether known."""


@dataclass(slots=True)
class DhcpResponder:
    config: DhcpConfig
    site: BootSite
    machines: Callable[[], MachineBook]
    leases: LeaseTable | None = None
    timeline: BootTimeline | None = None
    clock: Callable[[], float] = time.time
    stats: DhcpStats = field(default_factory=DhcpStats)
    # Wire forms of the fixed values, computed once: ipaddress properties are slow per packet.
    _server_id: bytes = field(init=False)
    _siaddr: bytes = field(init=False)
    _lease_options: list[tuple[int, bytes]] = field(init=False)
    _network_int: int = field(init=False)
    _netmask_int: int = field(init=False)
    _book: MachineBook | None = field(init=False, default=None)
    _requests: dict[bytes, DhcpMessage] = field(init=False, default_factory=dict)
    """Parsed requests by their bytes without the transaction id."""
    _answers: dict[tuple[bytes, object], _Answer] = field(init=False, default_factory=dict)
    """Encoded answers by request bytes (without transaction id) and what else they depend on:
    the lease's address in full mode, the source in proxy mode."""
    _discovered_at: dict[bytes, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        config = self.config
        self._server_id = config.server.packed
        self._siaddr = self.site.server.packed
        self._network_int = int(config.network.network_address)
        self._netmask_int = int(config.network.netmask)
        self._lease_options = [
            (Option.LEASE_TIME, config.lease_time.to_bytes(4, "big")),
            (Option.RENEWAL_TIME, (config.lease_time // 2).to_bytes(4, "big")),
            (Option.REBINDING_TIME, (config.lease_time * 7 // 8).to_bytes(4, "big")),
            (Option.SUBNET_MASK, config.network.netmask.packed),
        ]
        if config.routers:
            self._lease_options.append(
                (Option.ROUTER, b"".join(router.packed for router in config.routers))
            )
        if config.dns_servers:
            self._lease_options.append(
                (Option.DNS_SERVERS, b"".join(server.packed for server in config.dns_servers))
            )

    def _on_our_subnet(self, address: bytes) -> bool:
        return int.from_bytes(address, "big") & self._netmask_int == self._network_int

    def handle(self, datagram: bytes, source: tuple[str, int], local_port: int) -> Reply | None:
        """The reply to one datagram, or ``None`` (ignored, malformed or not for us)."""
        stats = self.stats
        stats.received += 1
        book = self.machines()
        if book is not self._book:
            self._adopt(book)
        request_key = datagram[:4] + datagram[8:]
        message = self._requests.get(request_key)
        if message is None:
            try:
                message = parse_message(datagram)
            except DhcpFormatError:
                stats.malformed += 1
                return None
            _remember(self._requests, request_key, message)
        if message.op != BOOTREQUEST or len(message.chaddr) != 6:
            stats.ignored += 1
            return None
        kind = message.message_type
        if kind is None:
            stats.malformed += 1
            return None
        answer: _Answer | None = None
        now = self.clock()
        if self.config.mode == "proxy":
            answer = self._proxy(
                message, kind, request_key, book, source=source, local_port=local_port
            )
        elif local_port != PXE_PORT:
            answer = self._full(message, kind, request_key, book, now)
        if answer is None:
            stats.ignored += 1
            return None
        event = answer.event
        if event is not None and (event[2] or self._stranger_is_news(message.chaddr, now)):
            self._record(message.chaddr, now, *event)
        data = answer.data
        # The answer may have been built for an earlier request with another transaction id.
        return Reply(data[:4] + datagram[4:8] + data[8:], answer.host, answer.port)

    def _adopt(self, book: MachineBook) -> None:
        """Answer from a new machine book: its reservations, names and boot targets."""
        self._book = book
        # Answers name hostnames, boot files and root paths from the old book.
        self._requests.clear()
        self._answers.clear()
        if self.leases is not None:
            self.leases.set_reservations(reservations(book, self.config.network))

    # -- full mode -----------------------------------------------------------------------------

    def _full(
        self,
        message: DhcpMessage,
        kind: MessageType,
        request_key: bytes,
        book: MachineBook,
        now: float,
    ) -> _Answer | None:
        leases = self.leases
        if leases is None:
            return None
        if message.giaddr != _ZERO and not self._on_our_subnet(message.giaddr):
            return None  # A relay for a subnet we have no pool for.
        mac = message.chaddr
        if kind is MessageType.DISCOVER:
            requested = message.address_option(Option.REQUESTED_ADDRESS)
            address = leases.offer(
                mac, int.from_bytes(requested, "big") if requested else None, now
            )
            if address is None:
                self.stats.pool_exhausted += 1
                return None
            self.stats.offers += 1
            return self._lease_answer(message, request_key, address, book)
        if kind is MessageType.REQUEST:
            return self._full_request(message, request_key, book, leases, now)
        if kind is MessageType.RELEASE:
            if leases.release(mac, int.from_bytes(message.ciaddr, "big")):
                self.stats.releases += 1
            return None
        if kind is MessageType.DECLINE:
            requested = message.address_option(Option.REQUESTED_ADDRESS)
            if requested is not None and self._for_us(message):
                leases.decline(mac, int.from_bytes(requested, "big"), now)
                self.stats.declines += 1
            return None
        if kind is MessageType.INFORM:
            self.stats.informs += 1
            return self._inform_answer(message, book.by_mac(mac))
        return None

    def _full_request(
        self,
        message: DhcpMessage,
        request_key: bytes,
        book: MachineBook,
        leases: LeaseTable,
        now: float,
    ) -> _Answer | None:
        mac = message.chaddr
        server_id = message.address_option(Option.SERVER_ID)
        requested = message.address_option(Option.REQUESTED_ADDRESS)
        if server_id is not None:
            # SELECTING: the client picked an offer; if not ours, free what we offered it.
            if server_id != self._server_id:
                leases.forget_offer(mac)
                return None
            if requested is None:
                return None
            wanted = int.from_bytes(requested, "big")
        elif requested is not None:
            wanted = int.from_bytes(requested, "big")  # INIT-REBOOT
        elif message.ciaddr != bytes(4):
            wanted = int.from_bytes(message.ciaddr, "big")  # RENEWING / REBINDING
        else:
            return None
        if not self._on_our_subnet(wanted.to_bytes(4, "big")) or not leases.may_bind(
            mac, wanted, now
        ):
            self.stats.naks += 1
            return self._nak(message)
        leases.bind(mac, wanted, self.config.lease_time, now)
        self.stats.acks += 1
        return self._lease_answer(message, request_key, wanted, book)

    def _for_us(self, message: DhcpMessage) -> bool:
        server_id = message.address_option(Option.SERVER_ID)
        return server_id is None or server_id == self._server_id

    def _lease_answer(
        self, message: DhcpMessage, request_key: bytes, address: int, book: MachineBook
    ) -> _Answer:
        """The OFFER (to a DISCOVER) or ACK (to a REQUEST) of ``address``, encoded once."""
        answer_key = (request_key, address)
        answer = self._answers.get(answer_key)
        if answer is None:
            answer = self._encode_lease_reply(message, address, book.by_mac(message.chaddr))
            _remember(self._answers, answer_key, answer)
        return answer

    def _encode_lease_reply(
        self, message: DhcpMessage, address: int, machine: Machine | None
    ) -> _Answer:
        kind = (
            MessageType.OFFER if message.message_type is MessageType.DISCOVER else MessageType.ACK
        )
        options: list[tuple[int, bytes]] = [
            (Option.MESSAGE_TYPE, bytes((kind,))),
            (Option.SERVER_ID, self._server_id),
            *self._lease_options,
        ]
        options.extend(self._name_options(machine))
        reply = self._reply_base(message, address.to_bytes(4, "big"))
        plan = self._plan(message, machine)
        event: tuple[BootStage, str, bool] | None = None
        if plan is not None:
            options.extend(self._boot_options(message, plan, reply))
            if plan.known:
                stage = BootStage.DHCP_OFFER if kind is MessageType.OFFER else BootStage.DHCP_ACK
                loader = plan.loader.file if plan.loader else "-"
                event = (stage, f"{socket_address(address)} {loader}", True)
            elif kind is MessageType.OFFER:
                # An unknown client's steps are summed up by DISCOVERED events: a storm of
                # strangers must not cost four timeline events per DORA.
                event = _discovered_event(message)
        return _Answer(
            encode_message(reply, options, max_size=message.max_reply_size()),
            *self._destination(message),
            event=event,
        )

    def _inform_answer(self, message: DhcpMessage, machine: Machine | None) -> _Answer | None:
        if message.ciaddr == bytes(4):
            return None
        options: list[tuple[int, bytes]] = [
            (Option.MESSAGE_TYPE, bytes((MessageType.ACK,))),
            (Option.SERVER_ID, self._server_id),
            *(option for option in self._lease_options if option[0] not in _LEASE_ONLY),
        ]
        options.extend(self._name_options(machine))
        reply = self._reply_base(message, bytes(4))
        return _Answer(
            encode_message(reply, options, max_size=message.max_reply_size()),
            *self._destination(message),
        )

    def _nak(self, message: DhcpMessage) -> _Answer:
        reply = self._reply_base(message, bytes(4))
        options = [
            (Option.MESSAGE_TYPE, bytes((MessageType.NAK,))),
            (Option.SERVER_ID, self._server_id),
        ]
        # RFC 2131 §4.3.2: a NAK is broadcast unless it goes through a relay.
        if message.giaddr != bytes(4):
            reply.flags |= 0x8000
            return _Answer(encode_message(reply, options), socket_address(message.giaddr), 67)
        return _Answer(encode_message(reply, options), _BROADCAST, CLIENT_PORT)

    def _name_options(self, machine: Machine | None) -> list[tuple[int, bytes]]:
        options: list[tuple[int, bytes]] = []
        if machine is not None:
            options.append((Option.HOSTNAME, machine.hostname.encode("ascii")))
        if self.config.domain_name:
            options.append((Option.DOMAIN_NAME, self.config.domain_name.encode("ascii")))
        return options

    def _destination(self, message: DhcpMessage) -> tuple[str, int]:
        # RFC 2131 §4.1. Unicasting to yiaddr before the client has it would need an ARP entry
        # written into the kernel; broadcasting reaches it everywhere, as dnsmasq does without
        # CAP_NET_ADMIN.
        if message.giaddr != _ZERO:
            return socket_address(message.giaddr), SERVER_PORT
        if message.ciaddr != _ZERO:
            return socket_address(message.ciaddr), CLIENT_PORT
        return _BROADCAST, CLIENT_PORT

    # -- proxy mode ----------------------------------------------------------------------------

    def _proxy(
        self,
        message: DhcpMessage,
        kind: MessageType,
        request_key: bytes,
        book: MachineBook,
        *,
        source: tuple[str, int],
        local_port: int,
    ) -> _Answer | None:
        if local_port == PXE_PORT:
            if kind is not MessageType.REQUEST and kind is not MessageType.INFORM:
                return None
        elif kind is not MessageType.DISCOVER:
            return None  # The real DHCP server handles the REQUEST.
        if not _boot_client(message):
            return None
        answer_key = (request_key, (local_port, source))
        answer = self._answers.get(answer_key)
        if answer is None:
            answer = self._encode_proxy_reply(
                message, book.by_mac(message.chaddr), source, local_port
            )
            _remember(self._answers, answer_key, answer)
        if answer.data:
            if local_port == PXE_PORT:
                self.stats.proxy_acks += 1
            else:
                self.stats.proxy_offers += 1
        else:
            answer = None  # Nothing to boot: the memory only saves deciding that again.
        return answer

    def _encode_proxy_reply(
        self,
        message: DhcpMessage,
        machine: Machine | None,
        source: tuple[str, int],
        local_port: int,
    ) -> _Answer:
        plan = self._plan(message, machine)
        if plan is None or plan.loader is None:
            return _Answer(b"", "", 0)
        if local_port == PXE_PORT:
            reply_kind = MessageType.ACK
            # The client has an address by now and listens where it sent from.
            destination = (
                (source[0], source[1]) if source[0] != "0.0.0.0" else (_BROADCAST, CLIENT_PORT)
            )
        else:
            reply_kind = MessageType.OFFER
            destination = self._destination(message)
        reply = self._reply_base(message, bytes(4))
        options: list[tuple[int, bytes]] = [
            (Option.MESSAGE_TYPE, bytes((reply_kind,))),
            (Option.SERVER_ID, self._server_id),
        ]
        options.extend(self._boot_options(message, plan, reply, proxy=True))
        event = (
            (BootStage.PROXY_OFFER, plan.loader.file, True)
            if plan.known
            else _discovered_event(message)
            if reply_kind is MessageType.OFFER
            else None
        )
        return _Answer(
            encode_message(reply, options, max_size=message.max_reply_size()),
            *destination,
            event=event,
        )

    # -- shared --------------------------------------------------------------------------------

    def _plan(self, message: DhcpMessage, machine: Machine | None) -> BootPlan | None:
        if not _boot_client(message):
            return None
        facts = RequestFacts(
            mac=message.chaddr,
            arch=message.client_arch(),
            ipxe=_is_ipxe(message),
            vendor_class=message.text_option(Option.VENDOR_CLASS),
        )
        return decide(machine, facts, self.site)

    def _stranger_is_news(self, mac: bytes, now: float) -> bool:
        last = self._discovered_at.get(mac)
        if last is not None and now - last < DISCOVERED_INTERVAL:
            return False
        _remember(self._discovered_at, mac, now)
        return True

    def _reply_base(self, message: DhcpMessage, yiaddr: bytes) -> DhcpMessage:
        return DhcpMessage(
            op=BOOTREPLY,
            xid=message.xid,
            chaddr=message.chaddr,
            htype=message.htype,
            flags=message.flags,
            ciaddr=message.ciaddr,
            yiaddr=yiaddr,
            siaddr=self._siaddr,
            giaddr=message.giaddr,
        )

    def _boot_options(
        self, message: DhcpMessage, plan: BootPlan, reply: DhcpMessage, *, proxy: bool = False
    ) -> list[tuple[int, bytes]]:
        options: list[tuple[int, bytes]] = []
        loader = plan.loader
        ipxe = _is_ipxe(message)
        if loader is not None:
            name = loader.file.encode("ascii")
            if len(name) < 128:
                reply.file = name
            options.append((Option.BOOTFILE, name))
            if not loader.over_http:
                options.append((Option.TFTP_SERVER, str(self.site.server).encode("ascii")))
            # Option 60 names the answer's kind in the client's own terms: UEFI HTTP boot needs
            # "HTTPClient" back, and iPXE only takes an offer with "PXEClient" as a ProxyDHCP
            # offer (then asks on 4011), even when what it is handed is an http:// URL.
            asked = message.options.get(Option.VENDOR_CLASS, b"")
            family = b"HTTPClient" if asked.startswith(b"HTTPClient") else b"PXEClient"
            options.append((Option.VENDOR_CLASS, family))
            # UEFI PXE stacks take a proxy offer without option 43 as "ask the boot server on
            # 4011" (Pixiecore's finding: many firmwares only do that); BIOS ROMs use the offered
            # file at once when discovery control says so.
            skip_discovery = not proxy or plan.platform.firmware is Firmware.BIOS
            if not ipxe and not loader.over_http and skip_discovery:
                options.append((Option.VENDOR_SPECIFIC, _PXE_DISCOVERY_USE_BOOTFILE))
        uuid = message.options.get(Option.CLIENT_UUID)
        if uuid is not None:
            options.append((Option.CLIENT_UUID, uuid))
        if ipxe and not proxy:
            options.append((Option.IPXE_ENCAPSULATED, _IPXE_NO_PXEDHCP))
        root_path = self._root_path(plan.machine, plan.target)
        if root_path is not None and not ipxe:
            # For NICs and HBAs with iSCSI boot firmware. Not for iPXE: it would log in to the
            # SAN at DHCP time, before its script sets the initiator name.
            options.append((Option.ROOT_PATH, root_path.encode("ascii")))
        return options

    def _root_path(self, machine: Machine | None, target: BootTarget) -> str | None:
        if machine is None or not isinstance(target, SanbootTarget):
            return None
        names = iscsi_names(machine, self.site.iqn_prefix, target.disk)
        port = self.site.portal_port(names.target)
        return f"iscsi:{self.site.server}::{port}:0:{names.target}"

    def _record(self, mac: bytes, now: float, stage: BootStage, detail: str, known: bool) -> None:
        if self.timeline is not None:
            self.timeline.record(BootEvent(mac, stage, now, detail, known))


def _remember(memory: dict[_Key, _Value], key: _Key, value: _Value) -> None:
    if len(memory) >= _MEMORY_LIMIT:
        memory.clear()
    memory[key] = value


def _discovered_event(message: DhcpMessage) -> tuple[BootStage, str, bool]:
    """The DISCOVERED event of a stranger, in words the inventory's recorder reads."""
    arch = message.client_arch()
    detail = f"dhcp arch={arch if arch is not None else 0}"
    vendor = message.text_option(Option.VENDOR_CLASS)
    if vendor:
        detail += f" vendor={vendor.split()[0]}"
    return (BootStage.DISCOVERED, detail, False)


def reservations(book: MachineBook, network: IPv4Network) -> dict[bytes, IPv4Address]:
    """The reserved addresses of ``book``'s machines that lie in ``network``, by MAC."""
    return {
        machine.mac: machine.ip
        for machine in book
        if machine.ip is not None and machine.ip in network
    }


def socket_address(address: bytes | int) -> str:
    """Dotted-quad text of a 4-byte or integer address, without an ipaddress object."""
    if isinstance(address, int):
        address = address.to_bytes(4, "big")
    return ".".join(map(str, address))


def _is_ipxe(message: DhcpMessage) -> bool:
    """iPXE identifies itself with user class ``iPXE`` (77) and its own option 175.

    The user class decides when present: a script can set another class to act as a plain PXE
    ROM (the lab's ``LegacyPXE`` trick), and then it must get the firmware program, not a script.
    """
    user_class = message.options.get(Option.USER_CLASS)
    if user_class is not None:
        return b"iPXE" in user_class
    return Option.IPXE_ENCAPSULATED in message.options


def _boot_client(message: DhcpMessage) -> bool:
    vendor = message.options.get(Option.VENDOR_CLASS, b"")
    return vendor.startswith((b"PXEClient", b"HTTPClient")) or _is_ipxe(message)
