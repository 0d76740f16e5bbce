"""The asyncio shell of the iSCSI target: TCP connections in, PDUs through the state machines, out.

One task per connection reads PDUs with their digests, feeds the login machine and then the full
feature connection, and writes what they answer. Data-In extents that live in a file go out with
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
from diskless.iscsi.negotiation import Digest, SessionParameters, TargetLimits
from diskless.iscsi.pdu import (
    BHS_LENGTH,
    DIGEST_LENGTH,
    BasicHeader,
    DataDigest,
    LoginRequest,
    Opcode,
    RejectReason,
    Request,
    ScsiCommand,
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
# Bytes asked of the socket at a time: a few PDUs' worth, and one 256 KiB Data-Out.
_READ_CHUNK = 256 << 10


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
        # Each connection's task and writer: closing a connection aborts its transport, so the
        # task ends through its normal path instead of being cancelled mid-PDU.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
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
        self._server = await asyncio.start_server(
            self._accept, host, port, reuse_address=True, reuse_port=reuse_port or None
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
        """Stop listening, drop every connection, and wait for their tasks to finish."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for writer in self._connections.values():
            writer.transport.abort()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=_CLOSE_GRACE)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    # -- one connection -------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self.stats.connections += 1
        peer = writer.get_extra_info("peername")
        _tune_socket(writer.get_extra_info("socket"))
        link = _Link(reader, writer)
        try:
            await self._serve(link, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the initiator went away (or we dropped it); its tasks die with the connection
        except TimeoutError:
            _log.warning("iSCSI login from %s timed out", peer)
        except Exception:
            _log.exception("iSCSI connection from %s failed", peer)
        finally:
            self._connections.pop(task, None)
            link.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, link: _Link, peer: object) -> None:
        machine = LoginMachine(
            self._portal,
            self._targets,
            self._sessions,
            self._limits,
            self._random_bytes,
            initial_statsn=int.from_bytes(self._random_bytes(4), "big"),
        )
        result = await asyncio.wait_for(self._login(link, machine, peer), self._login_timeout)
        if result is None:
            return
        session = self._sessions.get(result.tsih)
        if session is None:  # reinstated away before we got here
            return
        transport = link.writer.transport

        def drop_connection() -> None:
            # Reinstatement: the old connection's reads fail and its task ends normally.
            transport.abort()

        session.close = drop_connection
        observed = self._on_session is not None and result.target is not None
        if observed:
            self._notify(result, started=True)
        try:
            await self._full_feature(link, result, session, peer)
        finally:
            self._sessions.release(session)
            if observed:
                self._notify(result, started=False)
            _log.info(
                "iSCSI session closed: initiator=%s target=%s tsih=%d",
                result.initiator_name,
                result.target_name,
                result.tsih,
            )

    def _notify(self, result: LoginResult, *, started: bool) -> None:
        assert self._on_session is not None
        try:
            self._on_session(result, started)
        except Exception:
            # An observer's bug must not take a client's disk away.
            _log.exception("iSCSI session observer failed")

    async def _login(self, link: _Link, machine: LoginMachine, peer: object) -> LoginResult | None:
        while True:
            header = await self._read_header(link)
            if header is None:
                return None
            ahs, data = await link.read_login_rest(header)
            if header.opcode is not Opcode.LOGIN_REQUEST:
                step = machine.receive_other(header)
                if step is not None:
                    await link.write([step.pdu])
                return None
            request = decode_request(header, ahs, data)
            assert isinstance(request, LoginRequest)
            step = machine.receive(request)
            await link.write([step.pdu])
            if step.close:
                self.stats.login_failures += 1
                _log.warning(
                    "iSCSI login from %s refused (%02x%02x): %s",
                    peer,
                    step.status_class,
                    step.status_detail,
                    step.reason,
                )
                return None
            if step.result is not None:
                self.stats.logins += 1
                _log.info(
                    "iSCSI login: initiator=%s target=%s isid=%s tsih=%d from %s",
                    step.result.initiator_name,
                    step.result.target_name,
                    step.result.isid.hex(),
                    step.result.tsih,
                    peer,
                )
                return step.result

    async def _read_header(self, link: _Link) -> BasicHeader | None:
        """The next login-phase BHS; None (close) if it can't be parsed."""
        raw = await link.reader.readexactly(BHS_LENGTH)
        try:
            return parse_bhs(raw, max_data_segment_length=LOGIN_MAX_DATA_SEGMENT_LENGTH)
        except MalformedPdu as exc:
            self.stats.malformed_pdus += 1
            _log.warning("malformed PDU during login, closing the connection: %s", exc)
            return None

    async def _full_feature(
        self, link: _Link, result: LoginResult, session: Session, peer: object
    ) -> None:
        target = self._targets.get(result.target_name) if result.target_name else None
        params = result.parameters
        connection = FullFeatureConnection(
            parameters=params,
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
        link.configure(params)
        pdus = _PduBuffer(link.reader, params)
        try:
            while True:
                # Answer every PDU already received, then write all the answers at once: with
                # many commands in flight this is one send() per batch instead of one per PDU.
                frames: list[Frame] = []
                while True:
                    try:
                        pdu = pdus.next()
                    except DigestError as exc:
                        self.stats.malformed_pdus += 1
                        _log.warning("data digest error from %s: %s", peer, exc)
                        frames.append(
                            connection.reject(RejectReason.DATA_DIGEST_ERROR, exc.bhs or b"")
                        )
                        continue
                    except MalformedPdu as exc:
                        self.stats.malformed_pdus += 1
                        if exc.data_segment_length is None:
                            _log.warning("malformed PDU from %s, closing: %s", peer, exc)
                            await link.write_frames(frames, connection)
                            return
                        _log.warning("malformed PDU from %s rejected: %s", peer, exc)
                        frames.append(connection.reject(exc.reject_reason, exc.bhs or b""))
                        continue
                    if pdu is None:
                        break
                    if isinstance(pdu, ScsiCommand):
                        self.stats.commands += 1
                    frames += connection.receive(pdu)
                if frames and await link.write_frames(frames, connection):
                    return
                if not await pdus.fill():
                    return
        finally:
            connection.close()


class _PduBuffer:
    """Whole PDUs out of the byte stream of one connection, as many as have arrived.

    Reading in large chunks and cutting PDUs out of them costs one ``read`` for a burst of
    pipelined commands, where ``readexactly`` per header and segment would cost two each.
    """

    def __init__(self, reader: asyncio.StreamReader, params: SessionParameters) -> None:
        self._reader = reader
        self._buffer = bytearray()
        self._position = 0
        self._max_segment = params.max_recv_data_segment_length
        self._header_digest = params.header_digest is Digest.CRC32C
        self._data_digest = params.data_digest is Digest.CRC32C

    async def fill(self) -> bool:
        """Wait for more bytes; False at end of stream."""
        if self._position:
            del self._buffer[: self._position]
            self._position = 0
        chunk = await self._reader.read(_READ_CHUNK)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def next(self) -> Request | None:
        """The next complete PDU, or None until more bytes arrive.

        Raises :class:`MalformedPdu` (already skipped when its lengths were readable, so the
        caller can Reject it and go on) or :class:`DigestError`.
        """
        buffer = self._buffer
        start = self._position
        available = len(buffer) - start
        if available < BHS_LENGTH:
            return None
        raw = bytes(buffer[start : start + BHS_LENGTH])
        try:
            header = parse_bhs(raw, max_data_segment_length=self._max_segment)
        except MalformedPdu as exc:
            if exc.data_segment_length is None:
                raise
            total = BHS_LENGTH + self._rest(exc.total_ahs_length or 0, exc.data_segment_length)
            if available < total:
                return None  # skip it once it is all here, then Reject
            self._position = start + total
            raise
        ahs_length, length = header.total_ahs_length, header.data_segment_length
        if not (ahs_length or length or self._header_digest):
            # The 48 bytes are the whole PDU: every READ and every NOP-Out ping.
            self._position = start + BHS_LENGTH
            return decode_request(header, b"", b"")
        total = BHS_LENGTH + self._rest(ahs_length, length)
        if available < total:
            return None
        self._position = start + total
        offset = start + BHS_LENGTH
        ahs = bytes(buffer[offset : offset + header.total_ahs_length])
        offset += header.total_ahs_length
        if self._header_digest:
            if bytes(buffer[offset : offset + DIGEST_LENGTH]) != header_digest(raw + ahs):
                # RFC 7143 §7.8: a header that fails its digest can't be trusted for framing.
                raise MalformedPdu("header digest error", bhs=raw)
            offset += DIGEST_LENGTH
        data = bytes(buffer[offset : offset + length])
        if self._data_digest and length:
            end = offset + length + pad_length(length)
            digest = DataDigest()
            digest.update(data)
            if bytes(buffer[end : end + DIGEST_LENGTH]) != digest.digest():
                raise DigestError("data digest mismatch", bhs=raw, data_segment_length=length)
        return decode_request(header, ahs, data)

    def _rest(self, ahs_length: int, data_length: int) -> int:
        rest = ahs_length + data_length + pad_length(data_length)
        if self._header_digest:
            rest += DIGEST_LENGTH
        if self._data_digest and data_length:
            rest += DIGEST_LENGTH
        return rest


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


class _Link:
    """Reading and writing whole PDUs on one connection, with the negotiated digests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._header_digest = False
        self._data_digest = False
        sock = writer.get_extra_info("socket")
        self._socket_fd = sock.fileno() if sock is not None else -1
        # asyncio's socket wrapper cannot send with flags; a second descriptor of the same socket
        # can, and MSG_MORE lets a Data-In header leave in one segment with its file data.
        self._flagged: socket.socket | None = (
            socket.socket(fileno=os.dup(self._socket_fd)) if self._socket_fd >= 0 else None
        )

    def close(self) -> None:
        if self._flagged is not None:
            self._flagged.close()
            self._flagged = None

    def configure(self, params: SessionParameters) -> None:
        self._header_digest = params.header_digest is Digest.CRC32C
        self._data_digest = params.data_digest is Digest.CRC32C

    async def read_login_rest(self, header: BasicHeader) -> tuple[bytes, memoryview]:
        """AHS and data of a login-phase PDU (no digests exist before full feature phase)."""
        ahs = (
            await self.reader.readexactly(header.total_ahs_length)
            if header.total_ahs_length
            else b""
        )
        length = header.data_segment_length
        if not length:
            return ahs, memoryview(b"")
        padded = await self.reader.readexactly(length + pad_length(length))
        return ahs, memoryview(padded)[:length]

    async def write(self, chunks: list[bytes]) -> None:
        self.writer.writelines(chunks)
        await self.writer.drain()

    async def write_frames(self, frames: list[Frame], connection: FullFeatureConnection) -> bool:
        """Send ``frames``; True when the connection must close afterwards.

        Everything up to a sendfile goes to the transport in one ``writelines``, so a batch of
        small answers costs one ``send`` rather than one per PDU.
        """
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
                    self._write_before_file(parts)
                    parts = []
                    self._stream(data, frame.data_length)
            else:
                self._append_data(parts, data)
            close = close or frame.close_after
        if parts:
            self.writer.writelines(parts)
        writer = self.writer
        # drain() only ever waits for a queue above the high-water mark; with nothing queued (the
        # socket took it all, as it nearly always does) skipping it saves a coroutine round per
        # batch. A closed connection then shows as end of stream at the next read.
        if writer.transport.get_write_buffer_size() or writer.transport.is_closing():
            await writer.drain()
        return close

    def _write_before_file(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """Queue ``parts`` ahead of file data: with ``MSG_MORE`` when they can go out now."""
        flagged = self._flagged
        if flagged is None or self.writer.transport.get_write_buffer_size():
            self.writer.writelines(parts)
            return
        data = b"".join(parts)
        try:
            sent = flagged.send(data, socket.MSG_MORE)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self.writer.write(data[sent:])

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

    def _stream(self, extents: list[Extent], length: int) -> None:
        """Write a Data-In segment piece by piece, file extents with ``sendfile``.

        While the transport has nothing queued, ``os.sendfile`` goes straight to the socket: one
        syscall and no copy through Python. What the socket can't take at once is read and
        queued on the transport like any other data, so the connection never waits here
        (``loop.sendfile`` would pause the transport and wait for it to drain, which costs more
        than the copy it saves).
        """
        transport = self.writer.transport
        for extent in extents:
            if isinstance(extent, FileExtent):
                offset, remaining = extent.offset, extent.length
                if transport.get_write_buffer_size() == 0:
                    offset, remaining = _sendfile_now(self._socket_fd, extent.fd, offset, remaining)
                if remaining:
                    rest = bytearray(remaining)
                    pread_exact(extent.fd, memoryview(rest), offset)
                    self.writer.write(rest)
            elif isinstance(extent, ZeroExtent):
                self._write_zeros(extent.length)
            else:
                self.writer.write(bytes(extent.data))
        padding = pad_length(length)
        if padding:
            self.writer.write(bytes(padding))

    def _write_zeros(self, count: int) -> None:
        while count:
            step = min(count, len(_ZEROS))
            self.writer.write(memoryview(_ZEROS)[:step])
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
