"""The asyncio shell of the iSCSI target: TCP connections in, PDUs through the state machines, out.

Each connection is a buffered protocol: the socket reads into one buffer per connection, the login
machine and then the full feature connection answer the PDUs cut from it within the same
callback, and the answers are written at once. Data-In extents that live in a file go out with
``sendfile`` (the golden image never passes through Python), unless a data digest must be computed
over them. Bad input never takes the server down: a PDU that can't be decoded is rejected or, if
its framing is lost, the connection is closed; other sessions carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from diskless.iscsi.connection import Frame, FullFeatureConnection
from diskless.iscsi.discovery import PortalInfo
from diskless.iscsi.errors import DigestError, MalformedPdu
from diskless.iscsi.login import LOGIN_MAX_DATA_SEGMENT_LENGTH, LoginMachine, LoginResult
from diskless.iscsi.negotiation import Digest, TargetLimits
from diskless.iscsi.pdu import (
    BHS_LENGTH,
    DIGEST_LENGTH,
    DataDigest,
    LoginRequest,
    Opcode,
    RejectReason,
    Request,
    ScsiCommand,
    decode_bare_scsi_command,
    decode_request,
    header_digest,
    pad_length,
    parse_bhs,
)
from diskless.iscsi.target import Session, SessionRegistry, TargetRegistry
from diskless.iscsi.window import CommandWindow
from diskless.storage.blockdev import BufferExtent, Extent, FileExtent, ZeroExtent
from diskless.storage.fileio import pread_exact

__all__ = ["LOGIN_TIMEOUT", "IscsiPortal", "PortalStats"]

_log = logging.getLogger("diskless.iscsi")

# Below this many bytes a FileExtent is read and written: sendfile's fixed cost (pausing the
# transport, waiting for its buffer to drain) outweighs one copy of a small block.
SENDFILE_MIN_BYTES = 64 << 10
# TCP keepalive reaps connections whose peer vanished, e.g. iPXE's session after the OS took the
# NIC over (iPXE never answers NOP-In pings, so pings can't be used for it).
_KEEPALIVE_IDLE = 30
_KEEPALIVE_INTERVAL = 10
_KEEPALIVE_COUNT = 3
# A login that does not finish in this time is abandoned (initiators give up after 15 s).
LOGIN_TIMEOUT = 30.0
# How long close() waits for connections to wind down after their transports were aborted.
_CLOSE_GRACE = 5.0
_ZEROS = bytes(256 << 10)
# The receive buffer during login: one login PDU (48 + AHS + 8 KiB of text) fits with room over.
_LOGIN_BUFFER = 16 << 10
# Room the socket gets to read into at least, once past login: a burst of pipelined commands.
_MIN_FREE = 64 << 10
_MAX_AHS = 255 * 4  # TotalAHSLength is one byte of 4-byte words
# Answers gathered before they are sent and the socket's backlog is looked at: at most this many
# Data-In segments (each up to the initiator's MaxRecvDataSegmentLength) wait in memory.
_FLUSH_FRAMES = 16


@dataclass(slots=True)
class PortalStats:
    """Counters for the metrics endpoint and the tests."""

    connections: int = 0
    logins: int = 0
    login_failures: int = 0
    malformed_pdus: int = 0
    commands: int = 0


class IscsiPortal:
    """An iSCSI portal: a listening socket serving the targets in ``targets``."""

    def __init__(
        self,
        targets: TargetRegistry,
        *,
        limits: TargetLimits | None = None,
        portal: PortalInfo | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        login_timeout: float = LOGIN_TIMEOUT,
        on_session: Callable[[LoginResult, bool], None] | None = None,
    ) -> None:
        """``on_session(result, started)`` hears of each normal session's start and end."""
        self._targets = targets
        self._on_session = on_session
        self._sessions = SessionRegistry()
        self._limits = limits or TargetLimits()
        self._portal = portal or PortalInfo()
        self._random_bytes = random_bytes
        self._login_timeout = login_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.stats = PortalStats()

    @property
    def sessions(self) -> SessionRegistry:
        return self._sessions

    @property
    def targets(self) -> TargetRegistry:
        return self._targets

    async def start(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> list[tuple[str, int]]:
        """Listen on ``host:port``; returns the bound addresses (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, loop),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        addresses = [sock.getsockname()[:2] for sock in self._server.sockets]
        if not self._portal.addresses:
            self._portal = PortalInfo(
                self._portal.target_portal_group_tag, tuple((a[0], a[1]) for a in addresses)
            )
        return [(str(a[0]), int(a[1])) for a in addresses]

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, drop every connection, and wait until each is wound down."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        if connections:
            await asyncio.wait([c.finished for c in connections], timeout=_CLOSE_GRACE)
        if self._server is not None:
            await self._server.wait_closed()

    def _new_login(self) -> LoginMachine:
        return LoginMachine(
            self._portal,
            self._targets,
            self._sessions,
            self._limits,
            self._random_bytes,
            initial_statsn=int.from_bytes(self._random_bytes(4), "big"),
        )

    def _full_feature(self, result: LoginResult, session: Session) -> FullFeatureConnection:
        target = self._targets.get(result.target_name) if result.target_name else None
        return FullFeatureConnection(
            parameters=result.parameters,
            session_type=result.session_type,
            initiator_name=result.initiator_name,
            nexus=session.nexus,
            logical_unit=target.logical_unit if target is not None else None,
            target_name=result.target_name,
            directory=self._targets,
            portal=self._portal,
            window=CommandWindow(result.expcmdsn, _window_depth(result)),
            statsn=result.statsn,
        )

    def _notify(self, result: LoginResult, *, started: bool) -> None:
        if self._on_session is None or result.target is None:
            return
        try:
            self._on_session(result, started)
        except Exception:
            # An observer's bug must not take a client's disk away.
            _log.exception("iSCSI session observer failed")


class _Connection(asyncio.BufferedProtocol):
    """One TCP connection: its login, then its full feature phase, all in transport callbacks.

    The socket reads straight into one buffer per connection (``get_buffer``), and the PDUs that
    arrived are cut from it and answered in the same callback (``buffer_updated``): no stream copy
    and no task wake-up per command. When the socket can't take our answers as fast as they are
    made, reading pauses (``pause_writing``), so a connection holds at most one buffer of
    requests and about ``_FLUSH_FRAMES`` Data-In segments of answers.
    """

    def __init__(self, portal: IscsiPortal, loop: asyncio.AbstractEventLoop) -> None:
        self._portal = portal
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._peer: object = None
        self._socket_fd = -1
        # asyncio's socket wrapper cannot send with flags; a second descriptor of the same socket
        # can, and MSG_MORE lets a Data-In header leave in one segment with its file data.
        self._flagged: socket.socket | None = None
        self._buffer = bytearray(_LOGIN_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = 0  # first byte not yet consumed
        self._end = 0  # one past the last byte received
        self._skip = 0  # bytes of a rejected PDU still to discard as they arrive
        self._max_segment = LOGIN_MAX_DATA_SEGMENT_LENGTH
        self._header_digest = False
        self._data_digest = False
        self._paused = False
        self._login: LoginMachine | None = None
        self._login_timer: asyncio.TimerHandle | None = None
        self._result: LoginResult | None = None
        self._session: Session | None = None
        self._connection: FullFeatureConnection | None = None
        self.finished: asyncio.Future[None] = loop.create_future()

    # -- transport callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        portal = self._portal
        portal._connections.add(self)
        portal.stats.connections += 1
        self._peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        _tune_socket(sock)
        if sock is not None:
            self._socket_fd = sock.fileno()
            with contextlib.suppress(OSError):  # out of descriptors: headers go without MSG_MORE
                self._flagged = socket.socket(fileno=os.dup(self._socket_fd))
        self._login = portal._new_login()
        self._login_timer = self._loop.call_later(portal._login_timeout, self._login_expired)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buffer) - self._end < _MIN_FREE:
            self._compact(len(self._buffer))
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if self._skip:
            self._discard()
        self._process_or_drop()

    def eof_received(self) -> bool:
        return False  # the initiator is done sending: close our side too

    def pause_writing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.resume_reading()
        self._process_or_drop()

    def connection_lost(self, exc: Exception | None) -> None:
        portal = self._portal
        portal._connections.discard(self)
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self._flagged is not None:
            self._flagged.close()
            self._flagged = None
        try:
            if self._connection is not None:
                self._connection.close()
            if self._session is not None and self._result is not None:
                portal.sessions.release(self._session)
                portal._notify(self._result, started=False)
                _log.info(
                    "iSCSI session closed: initiator=%s target=%s tsih=%d",
                    self._result.initiator_name,
                    self._result.target_name,
                    self._result.tsih,
                )
        finally:
            if not self.finished.done():
                self.finished.set_result(None)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- the receive buffer ---------------------------------------------------------------------

    def _compact(self, capacity: int) -> None:
        """Move the unconsumed bytes to the front of a buffer of ``capacity`` bytes."""
        pending = bytes(self._view[self._start : self._end])
        if capacity != len(self._buffer):
            # A new buffer, not a resize: the transport may still hold a view of the old one.
            self._buffer = bytearray(capacity)
            self._view = memoryview(self._buffer)
        self._view[: len(pending)] = pending
        self._start, self._end = 0, len(pending)

    def _discard(self) -> None:
        dropped = min(self._skip, self._end - self._start)
        self._start += dropped
        self._skip -= dropped

    def _consume(self, total: int) -> bool:
        """Step over a PDU of ``total`` bytes; False (nothing consumed) until all of it is here."""
        if self._end - self._start >= total:
            self._start += total
            return True
        if total > len(self._buffer) - _MIN_FREE:
            self._skip = total  # bigger than we would ever buffer: drop it as it arrives
            self._discard()
            return True
        return False

    # -- processing -----------------------------------------------------------------------------

    def _process_or_drop(self) -> None:
        try:
            self._process()
        except Exception:
            # A bug met by one connection's input must not reach the event loop: drop it alone.
            _log.exception("iSCSI connection from %s failed", self._peer)
            self.abort()

    def _process(self) -> None:
        transport = self._transport
        if self._paused or transport is None or transport.is_closing():
            return
        if self._connection is None:
            self._process_login(transport)
        if self._connection is not None and not transport.is_closing():
            self._process_full_feature(self._connection, transport)

    def _login_expired(self) -> None:
        self._login_timer = None
        _log.warning("iSCSI login from %s timed out", self._peer)
        if self._transport is not None:
            self._transport.close()

    def _process_login(self, transport: asyncio.Transport) -> None:
        machine = self._login
        assert machine is not None
        portal = self._portal
        while self._end - self._start >= BHS_LENGTH:
            start = self._start
            try:
                header = parse_bhs(
                    self._view[start : start + BHS_LENGTH],
                    max_data_segment_length=LOGIN_MAX_DATA_SEGMENT_LENGTH,
                )
            except MalformedPdu as exc:
                portal.stats.malformed_pdus += 1
                _log.warning("malformed PDU during login, closing the connection: %s", exc)
                transport.close()
                return
            length = header.data_segment_length
            ahs_end = start + BHS_LENGTH + header.total_ahs_length
            total = ahs_end - start + length + pad_length(length)
            if self._end - start < total:
                return
            self._start = start + total
            ahs = bytes(self._view[start + BHS_LENGTH : ahs_end])
            data = bytes(self._view[ahs_end : ahs_end + length])
            if header.opcode is not Opcode.LOGIN_REQUEST:
                step = machine.receive_other(header)
                if step is not None:
                    transport.write(step.pdu)
                transport.close()
                return
            try:
                request = decode_request(header, ahs, data)
            except MalformedPdu as exc:
                portal.stats.malformed_pdus += 1
                _log.warning("malformed login request from %s, closing: %s", self._peer, exc)
                transport.close()
                return
            assert isinstance(request, LoginRequest)
            step = machine.receive(request)
            transport.write(step.pdu)
            if step.close:
                portal.stats.login_failures += 1
                _log.warning(
                    "iSCSI login from %s refused (%02x%02x): %s",
                    self._peer,
                    step.status_class,
                    step.status_detail,
                    step.reason,
                )
                transport.close()
                return
            if step.result is not None:
                self._enter_full_feature(step.result, transport)
                return

    def _enter_full_feature(self, result: LoginResult, transport: asyncio.Transport) -> None:
        portal = self._portal
        portal.stats.logins += 1
        _log.info(
            "iSCSI login: initiator=%s target=%s isid=%s tsih=%d from %s",
            result.initiator_name,
            result.target_name,
            result.isid.hex(),
            result.tsih,
            self._peer,
        )
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        session = portal.sessions.get(result.tsih)
        if session is None:  # reinstated away already
            transport.close()
            return
        # Reinstatement drops this connection; connection_lost then releases the session.
        session.close = transport.abort
        self._result, self._session = result, session
        params = result.parameters
        self._max_segment = params.max_recv_data_segment_length
        self._header_digest = params.header_digest is Digest.CRC32C
        self._data_digest = params.data_digest is Digest.CRC32C
        largest_pdu = BHS_LENGTH + _MAX_AHS + 2 * DIGEST_LENGTH + self._max_segment + 3
        self._compact(largest_pdu + _MIN_FREE)
        self._connection = portal._full_feature(result, session)
        portal._notify(result, started=True)

    def _process_full_feature(
        self, connection: FullFeatureConnection, transport: asyncio.Transport
    ) -> None:
        # Answer every PDU already received, then write all the answers at once: with many
        # commands in flight this is one send() per batch instead of one per PDU.
        stats = self._portal.stats
        frames: list[Frame] = []
        buffer = self._buffer
        bare = not self._header_digest
        while self._end - self._start >= BHS_LENGTH:
            if len(frames) >= _FLUSH_FRAMES:
                # A long pipeline of reads: send what is ready, and leave the rest of the
                # requests in the buffer while the socket is full (resume_writing comes back).
                if self._send(frames, connection):
                    transport.close()
                    return
                frames = []
                if self._paused:
                    return
            if bare:
                command = decode_bare_scsi_command(buffer, self._start)
                if command is not None:
                    self._start += BHS_LENGTH
                    stats.commands += 1
                    frames += connection.receive(command)
                    continue
            try:
                pdu = self._next_pdu()
            except DigestError as exc:
                stats.malformed_pdus += 1
                _log.warning("data digest error from %s: %s", self._peer, exc)
                frames.append(connection.reject(RejectReason.DATA_DIGEST_ERROR, exc.bhs or b""))
                continue
            except MalformedPdu as exc:
                stats.malformed_pdus += 1
                if exc.data_segment_length is None:
                    _log.warning("malformed PDU from %s, closing: %s", self._peer, exc)
                    self._send(frames, connection)
                    transport.close()
                    return
                _log.warning("malformed PDU from %s rejected: %s", self._peer, exc)
                frames.append(connection.reject(exc.reject_reason, exc.bhs or b""))
                continue
            if pdu is None:
                break
            if isinstance(pdu, ScsiCommand):
                stats.commands += 1
            frames += connection.receive(pdu)
        if frames and self._send(frames, connection):
            transport.close()

    def _next_pdu(self) -> Request | None:
        """The next complete PDU through the general path, or None until more bytes arrive.

        Raises :class:`MalformedPdu` (already skipped when its lengths were readable, so the
        caller can Reject it and go on) or :class:`DigestError`.
        """
        view = self._view
        start = self._start
        raw = bytes(view[start : start + BHS_LENGTH])
        try:
            header = parse_bhs(raw, max_data_segment_length=self._max_segment)
        except MalformedPdu as exc:
            if exc.data_segment_length is None:
                raise
            total = BHS_LENGTH + self._rest(exc.total_ahs_length or 0, exc.data_segment_length)
            if not self._consume(total):
                return None  # skip it once it is all here, then Reject
            raise
        ahs_length, length = header.total_ahs_length, header.data_segment_length
        total = BHS_LENGTH + self._rest(ahs_length, length)
        if not self._consume(total):
            return None
        offset = start + BHS_LENGTH
        ahs = bytes(view[offset : offset + ahs_length])
        offset += ahs_length
        if self._header_digest:
            if bytes(view[offset : offset + DIGEST_LENGTH]) != header_digest(raw + ahs):
                # RFC 7143 §7.8: a header that fails its digest can't be trusted for framing.
                raise MalformedPdu("header digest error", bhs=raw)
            offset += DIGEST_LENGTH
        # A Data-Out's data is copied into its write buffer before this batch ends, so it can
        # stay a view of the receive buffer; anything else may be kept (immediate data waiting
        # for a write buffer, text) and gets bytes of its own.
        data: bytes | memoryview = view[offset : offset + length]
        if header.opcode is not Opcode.DATA_OUT:
            data = bytes(data)
        if self._data_digest and length:
            end = offset + length + pad_length(length)
            digest = DataDigest()
            digest.update(data)
            if bytes(view[end : end + DIGEST_LENGTH]) != digest.digest():
                raise DigestError("data digest mismatch", bhs=raw, data_segment_length=length)
        return decode_request(header, ahs, data)

    def _rest(self, ahs_length: int, data_length: int) -> int:
        rest = ahs_length + data_length + pad_length(data_length)
        if self._header_digest:
            rest += DIGEST_LENGTH
        if self._data_digest and data_length:
            rest += DIGEST_LENGTH
        return rest

    # -- sending --------------------------------------------------------------------------------

    def _send(self, frames: list[Frame], connection: FullFeatureConnection) -> bool:
        """Send ``frames``; True when the connection must close afterwards.

        Everything up to a sendfile goes to the transport in one ``writelines``, so a batch of
        small answers costs one ``send`` rather than one per PDU.
        """
        transport = self._transport
        assert transport is not None
        close = False
        parts: list[bytes | bytearray | memoryview] = []
        for frame in frames:
            header = frame.header
            parts.append(header)
            if self._header_digest:
                parts.append(header_digest(header))
            data = frame.data
            if isinstance(data, list):
                if (
                    self._data_digest
                    or frame.data_length < SENDFILE_MIN_BYTES
                    or not _has_file(data)
                ):
                    self._append_data(parts, _materialize(data, frame.data_length))
                else:
                    self._write_before_file(transport, parts)
                    parts = []
                    self._stream(transport, data, frame.data_length)
            else:
                self._append_data(parts, data)
            close = close or frame.close_after
        if parts:
            transport.writelines(parts)
        return close

    def _write_before_file(
        self, transport: asyncio.Transport, parts: list[bytes | bytearray | memoryview]
    ) -> None:
        """Queue ``parts`` ahead of file data: with ``MSG_MORE`` when they can go out now."""
        flagged = self._flagged
        if flagged is None or transport.get_write_buffer_size():
            transport.writelines(parts)
            return
        data = b"".join(parts)
        try:
            sent = flagged.send(data, socket.MSG_MORE)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])

    def _append_data(
        self, parts: list[bytes | bytearray | memoryview], data: bytes | bytearray | memoryview
    ) -> None:
        if not data:
            return
        parts.append(data)
        padding = pad_length(len(data))
        if padding:
            parts.append(bytes(padding))
        if self._data_digest:
            digest = DataDigest()
            digest.update(data)
            parts.append(digest.digest())

    def _stream(self, transport: asyncio.Transport, extents: list[Extent], length: int) -> None:
        """Write a Data-In segment piece by piece, file extents with ``sendfile``.

        While the transport has nothing queued, ``os.sendfile`` goes straight to the socket: one
        syscall and no copy through Python. What the socket can't take at once is read and
        queued on the transport like any other data, so the connection never waits here
        (``loop.sendfile`` would pause the transport and wait for it to drain, which costs more
        than the copy it saves).
        """
        for extent in extents:
            if isinstance(extent, FileExtent):
                offset, remaining = extent.offset, extent.length
                if self._socket_fd >= 0 and transport.get_write_buffer_size() == 0:
                    offset, remaining = _sendfile_now(self._socket_fd, extent.fd, offset, remaining)
                if remaining:
                    rest = bytearray(remaining)
                    pread_exact(extent.fd, memoryview(rest), offset)
                    transport.write(rest)
            elif isinstance(extent, ZeroExtent):
                _write_zeros(transport, extent.length)
            else:
                transport.write(bytes(extent.data))
        padding = pad_length(length)
        if padding:
            transport.write(bytes(padding))


def _window_depth(result: LoginResult) -> int:
    return max(1, (result.maxcmdsn - result.expcmdsn) % (1 << 32) + 1)


def _tune_socket(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_COUNT)


def _write_zeros(transport: asyncio.Transport, count: int) -> None:
    while count:
        step = min(count, len(_ZEROS))
        transport.write(memoryview(_ZEROS)[:step])
        count -= step


def _sendfile_now(socket_fd: int, fd: int, offset: int, count: int) -> tuple[int, int]:
    """Send as much as the socket takes right now; returns the new (offset, remaining).

    Past the end of the file (a sparse tail) nothing is sent; the caller's read gives zeros.
    """
    while count:
        try:
            sent = os.sendfile(socket_fd, fd, offset, count)
        except BlockingIOError:
            break
        if sent == 0:
            break
        offset += sent
        count -= sent
    return offset, count


def _has_file(extents: list[Extent]) -> bool:
    return any(isinstance(extent, FileExtent) for extent in extents)


def _materialize(extents: list[Extent], length: int) -> bytearray:
    buffer = bytearray(length)
    view = memoryview(buffer)
    position = 0
    for extent in extents:
        end = position + extent.length
        if isinstance(extent, FileExtent):
            pread_exact(extent.fd, view[position:end], extent.offset)
        elif isinstance(extent, BufferExtent):
            view[position:end] = extent.data
        position = end
    return buffer
