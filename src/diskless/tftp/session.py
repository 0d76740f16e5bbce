"""One read transfer as a sans-I/O state machine: packets and timer expiries in, datagrams out.

Owns option negotiation (RFC 2347/2348/2349/7440), the sliding window, block-number rollover,
retransmission with backoff, and the end of a transfer. It never touches a socket or a clock: the
caller passes ``now`` (any monotonic time in seconds), sends the datagrams each call returns, and
calls :meth:`ReadTransfer.on_timer` once ``deadline`` has passed.

Data lives in one preallocated buffer of ``windowsize`` slots, each a 4-byte DATA header followed by
``blksize`` bytes. Block ``k`` always lives in slot ``k % windowsize``, so when the window slides
the slots it frees are exactly the ones the next blocks need: one ``fill`` (one ``preadv`` for a
file) reads the new blocks straight into place, and each DATA goes out as one memoryview of its
slot, header included, with no copy and no per-packet allocation. Retransmissions come from the
same slots, never from the file again.

Acknowledgements follow RFC 7440 and steer clear of the Sorcerer's Apprentice bug (RFC 1123
§4.2.3.1): an ACK for a block of the window just sent acknowledges everything up to it and the
window restarts after it (for windowsize 1 that is plain lock-step); an ACK for anything else,
including a repeat of the last one, is ignored. Only the timer resends what was already sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from .codec import (
    DATA_HEADER_LENGTH,
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    Ack,
    ErrorCode,
    ErrorPacket,
    Mode,
    Opcode,
    Packet,
    Request,
    encode_option_ack,
    pack_data_header,
)
from .files import BlockSource, ClientAddress, FileCatalog, FileRefused, NetasciiSource

__all__ = [
    "MAX_WINDOW_BUFFER",
    "Datagram",
    "Negotiated",
    "Outcome",
    "ReadTransfer",
    "TransferLimits",
    "negotiate",
    "open_transfer",
]

Datagram = bytes | memoryview
"""One datagram to send. A memoryview points into the transfer's buffer: send it before the next
call into the transfer, which may overwrite it."""

# A session's block buffer is at most this big: windowsize is granted only as far as it fits
# (the client learns the smaller value from the OACK), which bounds memory per transfer.
MAX_WINDOW_BUFFER = 1 << 20
# The retransmission interval doubles after each unanswered send, up to this many times the
# base interval (so 1 s → 2 → 4 → 8 → 8 ...).
MAX_BACKOFF = 8
# RFC 2349 and RFC 7440 ranges.
_TIMEOUT_RANGE = range(1, 256)
_WINDOW_SIZE_RANGE = range(1, 65536)


@dataclass(frozen=True, slots=True)
class TransferLimits:
    """What the server grants and how patiently it retransmits (from ``TftpSettings``)."""

    max_block_size: int = MAX_BLOCK_SIZE
    max_window_size: int = 64
    timeout: float = 1.0
    """Seconds before the first retransmission when the client asks for no timeout."""
    retries: int = 5
    """Retransmissions of one window (or OACK) before the transfer is given up."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of option negotiation for one transfer."""

    block_size: int = DEFAULT_BLOCK_SIZE
    window_size: int = 1
    timeout: float = 1.0
    acknowledged: Mapping[str, str] | None = None
    """The options the OACK carries, in the client's order; ``None`` means no OACK is sent."""


