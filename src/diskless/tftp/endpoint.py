"""The I/O shell of the TFTP server: the listening socket, one UDP port per transfer, one thread.

Requests arrive on the listening port (69). Each accepted read gets its own ephemeral port, its
transfer ID (RFC 1350 §4), on the local address the request was sent to (``IP_PKTINFO``), so
replies leave from the address the client talks to even on a multi-homed server. The port has two
sockets: one connected to the client, which the kernel hands the client's datagrams (and which
skips a route lookup per send), and an unconnected sibling that gets everything else sent to the
port and answers it with ERROR 5, so strangers never reach the transfer.

**The data path runs in a thread of its own, not on the asyncio loop.** A lock-step transfer is
one round trip per 1.4 KiB block, so what the server spends per datagram *is* its throughput, and
an asyncio selector loop spends more per wake-up (the selector's key objects, a ``Handle`` per
callback, the ready queue) than the whole of a transfer's own work. :class:`TftpService` therefore
starts one thread that owns a ``select.epoll`` over the listener, every transfer's two sockets, an
``eventfd`` that wakes it to stop and a ``timerfd`` alarm; it drives the sans-I/O
:class:`ReadTransfer` machines and keeps their deadlines in a heap, whose earliest entry the alarm
is set to. ``epoll_wait`` itself never gets a timeout, which would arm and cancel a kernel timer
on every wait, once per datagram. Timers are lazy: a transfer has at most one live heap entry,
and when it comes due before the transfer's (moved-on) deadline it is pushed again at the new
one, so the hot path (ACK in, window out) touches neither the heap nor the alarm. The thread
never touches an asyncio object: the boot timeline and the MAC lookup run on the loop through
``call_soon_threadsafe``, and the counters (:class:`TftpStats`) and ``active_transfers`` are
plain values the thread writes and the loop reads.

A thread is acceptable in a process whose other services (HTTP, iSCSI front end, DHCP) share one
event loop: TFTP carries only the iPXE programs, at the firmware stage of a boot (a few hundred
KiB to a few MiB per machine), and between datagrams the thread sits in ``epoll_wait`` with the
GIL released, so it costs the loop nothing while idle and never spins. While both are busy they
take turns on the GIL like any two Python threads.

Each ACK is read into the transfer's preallocated 1 KiB buffer with ``recv_into`` on the
connected socket, and a whole window goes out as bursts of the transfer's ring buffer, each one
``sendmsg`` with UDP GSO (``UDP_SEGMENT``) where the kernel and route allow it, else one ``send``
per datagram. Nothing a client sends can stop the service: bad datagrams are counted and dropped,
a transfer whose socket fails is ended on its own, and an unexpected error in one transfer ends
that transfer, logged, not the thread. :class:`VirtualFiles` providers are called from the
thread.

**Worker processes.** One thread is one core. With ``tftp.workers = N > 1`` the service also
spawns N - 1 processes, each a :class:`TftpService` of its own (thread, epoll, transfers) on the
same port: every listener is bound with ``SO_REUSEPORT``, so the kernel spreads the clients over
the processes by their address, and a client's retransmitted request reaches the process that
already serves it. A worker tells the main process over a pipe about each transfer it finished
(the boot timeline and the MAC lookup stay in the main process) and reports its counters once a
second when they changed; :meth:`TftpService.counters` sums them. Virtual files are served by the
main process only (a provider is a Python callable that cannot cross into a spawned process), so
a service with virtual files runs one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import heapq
import multiprocessing
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from diskless.boot.events import BootEvent, BootStage, BootTimeline
from diskless.config import BootSettings, LoggingSettings, TftpSettings
from diskless.errors import ConfigError, DisklessError
from diskless.observe.log import get_logger
from diskless.workers import Worker, detach, run_worker, serve_until_stopped, stop_workers

from .codec import (
    MAX_REQUEST_LENGTH,
    ErrorCode,
    MalformedPacket,
    Opcode,
    Request,
    encode_error,
    parse_packet,
)
from .files import ClientAddress, FileCatalog, FileRefused, VirtualFiles
from .session import Burst, Outcome, ReadTransfer, TransferLimits, open_transfer
from .stats import TftpStats

__all__ = ["MacResolver", "TftpService"]

_log = get_logger(__name__)

MacResolver = Callable[[str], bytes | None]
"""Maps a client's IP address to its MAC (e.g. from DHCP leases), or ``None`` if unknown."""

