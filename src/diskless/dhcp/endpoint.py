"""The DHCP service's socket shell: one named interface, port 67 (and 4011 in proxy mode).

Sockets are bound to the interface with ``SO_BINDTODEVICE`` and to the wildcard address, which is
the only way to receive broadcasts on Linux; they never serve any other interface, and there is
no "all interfaces" default (``dhcp.interface`` unset means no DHCP service at all). Needs
CAP_NET_RAW for ``SO_BINDTODEVICE`` and CAP_NET_BIND_SERVICE for the ports.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from diskless.boot.events import BootTimeline
from diskless.boot.machines import MachineBook
from diskless.boot.policy import BootSite
from diskless.config import DhcpSettings
from diskless.dhcp.leases import LeaseTable
from diskless.dhcp.responder import (
    PXE_PORT,
    DhcpConfig,
    DhcpResponder,
    DhcpStats,
    reservations,
)
from diskless.errors import ConfigError
from diskless.observe.log import get_logger

__all__ = ["DhcpService", "interface_address"]

_log = get_logger(__name__)
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_RECEIVE_BUFFER = 4 * 1024 * 1024
_DRAIN_LIMIT = 256
"""Datagrams answered per wake-up before other callbacks get their turn."""


def interface_address(name: str) -> IPv4Interface:
    """The IPv4 address and prefix of interface ``name``; raises ConfigError if it has none."""
    request = struct.pack("256s", name.encode("ascii")[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            address = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)[20:24]
            netmask = fcntl.ioctl(probe.fileno(), _SIOCGIFNETMASK, request)[20:24]
        except OSError as exc:
            raise ConfigError(
                f"dhcp.interface: {name!r} has no IPv4 address ({exc.strerror})"
            ) from exc
    return IPv4Interface(f"{IPv4Address(address)}/{IPv4Address(netmask)}")


def _bound_socket(interface: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode("ascii"))
        sock.bind(("0.0.0.0", port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"dhcp: cannot listen on {interface} port {port}: {exc.strerror}"
        ) from exc
    sock.setblocking(False)
    return sock


class _DhcpSocket:
    """One bound socket, drained on readiness: every queued datagram answered in one callback.

    Plain ``recvfrom``/``sendto`` on a non-blocking socket instead of an asyncio datagram
    transport: under a DHCP storm the transport's per-datagram callback and checks cost more
    than answering the datagram, and draining the queue in one wake-up saves an epoll round each.
    """

    def __init__(self, sock: socket.socket, responder: DhcpResponder, port: int) -> None:
        self._sock = sock
        self._responder = responder
        self._port = port

    def on_readable(self) -> None:
        receive, send, handle, port = (
            self._sock.recvfrom,
            self._sock.sendto,
            self._responder.handle,
            self._port,
        )
        for _ in range(_DRAIN_LIMIT):
            try:
                data, (host, source_port) = receive(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A pending ICMP error for an earlier reply (a relay gone away): nothing to undo.
                _log.debug("dhcp receive error", error=str(exc))
                continue
            reply = handle(data, (host, source_port), port)
            if reply is None:
                continue
            try:
                send(reply.data, (reply.host, reply.port))
            except OSError as exc:
                # A full send buffer or an unreachable relay: the client retransmits.
                _log.debug("dhcp send error", error=str(exc), to=reply.host)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


@dataclass(slots=True)
class DhcpService:
    """DHCP on one interface, in full or proxy mode (``name = "dhcp"``)."""

    settings: DhcpSettings
    site: Callable[[IPv4Address], BootSite]
    """Builds the boot site once the interface's address is known."""
    machines: Callable[[], MachineBook]
    state_dir: Path
    timeline: BootTimeline | None = None
    name: str = "dhcp"
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stats: DhcpStats | None = None
    _leases: LeaseTable | None = None

    def mac_for_address(self, address: str) -> bytes | None:
        """The MAC leasing ``address`` in full mode (TFTP and HTTP see only client addresses)."""
        if self._leases is None:
            return None
        try:
            number = int(IPv4Address(address))
        except ValueError:
            return None
        return self._leases.holder(number, time.time())

    async def run(self) -> None:
        settings = self.settings
        interface = settings.interface
        if interface is None:
            raise ConfigError("dhcp.interface is not set")
        own = interface_address(interface)
        network = (
            IPv4Network(f"{own.ip}/{settings.subnet_mask}", strict=False)
            if settings.subnet_mask is not None
            else own.network
        )
        leases = self._leases = self._lease_table(network) if settings.mode == "full" else None
        responder = DhcpResponder(
            config=DhcpConfig(
                mode=settings.mode,
                server=own.ip,
                network=network,
                lease_time=settings.lease_time,
                routers=tuple(settings.routers),
                dns_servers=tuple(settings.dns_servers),
                domain_name=settings.domain_name,
            ),
            site=self.site(own.ip),
            machines=self.machines,
            leases=leases,
            timeline=self.timeline,
        )
        self.stats = responder.stats
        ports = [settings.port] + ([settings.proxy_port] if settings.mode == "proxy" else [])
        loop = asyncio.get_running_loop()
        endpoints: list[_DhcpSocket] = []
        try:
            for port in ports:
                endpoint = _DhcpSocket(
                    _bound_socket(interface, port),
                    responder,
                    PXE_PORT if port == settings.proxy_port else port,
                )
                endpoints.append(endpoint)
                loop.add_reader(endpoint.fileno(), endpoint.on_readable)
            self.ready.set()
            _log.info(
                "dhcp listening",
                interface=interface,
                address=str(own.ip),
                mode=settings.mode,
                ports=ports,
            )
            await asyncio.Event().wait()
        finally:
            for endpoint in endpoints:
                loop.remove_reader(endpoint.fileno())
                endpoint.close()
            if leases is not None:
                leases.close()

    def _lease_table(self, network: IPv4Network) -> LeaseTable:
        settings = self.settings
        if settings.pool_start is None or settings.pool_end is None:
            raise ConfigError("dhcp: full mode needs dhcp.pool_start and dhcp.pool_end")
        for key, address in (("pool_start", settings.pool_start), ("pool_end", settings.pool_end)):
            if address not in network:
                raise ConfigError(f"dhcp.{key}: {address} is not in {network}")
        try:
            # Known at load time so a journal's lease on a reserved address outside the pool
            # survives; the responder follows later changes of the machine book.
            return LeaseTable(
                settings.pool_start,
                settings.pool_end,
                reservations=reservations(self.machines(), network),
                journal=self.state_dir / "dhcp-leases.jsonl",
            )
        except ValueError as exc:
            raise ConfigError(f"dhcp: {exc}") from exc