def negotiate(options: Mapping[str, str], size: int | None, limits: TransferLimits) -> Negotiated:
    """Grant what the request asks within ``limits``; unknown or invalid options are ignored.

    ``size`` is the byte count the transfer will send, or ``None`` (netascii), which leaves tsize
    out of the answer.
    """
    block_size = DEFAULT_BLOCK_SIZE
    window_size = 1
    timeout = limits.timeout
    granted: dict[str, str] = {}
    for name, value in options.items():
        number = _number(value)
        if name == "blksize" and number is not None and number >= MIN_BLOCK_SIZE:
            # RFC 2348: the server may answer with a smaller size than asked, never a larger one.
            block_size = min(number, limits.max_block_size, MAX_BLOCK_SIZE)
            granted[name] = str(block_size)
        elif name == "timeout" and number is not None and number in _TIMEOUT_RANGE:
            timeout = float(number)
            granted[name] = str(number)
        elif name == "tsize" and size is not None:
            granted[name] = str(size)
        elif name == "windowsize" and number is not None and number in _WINDOW_SIZE_RANGE:
            window_size = number
            granted[name] = ""  # filled in below, once blksize is known
    if "windowsize" in granted:
        fits = max(1, MAX_WINDOW_BUFFER // (DATA_HEADER_LENGTH + block_size))
        window_size = min(window_size, limits.max_window_size, fits)
        granted["windowsize"] = str(window_size)
    return Negotiated(block_size, window_size, timeout, granted or None)


def _number(value: str) -> int | None:
    # isascii() too: str.isdigit() accepts digits such as "²" that int() rejects.
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


def open_transfer(
    request: Request,
    catalog: FileCatalog,
    client: ClientAddress,
    limits: TransferLimits,
    now: float,
) -> ReadTransfer:
    """The transfer that answers ``request``; raises :class:`FileRefused` with the error to send."""
    if request.opcode != Opcode.READ_REQUEST:
        raise FileRefused(ErrorCode.ACCESS_VIOLATION, "read-only server")
    if request.mode == Mode.MAIL:
        raise FileRefused(ErrorCode.ILLEGAL_OPERATION, "mail mode not supported")
    served = catalog.open(request.filename, client)
    source: BlockSource = served.source
    if request.mode == Mode.NETASCII:
        source = NetasciiSource(source)
    negotiated = negotiate(request.options, source.size, limits)
    return ReadTransfer(source, negotiated, retries=limits.retries, now=now)


class Outcome(Enum):
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed-out"


class ReadTransfer:
    """Sends one file: OACK (if options were granted), then DATA windows until the last ACK."""

    def __init__(
        self, source: BlockSource, negotiated: Negotiated, *, retries: int, now: float
    ) -> None:
        self.negotiated = negotiated
        self.outcome = Outcome.ACTIVE
        self.reason = ""
        """Why the transfer ended when it did not complete, for logs."""
        self.bytes_sent = 0
        """Payload bytes put on the wire, retransmissions included."""
        self.retransmissions = 0
        self.deadline: float = now
        self._source = source
        self._block_size = negotiated.block_size
        self._window_size = negotiated.window_size
        self._base_interval = negotiated.timeout
        self._interval = negotiated.timeout
        self._max_retries = retries
        self._retries = 0
        slot = DATA_HEADER_LENGTH + self._block_size
        self._buffer = bytearray(slot * self._window_size)
        whole = memoryview(self._buffer)
        self._slots = [whole[i * slot : (i + 1) * slot] for i in range(self._window_size)]
        self._payloads = [view[DATA_HEADER_LENGTH:] for view in self._slots]
        self._lengths = [0] * self._window_size
        self._option_ack: bytes | None = None
        if negotiated.acknowledged is not None:
            self._option_ack = encode_option_ack(negotiated.acknowledged)
        self._acked = 0  # every block up to this one is acknowledged
        self._filled = 0  # blocks up to this one are in their slots
        self._sent_through = 0  # the last block of the window sent last
        self._last_block: int | None = None  # the short block that ends the file, once read
        self._started = False
        self._closed = False

    @property
    def finished(self) -> bool:
        return self.outcome is not Outcome.ACTIVE

    @property
    def blocks_acknowledged(self) -> int:
        return self._acked

    def start(self, now: float) -> list[Datagram]:
        """The first datagrams: the OACK, or the first window when no option was granted."""
        if self._started:
            return []
        self._started = True
        if self._option_ack is not None:
            self.deadline = now + self._interval
            return [self._option_ack]
        return self._send_window(now)

    def on_packet(self, packet: Packet, now: float) -> list[Datagram]:
        """React to a packet from the client's TID."""
        if self.finished:
            return []
        if isinstance(packet, Ack):
            return self.on_ack(packet.block, now)
        if isinstance(packet, ErrorPacket):
            # Never answered with an error (an ERROR for an ERROR is how loops start): a client
            # that refuses our OACK this way re-requests without options (fbtftp#51).
            waiting = "options" if self._sent_through == 0 else f"block {self._acked + 1}"
            self._finish(
                Outcome.FAILED, f"client error {packet.code} at {waiting}: {packet.message[:64]}"
            )
            return []
        # DATA, OACK or a request on the transfer's port: nothing a reader should send; ignored
        # rather than answered, so a confused client cannot make us send errors after an OACK.
        return []

    def on_ack(self, block: int, now: float) -> list[Datagram]:
        """React to ``ACK block`` (the 16-bit wire number)."""
        if self.finished or not self._started:
            return []
        if self._sent_through == 0:
            # Waiting for the ACK of the OACK, which is block 0.
            if block != 0:
                return []
            self._progress()
            return self._send_window(now)
        acked = self._acked + ((block - self._acked) & 0xFFFF)
        if acked == self._acked or acked > self._sent_through:
            return []  # a repeat, or a block not in flight: only the timer resends
        self._acked = acked
        self._progress()
        if acked == self._last_block:
            self._finish(Outcome.COMPLETED, "")
            return []
        return self._send_window(now)

    def on_timer(self, now: float) -> list[Datagram]:
        """Retransmit what is unacknowledged, or give up; call once ``now >= deadline``."""
        if self.finished or not self._started or now < self.deadline:
            return []
        if self._retries >= self._max_retries:
            # Nothing is sent: the client is gone or unreachable, and an ERROR after an OACK
            # confuses the clients that are still there.
            self._finish(Outcome.TIMED_OUT, f"no ACK after {self._retries} retransmissions")
            return []
        self._retries += 1
        self._interval = min(self._interval * 2, self._base_interval * MAX_BACKOFF)
        if self._sent_through == 0:
            assert self._option_ack is not None
            self.deadline = now + self._interval
            return [self._option_ack]
        self.retransmissions += self._sent_through - self._acked
        return self._send_window(now)

    def close(self) -> None:
        """Release the source; the transfer must not be used afterwards. Idempotent."""
        if not self._closed:
            self._closed = True
            self._source.close()
        if self.outcome is Outcome.ACTIVE:
            self._finish(Outcome.FAILED, "closed")

    # -- internals ------------------------------------------------------------------------------

    def _progress(self) -> None:
        self._retries = 0
        self._interval = self._base_interval

    def _finish(self, outcome: Outcome, reason: str) -> None:
        self.outcome = outcome
        self.reason = reason

    def _send_window(self, now: float) -> list[Datagram]:
        first = self._acked + 1
        end = self._acked + self._window_size
        if self._last_block is not None:
            end = min(end, self._last_block)
        if self._filled < end:
            self._fill(end)
            if self._last_block is not None:
                end = min(end, self._last_block)
        datagrams: list[Datagram] = []
        full = self._block_size
        for block in range(first, end + 1):
            slot = block % self._window_size
            length = self._lengths[slot]
            self.bytes_sent += length
            view = self._slots[slot]
            datagrams.append(view if length == full else view[: DATA_HEADER_LENGTH + length])
        self._sent_through = end
        self.deadline = now + self._interval
        return datagrams

    def _fill(self, end: int) -> None:
        """Read blocks ``_filled + 1 .. end`` into their slots (their slots are free)."""
        start = self._filled + 1
        ring = self._window_size
        views = [self._payloads[block % ring] for block in range(start, end + 1)]
        remaining = self._source.fill(views)
        full = self._block_size
        for block in range(start, end + 1):
            slot = block % ring
            length = min(remaining, full)
            remaining -= length
            self._lengths[slot] = length
            pack_data_header(self._buffer, slot * (DATA_HEADER_LENGTH + full), block)
            self._filled = block
            if length < full:
                # A short block (possibly empty) ends the file.
                self._last_block = block
                return