# Python 3.11 does not export IP_PKTINFO; 8 is its value on Linux, the only platform served.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
# Datagrams the listening and stranger sockets read per wake-up, so one busy socket cannot starve
# the others.
_READ_BATCH = 64
# Readiness events taken from epoll per wait (more stay queued for the next one).
_MAX_EVENTS = 64
# A transfer's receive buffer: an ACK is 4 bytes, an ERROR well under this. A datagram that
# fills the buffer is oversized and dropped.
_RECEIVE_BUFFER = 1024
_ACK_OPCODE = int(Opcode.ACK)
_ERROR_OPCODE = int(Opcode.ERROR)
_UNKNOWN_TID_ERROR = encode_error(ErrorCode.UNKNOWN_TRANSFER_ID, "unknown transfer ID")
# While one transfer runs alone, the thread waits for its next ACK in the receive itself, up to
# this long (SO_RCVTIMEO), instead of in epoll_wait ...
_FOLLOW_WAIT = struct.pack("ll", 0, 1000)  # struct timeval: 1 ms
# ... for at most this many ACKs in a row before it looks at the listener and the timers again.
_FOLLOW_ROUNDS = 64
# UDP generic segmentation offload (Linux 4.18): a send of several equal datagrams end to end.
# Python 3.11 does not export the constant.
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_U16 = struct.Struct("=H")
# What sendmsg fails with where GSO cannot be used.
_NO_SEGMENTATION = frozenset({errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT})
# timerfd (Linux 2.6.25): Python 3.11 has no binding, so libc's is called through ctypes.
_CLOCK_MONOTONIC = 1  # the clock of time.monotonic() on Linux
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Alarm:
    """A timerfd that becomes readable at one absolute ``time.monotonic()`` deadline.

    The thread's epoll waits on it instead of passing a timeout to ``epoll_wait``: a timeout arms
    and cancels a kernel timer on every wait, once per datagram on the hot path, while the alarm
    is set only when the earliest deadline moves (lazy timers make that about once a second).
    """

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd: int = fd
        self.at = float("inf")
        """The deadline set, ``inf`` when none is."""
        self._spec = _Itimerspec()

    def set(self, at: float) -> None:
        """Go off at ``at`` (monotonic seconds) instead of any earlier setting."""
        seconds = int(at)
        value = self._spec.it_value
        value.tv_sec = seconds
        # tv_nsec 0 with tv_sec 0 would disarm the timer: never ask for less than 1 ns.
        value.tv_nsec = max(1, min(999_999_999, int((at - seconds) * 1e9)))
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None):
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.at = at

    def clear(self) -> None:
        """Consume the expiry (the fd stays readable until then)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)
        self.at = float("inf")

    def close(self) -> None:
        os.close(self.fd)


# How long close() waits for the thread (it stops within one wake-up unless a virtual file
# provider hangs it).
_STOP_TIMEOUT = 10.0
_WORKER_START_TIMEOUT = 60.0
SentHook = Callable[[str, str], None]
"""Called on the event loop with (client address, file name) for each completed transfer."""


@dataclass(eq=False, slots=True)
class _Transfer:
    """One transfer's sockets, client and timer around its sans-I/O :class:`ReadTransfer`."""

    machine: ReadTransfer
    sock: socket.socket
    """Connected to the client: the kernel delivers it only the client's datagrams."""
    strangers: socket.socket
    """Bound to the same port, unconnected: gets every other datagram sent to the port."""
    client: ClientAddress
    request: Request
    started: float
    segmentation: list[tuple[int, int, bytes]] | None
    """The ancillary data asking for UDP GSO in segments of one DATA datagram, or ``None`` once
    the kernel refused it."""
    fd: int = -1
    strangers_fd: int = -1
    recv_into: Callable[[bytearray], int] = field(init=False)
    """``sock.recv_into``, bound once: the hot path calls it per ACK."""
    send: Callable[[bytes | memoryview], int] = field(init=False)
    """``sock.send``, bound once."""
    receive_buffer: bytearray = field(default_factory=lambda: bytearray(_RECEIVE_BUFFER))
    timer_at: float | None = None
    """The deadline of the transfer's live heap entry, ``None`` when it has none."""
    timer_key: int = 0
    """The sequence number of the live heap entry; older entries are stale."""
    ended: bool = False

    def __post_init__(self) -> None:
        self.recv_into = self.sock.recv_into
        self.send = self.sock.send


class TftpService:
    """The read-only TFTP server, a :class:`diskless.runtime.Service` named ``tftp``.

    Serves the configured iPXE programs from ``boot.ipxe_dir``, the files under ``root`` and the
    ``virtual`` files (see :mod:`diskless.tftp.files`). A finished transfer is recorded in
    ``timeline`` as :attr:`BootStage.TFTP_SENT` when ``mac_for_address`` knows the client's MAC
    (TFTP itself never learns it); otherwise only the log line names the client. Both are called
    on the event loop; everything else runs in the service's thread (see the module docstring).
    """

    name = "tftp"

    def __init__(
        self,
        settings: TftpSettings,
        boot: BootSettings,
        root: Path,
        timeline: BootTimeline | None = None,
        virtual: VirtualFiles | None = None,
        *,
        mac_for_address: MacResolver | None = None,
        logging: LoggingSettings | None = None,
        on_sent: SentHook | None = None,
        spawn_workers: bool = True,
    ) -> None:
        self._settings = settings
        self._boot = boot
        self._root = root
        self._logging = logging
        self._on_sent = on_sent
        self._worker_count = settings.workers if spawn_workers and virtual is None else 1
        self._reuse_port = settings.workers > 1
        self._workers: list[Worker] = []
        self._worker_stats: dict[int, dict[str, int]] = {}
        self._catalog = FileCatalog(
            root=root,
            ipxe_dir=boot.ipxe_dir,
            loader_names=(
                boot.bios_file,
                boot.uefi_x64_file,
                boot.uefi_ia32_file,
                boot.uefi_arm64_file,
            ),
            virtual=virtual,
        )
        self._limits = TransferLimits(
            max_block_size=settings.max_block_size,
            max_window_size=settings.max_window_size,
            timeout=settings.timeout,
            retries=settings.retries,
        )
        self._timeline = timeline
        self._mac_for_address = mac_for_address
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._epoll: select.epoll | None = None
        self._wake_fd = -1
        self._alarm: _Alarm | None = None
        self._stopping = False
        self._failed: asyncio.Future[None] | None = None
        """Completed with the error if the thread dies of one; :meth:`run` waits on it."""
        # Owned by the thread once it runs (``active_transfers`` reads the dict's length).
        self._transfers: dict[ClientAddress, _Transfer] = {}
        self._by_fd: dict[int, _Transfer] = {}
        self._strangers_by_fd: dict[int, _Transfer] = {}
        self._timers: list[tuple[float, int, ClientAddress]] = []
        self._timer_keys = 0
        self.stats = TftpStats()
        self.ready = asyncio.Event()
        """Set once the listener is bound (``diskless serve`` announces "ready" after it)."""

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound listening address once started (a port of 0 in the settings picks one)."""
        if self._listener is None:
            return None
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def active_transfers(self) -> int:
        return len(self._transfers)

    def counters(self) -> dict[str, int]:
        """This process's counters plus the latest report of every worker process."""
        totals = self.stats.as_dict()
        for report in self._worker_stats.values():
            for name, value in report.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    async def start(self) -> tuple[str, int]:
        """Bind the listening socket and start the thread that serves; returns the bound address.

        Raises :class:`ConfigError` when the address cannot be bound (port 69 needs root or
        ``CAP_NET_BIND_SERVICE``; another TFTP server may hold it).
        """
        if self._listener is not None:
            raise RuntimeError("TFTP service already started")
        loop = asyncio.get_running_loop()
        host, port = self._settings.host, self._settings.port
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            infos = await loop.getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM
            )
            # No SO_REUSEADDR: on UDP it would let a second server (tftpd-hpa, dnsmasq) bind
            # port 69 beside us and silently take half the requests.
            listener.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            if self._reuse_port:
                # Only for our own worker processes: SO_REUSEPORT admits sockets of the same
                # user that set it too, which tftpd-hpa or dnsmasq never do.
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind(infos[0][4])
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            reason = exc.strerror or str(exc)
            raise ConfigError(f"tftp: cannot listen on {host}:{port}: {reason}") from exc
        except BaseException:
            listener.close()
            raise
        epoll = select.epoll()
        wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        alarm = _Alarm()
        epoll.register(listener.fileno(), select.EPOLLIN)
        epoll.register(wake_fd, select.EPOLLIN)
        epoll.register(alarm.fd, select.EPOLLIN)
        self._alarm = alarm
        self._loop = loop
        self._listener = listener
        self._epoll = epoll
        self._wake_fd = wake_fd
        self._stopping = False
        self._failed = loop.create_future()
        self._thread = threading.Thread(target=self._serve, name="tftp", daemon=True)
        self._thread.start()
        address = self.address
        assert address is not None
        if self._worker_count > 1:
            await self._start_workers(address[1])
        _log.info("tftp listening", host=address[0], port=address[1], processes=self._worker_count)
        self.ready.set()
        return address

    async def run(self) -> None:
        """Serve until cancelled, then stop the thread and close every socket and file."""
        try:
            if self._listener is None:
                await self.start()
            assert self._failed is not None
            await self._failed  # completes only if the thread dies of an error
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread, end every transfer (their sockets and files are closed), stop
        listening, stop the worker processes. Idempotent; call it from the event loop's thread."""
        self._stop_workers()
        thread = self._thread
        if thread is not None:
            self._stopping = True
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake_fd, 1)
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive():
                _log.warning("tftp thread did not stop", seconds=_STOP_TIMEOUT)
                return  # it still owns its sockets; the daemon thread dies with the process
            self._thread = None
        if self._failed is not None:
            if self._failed.done() and not self._failed.cancelled():
                self._failed.exception()  # retrieved: run() is not waiting any more
            self._failed = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1
        if self._alarm is not None:
            self._alarm.close()
            self._alarm = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- the thread -----------------------------------------------------------------------------

    def _serve(self) -> None:
        """The thread: wait in epoll, dispatch each ready socket, fire due timers; until closed."""
        try:
            self._serve_until_stopped()
        except BaseException as exc:
            _log.exception("tftp thread failed")
            self._call_on_loop(self._fail, exc)
        finally:
            for transfer in list(self._transfers.values()):
                with contextlib.suppress(Exception):
                    self._end(transfer, "server stopping")

    def _serve_until_stopped(self) -> None:
        epoll = self._epoll
        listener = self._listener
        alarm = self._alarm
        assert epoll is not None
        assert listener is not None
        assert alarm is not None
        alarm_fd = alarm.fd
        poll = epoll.poll
        listener_fd = listener.fileno()
        wake_fd = self._wake_fd
        by_fd = self._by_fd
        strangers_by_fd = self._strangers_by_fd
        monotonic = time.monotonic
        on_ack = self._on_transfer_readable
        while not self._stopping:
            events = poll(-1.0, _MAX_EVENTS)  # no timeout: timers wake us through the alarm
            # One clock reading per wake-up: the handlers of this batch share it.
            now = monotonic()
            for fd, _ in events:
                transfer = by_fd.get(fd)
                try:
                    if transfer is not None:
                        on_ack(transfer, now)
                    elif fd == listener_fd:
                        self._on_request_readable(listener)
                    elif fd == alarm_fd:
                        alarm.clear()
                        self._fire_timers()
                    elif fd == wake_fd:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(wake_fd)
                    else:
                        transfer = strangers_by_fd.get(fd)
                        if transfer is not None:
                            self._on_stranger_readable(transfer)
                except Exception:
                    # A bug, or a virtual file provider that failed: it ends the transfer at
                    # hand, if any, not the server.
                    _log.exception("tftp internal error", fd=fd)
                    if transfer is not None:
                        self._end(transfer, "internal error")

    def _fail(self, exc: BaseException) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(exc)

    def _call_on_loop(self, callback: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                loop.call_soon_threadsafe(callback, *args)

    # -- the listening port ---------------------------------------------------------------------

    def _on_request_readable(self, listener: socket.socket) -> None:
        for _ in range(_READ_BATCH):
            try:
                data, ancillary, flags, address = listener.recvmsg(
                    MAX_REQUEST_LENGTH + 1, socket.CMSG_SPACE(_PKTINFO.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # An ICMP error queued on the socket, for instance: nothing to do with a request.
                _log.debug("tftp listener receive error", error=str(exc))
                continue
            if flags & socket.MSG_TRUNC or len(data) > MAX_REQUEST_LENGTH:
                self.stats.packets_malformed += 1
                continue
            self._handle_request(data, _local_address(ancillary, listener), address)

    def _handle_request(self, data: bytes, local: str, client: ClientAddress) -> None:
        try:
            packet = parse_packet(data)
        except MalformedPacket as exc:
            self.stats.packets_malformed += 1
            _log.debug("tftp malformed request", client=client[0], port=client[1], error=str(exc))
            return
        if not isinstance(packet, Request):
            # ACKs and ERRORs belong on a transfer's port; answering them here could make two
            # misconfigured servers bounce errors at each other.
            self.stats.packets_ignored += 1
            return
        self.stats.requests += 1
        running = self._transfers.get(client)
        if running is not None:
            if running.request == packet:
                # A client that resent its request before our answer arrived: the running
                # transfer's own retransmissions answer it (a second OACK would confuse it).
                self.stats.duplicate_requests += 1
                return
            # A different request from the same port: the client gave up on the first one (for
            # instance refused our OACK and asked again without options).
            self._end(running, "superseded by a new request")
        if len(self._transfers) >= self._settings.max_transfers:
            self._refuse(client, ErrorCode.NOT_DEFINED, "server busy, try again later", packet)
            return
        try:
            machine = open_transfer(packet, self._catalog, client, self._limits, time.monotonic())
        except FileRefused as refusal:
            self._refuse(client, refusal.code, refusal.message, packet)
            return
        except Exception:
            # A bug, or a virtual file provider that failed: this request fails, not the server.
            _log.exception("tftp request failed", client=client[0], file=packet.filename)
            self._refuse(client, ErrorCode.NOT_DEFINED, "internal error", packet)
            return
        try:
            sock, strangers = _transfer_sockets(local, client)
        except OSError as exc:
            machine.close()
            _log.warning("tftp cannot open a transfer socket", error=str(exc))
            self._refuse(client, ErrorCode.NOT_DEFINED, "server busy, try again later", packet)
            return
        segmentation = [(socket.SOL_UDP, _UDP_SEGMENT, _U16.pack(machine.segment_size))]
        transfer = _Transfer(
            machine,
            sock,
            strangers,
            client,
            packet,
            time.monotonic(),
            segmentation,
            sock.fileno(),
            strangers.fileno(),
        )
        epoll = self._epoll
        assert epoll is not None
        self._transfers[client] = transfer
        self._by_fd[transfer.fd] = transfer
        self._strangers_by_fd[transfer.strangers_fd] = transfer
        epoll.register(transfer.fd, select.EPOLLIN)
        epoll.register(transfer.strangers_fd, select.EPOLLIN)
        _log.debug(
            "tftp transfer starting",
            client=client[0],
            port=client[1],
            file=packet.filename,
            options=dict(machine.negotiated.acknowledged or {}),
        )
        self._send(transfer, machine.start(time.monotonic()))
        self._after_input(transfer)

    def _refuse(
        self, client: ClientAddress, code: ErrorCode, message: str, request: Request
    ) -> None:
        self.stats.requests_refused += 1
        _log.info(
            "tftp request refused",
            client=client[0],
            file=request.filename,
            code=int(code),
            reason=message,
        )
        # Sent from the listening port: every client takes the first answer's port as our TID.
        assert self._listener is not None
        with contextlib.suppress(OSError):
            self._listener.sendto(encode_error(code, message), client)

    # -- one transfer ---------------------------------------------------------------------------

    def _on_transfer_readable(self, transfer: _Transfer, now: float) -> None:
        # One datagram per wake-up from epoll: a client sends one ACK per window and then waits,
        # so trying for a second would nearly always cost a failed system call. But while this
        # is the only transfer, its next ACK is awaited in the receive itself (blocking, up to
        # _FOLLOW_WAIT): for a lock-step client that saves an epoll round per block, which is
        # most of what separates a Python server from a forking C one.
        transfers = self._transfers
        rounds = _FOLLOW_ROUNDS
        while self._take_datagram(transfer, now) and len(transfers) == 1 and rounds:
            rounds -= 1
            now = time.monotonic()

    def _take_datagram(self, transfer: _Transfer, now: float) -> bool:
        """Read and act on one datagram; whether the transfer goes on after answering it."""
        buffer = transfer.receive_buffer
        try:
            count = transfer.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # ECONNREFUSED: an ICMP port unreachable came back, the client is gone.
            self._end(transfer, f"receive failed: {exc.strerror or exc}")
            return False
        machine = transfer.machine
        if 4 <= count < _RECEIVE_BUFFER and buffer[1] == _ACK_OPCODE and buffer[0] == 0:
            # The one packet of the hot path, decoded without building an Ack.
            bursts = machine.on_ack((buffer[2] << 8) | buffer[3], now)
        elif count >= _RECEIVE_BUFFER:
            self.stats.packets_malformed += 1
            return False
        else:
            try:
                packet = parse_packet(memoryview(buffer)[:count])
            except MalformedPacket:
                self.stats.packets_malformed += 1
                return False
            bursts = machine.on_packet(packet, now)
        if bursts:
            data, segment = bursts[0]
            if len(data) <= segment and len(bursts) == 1:
                # Lock-step: one datagram.
                try:
                    transfer.send(data)
                except (BlockingIOError, InterruptedError):
                    pass  # lost like any dropped packet: the timer brings it back
                except OSError as exc:
                    self._end(transfer, f"send failed: {exc}")
                    return False
            else:
                self._send(transfer, bursts)
                if transfer.ended:
                    return False
            machine.read_ahead()
        if machine.finished:
            self._end(transfer)
            return False
        if transfer.timer_at is None or transfer.timer_at > machine.deadline:
            self._arm_timer(transfer)
        return bool(bursts)

    def _on_stranger_readable(self, transfer: _Transfer) -> None:
        buffer = transfer.receive_buffer
        for _ in range(_READ_BATCH):
            try:
                count, address = transfer.strangers.recvfrom_into(buffer)
            except OSError:  # EAGAIN, or an ICMP error about an earlier ERROR 5
                return
            self.stats.packets_unknown_tid += 1
            # An ERROR is never answered with an ERROR (two servers could bounce them forever).
            if count >= 2 and buffer[0] == 0 and buffer[1] == _ERROR_OPCODE:
                continue
            with contextlib.suppress(OSError):
                transfer.strangers.sendto(_UNKNOWN_TID_ERROR, address)

    def _send(self, transfer: _Transfer, bursts: list[Burst]) -> None:
        sock = transfer.sock
        for data, segment in bursts:
            try:
                if len(data) <= segment:
                    sock.send(data)
                elif transfer.segmentation is not None:
                    # One system call for the whole burst: the kernel cuts it into datagrams.
                    sock.sendmsg([data], transfer.segmentation)
                else:
                    for offset in range(0, len(data), segment):
                        sock.send(data[offset : offset + segment])
            except (BlockingIOError, InterruptedError):
                # Socket buffer full: the rest of the window is lost like any dropped packet,
                # and the client's ACK or our timer brings it back.
                return
            except OSError as exc:
                if transfer.segmentation is not None and exc.errno in _NO_SEGMENTATION:
                    # No UDP GSO on this kernel or route (a device without checksum offload,
                    # a block bigger than the MTU): send datagram by datagram from now on.
                    transfer.segmentation = None
                    self._send(transfer, [(data, segment)])
                    if transfer.ended:
                        return
                    continue
                self._end(transfer, f"send failed: {exc}")
                return

    def _after_input(self, transfer: _Transfer) -> None:
        if transfer.ended:
            return
        machine = transfer.machine
        if machine.finished:
            self._end(transfer)
        elif transfer.timer_at is None or transfer.timer_at > machine.deadline:
            self._arm_timer(transfer)

    def _arm_timer(self, transfer: _Transfer) -> None:
        """Push a heap entry at the transfer's deadline; any earlier entry of it goes stale."""
        self._timer_keys += 1
        transfer.timer_key = self._timer_keys
        deadline = transfer.machine.deadline
        transfer.timer_at = deadline
        heapq.heappush(self._timers, (deadline, self._timer_keys, transfer.client))
        alarm = self._alarm
        if alarm is not None and deadline < alarm.at:
            alarm.set(deadline)

    def _fire_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, key, client = heapq.heappop(timers)
            transfer = self._transfers.get(client)
            if transfer is None or transfer.timer_key != key:
                continue  # stale: the transfer ended, or the entry was replaced
            transfer.timer_at = None
            machine = transfer.machine
            if now >= machine.deadline:
                try:
                    bursts = machine.on_timer(now)
                    if bursts:
                        self._send(transfer, bursts)
                except Exception:
                    _log.exception("tftp internal error", client=client[0])
                    self._end(transfer, "internal error")
                    continue
            self._after_input(transfer)
        # The alarm was consumed: set it for what is left (_arm_timer above set it for new entries).
        alarm = self._alarm
        if timers and alarm is not None and timers[0][0] < alarm.at:
            alarm.set(timers[0][0])

    def _end(self, transfer: _Transfer, error: str = "") -> None:
        """Release everything the transfer holds and account for how it ended. Idempotent.

        The transfer leaves ``_transfers`` last, once its sockets and file are closed and the
        counters (and the timeline, through the loop) have it: whoever sees
        ``active_transfers`` drop sees all of that.
        """
        if transfer.ended:
            return
        transfer.ended = True
        epoll = self._epoll
        for fd, by_fd in (
            (transfer.fd, self._by_fd),
            (transfer.strangers_fd, self._strangers_by_fd),
        ):
            if by_fd.get(fd) is transfer:
                del by_fd[fd]
            if epoll is not None:
                with contextlib.suppress(OSError, ValueError):
                    epoll.unregister(fd)
        transfer.sock.close()
        transfer.strangers.close()
        machine = transfer.machine
        machine.close()
        self.stats.bytes_sent += machine.bytes_sent
        self.stats.retransmissions += machine.retransmissions
        client, name = transfer.client, transfer.request.filename
        seconds = round(time.monotonic() - transfer.started, 3)
        if machine.outcome is Outcome.COMPLETED:
            if self._on_sent is not None:
                self._call_on_loop(self._on_sent, client[0], name)
            elif self._timeline is not None and self._mac_for_address is not None:
                self._call_on_loop(self._record, client[0], name)
            self.stats.transfers_completed += 1
            _log.info(
                "tftp sent",
                client=client[0],
                file=name,
                origin=machine.origin,
                bytes=machine.bytes_sent,
                seconds=seconds,
            )
        elif machine.outcome is Outcome.TIMED_OUT:
            self.stats.transfers_timed_out += 1
            _log.info("tftp transfer timed out", client=client[0], file=name, reason=machine.reason)
        else:
            self.stats.transfers_failed += 1
            _log.info(
                "tftp transfer failed", client=client[0], file=name, reason=error or machine.reason
            )
        if self._transfers.get(client) is transfer:
            del self._transfers[client]
        self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop stale heap entries once they outnumber the live ones, so the heap stays bounded
        however many transfers come and go within a long timeout."""
        timers = self._timers
        if len(timers) <= 2 * len(self._transfers) + 64:
            return
        transfers = self._transfers
        live = [
            entry
            for entry in timers
            if (transfer := transfers.get(entry[2])) is not None and transfer.timer_key == entry[1]
        ]
        heapq.heapify(live)
        timers[:] = live

    def _record(self, address: str, name: str) -> None:
        """On the loop: the finished transfer in the boot timeline, if the client's MAC is known."""
        if self._timeline is None or self._mac_for_address is None:
            return
        mac = self._mac_for_address(address)
        if mac is not None:
            self._timeline.record(BootEvent(mac, BootStage.TFTP_SENT, time.time(), detail=name))

    # -- worker processes ----------------------------------------------------------------------

    async def _start_workers(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        settings = self._settings.model_copy(update={"port": port})
        started: list[asyncio.Future[None]] = []
        for index in range(1, self._worker_count):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(settings, self._boot, self._root, self._logging, child_end),
                name=f"diskless-tftp-{index}",
                daemon=True,
            )
            process.start()
            child_end.close()
            self._workers.append((process, parent_end))
            future: asyncio.Future[None] = loop.create_future()
            started.append(future)
            loop.add_reader(parent_end.fileno(), self._from_worker, index, parent_end, future)
        done, pending = await asyncio.wait(started, timeout=_WORKER_START_TIMEOUT)
        if pending:
            raise DisklessError("tftp: a worker process did not start in time")
        for future in done:
            future.result()  # a worker that could not bind raises its ConfigError here

    def _from_worker(
        self, index: int, connection: Connection, started: asyncio.Future[None]
    ) -> None:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(connection.fileno())
            failure = DisklessError(f"tftp: worker process {index} exited")
            if not started.done():
                started.set_exception(failure)
            elif self._failed is not None and not self._failed.done():
                self._failed.set_exception(failure)  # run() ends, and with it the service
            return
        kind = message[0]
        if kind == "sent":
            self._record(message[1], message[2])
        elif kind == "stats":
            self._worker_stats[index] = message[1]
        elif kind == "ready" and not started.done():
            started.set_result(None)
        elif kind == "failed" and not started.done():
            started.set_exception(ConfigError(message[1]))

    def _stop_workers(self) -> None:
        workers, self._workers = self._workers, []
        if self._loop is not None:
            detach(workers, self._loop)
        # Each worker ends its transfers and closes its sockets before it exits.
        stop_workers(workers, timeout=_STOP_TIMEOUT, what="tftp")


def _worker_main(
    settings: TftpSettings,
    boot: BootSettings,
    root: Path,
    logging: LoggingSettings | None,
    connection: Connection,
) -> None:
    """A worker process: a :class:`TftpService` on the main one's port, steered over a pipe."""
    run_worker(lambda: _worker(settings, boot, root, connection), connection, logging)


async def _worker(
    settings: TftpSettings, boot: BootSettings, root: Path, connection: Connection
) -> None:
    service = TftpService(
        settings,
        boot,
        root,
        on_sent=lambda address, name: connection.send(("sent", address, name)),
        spawn_workers=False,
    )
    await service.start()
    connection.send(("ready",))
    await serve_until_stopped(
        service.run(), connection, on_message=lambda _: None, report=service.stats.as_dict
    )


def _local_address(ancillary: list[tuple[int, int, bytes]], listener: socket.socket) -> str:
    """The address a request was sent to, from its IP_PKTINFO, else the listener's own."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= _PKTINFO.size:
            _, local, _ = _PKTINFO.unpack_from(data)
            return socket.inet_ntoa(local)
    return str(listener.getsockname()[0])


def _transfer_sockets(local: str, client: ClientAddress) -> tuple[socket.socket, socket.socket]:
    """A fresh port on ``local``, as a socket connected to ``client`` and one that is not.

    The connected socket saves a route lookup per datagram sent and hears of a vanished client
    (ICMP port unreachable) at once; the kernel gives it the client's datagrams, the more specific
    match, and everything else sent to the port goes to the unconnected one, which answers
    ERROR 5 (RFC 1350 §4). The port is picked before SO_REUSEADDR is set, so it is one nobody
    else holds; the option then only lets the second socket share it.
    """
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    strangers = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        connected.bind((local, 0))
        for sock in (connected, strangers):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        strangers.setblocking(False)
        # Blocking, but never for long: the thread waits in its receive for the next ACK while
        # the transfer runs alone (see _on_transfer_readable), and a full send buffer costs at
        # most the same wait before the datagram counts as lost.
        connected.setblocking(True)
        connected.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _FOLLOW_WAIT)
        connected.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _FOLLOW_WAIT)
        strangers.bind(connected.getsockname())
        connected.connect(client)
    except BaseException:
        connected.close()
        strangers.close()
        raise
    return connected, strangers
