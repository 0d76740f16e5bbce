"""One read transfer as a sans-I/O state machine: packets and timer expiries in, datagrams out.

Owns option negotiation (RFC 2347/2348/2349/7440), the sliding window, block-number rollover,
retransmission with backoff, and the end of a transfer. It never touches a socket or a clock: the
caller passes ``now`` (any monotonic time in seconds), sends the datagrams each call returns, and
calls :meth:`ReadTransfer.on_timer` once ``deadline`` has passed.

Data lives in one preallocated ring of slots, each a 4-byte DATA header followed by ``blksize``
bytes, holding whole windows up to ~64 KiB. Block ``k`` always lives in slot ``(k - 1) % ring``,
so the slots the window frees as it slides are exactly the ones the next blocks need: one
``fill`` (one ``preadv`` for a file) reads every free slot's block straight into place, and since
the slots lie end to end, a window goes out as one memoryview of the ring (a *burst*) that the
endpoint hands to the kernel in one UDP GSO send, headers included, with no copy. Retransmissions
come from the same slots, never from the file again.

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
)
from .files import BlockSource, ClientAddress, FileCatalog, FileRefused, NetasciiSource

__all__ = [
    "MAX_BURST_BYTES",
    "MAX_BURST_DATAGRAMS",
    "MAX_WINDOW_BUFFER",
    "READ_AHEAD_BYTES",
    "Burst",
    "Negotiated",
    "Outcome",
    "ReadTransfer",
    "TransferLimits",
    "negotiate",
    "open_transfer",
]

Burst = tuple[bytes | memoryview, int]
"""``(data, segment)``: datagrams of ``segment`` bytes end to end in ``data`` (the last may be
shorter). A memoryview points into the transfer's buffer: send it before the next call into the
transfer, which may overwrite it."""

# A window is at most this big: windowsize is granted only as far as it fits (the client learns
# the smaller value from the OACK), which bounds memory per transfer.
MAX_WINDOW_BUFFER = 256 << 10
# The block buffer holds whole windows up to about this much, read with one fill.
READ_AHEAD_BYTES = 64 << 10
# A burst is one GSO send: Linux takes at most 64 segments (UDP_MAX_SEGMENTS) and 64 KiB.
MAX_BURST_DATAGRAMS = 64
MAX_BURST_BYTES = 65000
# The retransmission interval doubles after each unanswered send, up to this many times the
# base interval (so 1 s → 2 → 4 → 8 → 8 ...).
MAX_BACKOFF = 8
# The low and high bytes of block numbers 0 .. 2 * 65536 - 1, for writing the block numbers of a
# run of DATA headers with two slice assignments instead of one pack per block (block numbers
# roll over: entry k stands for block k mod 65536).
_LOW_BYTES = bytes(range(256)) * 512
_HIGH_BYTES = b"".join(bytes((high,)) * 256 for high in range(256)) * 2
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
    return ReadTransfer(source, negotiated, retries=limits.retries, now=now, origin=served.origin)


class Outcome(Enum):
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed-out"


class ReadTransfer:
    """Sends one file: OACK (if options were granted), then DATA windows until the last ACK.

    Every call that sends returns a list of bursts, ``(data, segment)`` pairs: ``data`` holds
    consecutive datagrams of ``segment`` bytes laid end to end, the last one possibly shorter
    (an OACK is a burst of one). A burst never crosses the end of the buffer and stays within
    :data:`MAX_BURST_DATAGRAMS` and :data:`MAX_BURST_BYTES`, so it can go out as one UDP GSO
    send; or the caller cuts it into ``segment``-sized datagrams.
    """

    def __init__(
        self,
        source: BlockSource,
        negotiated: Negotiated,
        *,
        retries: int,
        now: float,
        origin: str = "",
    ) -> None:
        self.negotiated = negotiated
        self.origin = origin
        """Where the file came from (``virtual``, ``ipxe``, ``root``), for logs."""
        self.outcome = Outcome.ACTIVE
        self.finished = False
        self.reason = ""
        """Why the transfer ended when it did not complete, for logs."""
        self.bytes_sent = 0
        """Payload bytes put on the wire, retransmissions included."""
        self.retransmissions = 0
        self.deadline: float = now
        block_size = negotiated.block_size
        window_size = negotiated.window_size
        self.segment_size = DATA_HEADER_LENGTH + block_size
        """Bytes of one full DATA datagram."""
        self._source = source
        self._block_size = block_size
        self._window_size = window_size
        self._base_interval = negotiated.timeout
        self._interval = negotiated.timeout
        self._max_retries = retries
        self._retries = 0
        # Whole windows of read-ahead, so a lock-step transfer reads its file ~64 KiB at a time.
        windows = max(1, READ_AHEAD_BYTES // (window_size * self.segment_size))
        ring = self._ring = window_size * windows
        segment = self.segment_size
        self._buffer = bytearray(segment * ring)
        # Every slot starts with the DATA opcode; _fill writes only the block numbers.
        self._buffer[1 : segment * ring : segment] = bytes((int(Opcode.DATA),)) * ring
        whole = self._view = memoryview(self._buffer)
        self._slots = [whole[i * segment : (i + 1) * segment] for i in range(ring)]
        self._payloads = [view[DATA_HEADER_LENGTH:] for view in self._slots]
        # Lock-step's answer to an ACK, one per slot, built once: a full block as one datagram.
        self._single_bursts: list[Burst] = [(view, segment) for view in self._slots]
        self._burst_blocks = max(1, min(MAX_BURST_DATAGRAMS, MAX_BURST_BYTES // segment))
        self._refill_free = max(1, ring // 2)  # free slots that make read_ahead fill
        self._option_ack: bytes | None = None
        if negotiated.acknowledged is not None:
            self._option_ack = encode_option_ack(negotiated.acknowledged)
        self._acked = 0  # every block up to this one is acknowledged
        self._filled = 0  # blocks up to this one are in their slots
        self._sent_through = 0  # the last block of the window sent last
        # The block that ends the file (shorter than block_size, possibly empty), once read.
        self._last_block = 0
        self._last_length = 0
        self._started = False
        self._closed = False
        self._acking = False  # started and not finished: ACKs count

    @property
    def blocks_acknowledged(self) -> int:
        return self._acked

    def start(self, now: float) -> list[Burst]:
        """The first datagrams: the OACK, or the first window when no option was granted."""
        if self._started:
            return []
        self._started = True
        self._acking = not self.finished
        if self._option_ack is not None:
            self.deadline = now + self._interval
            return [(self._option_ack, len(self._option_ack))]
        return self._send_window(now)

    def on_packet(self, packet: Packet, now: float) -> list[Burst]:
        """React to a packet from the client's TID."""
        if self.finished:
            return []
        if isinstance(packet, Ack):
            return self.on_ack(packet.block, now)
        if isinstance(packet, ErrorPacket):
            # Never answered with an error (an ERROR for an ERROR is how loops start): a client
            # that refuses our OACK this way re-requests without options (fbtftp#51).
            waiting = "options" if self._sent_through == 0 else f"block {self._acked + 1}"
            message = packet.message[:64]
            self._finish(Outcome.FAILED, f"client error {packet.code} at {waiting}: {message}")
            return []
        # DATA, OACK or a request on the transfer's port: nothing a reader should send; ignored
        # rather than answered, so a confused client cannot make us send errors after an OACK.
        return []

    def on_ack(self, block: int, now: float) -> list[Burst]:
        """React to ``ACK block`` (the 16-bit wire number)."""
        if not self._acking:
            return []
        acked = self._acked
        sent = self._sent_through
        if sent:
            acked += (block - acked) & 0xFFFF
            if acked == self._acked or acked > sent:
                return []  # a repeat, or a block not in flight: only the timer resends
            self._acked = acked
            if acked == self._last_block:
                self._finish(Outcome.COMPLETED, "")
                return []
        elif block:
            return []  # waiting for the ACK of the OACK, which is block 0
        if self._retries:
            self._retries = 0
            self._interval = self._base_interval
        if self._window_size == 1 and acked < self._filled and acked + 1 != self._last_block:
            # Lock-step, the next block read and full: the hot path, kept short.
            self._sent_through = acked + 1
            self.deadline = now + self._interval
            self.bytes_sent += self._block_size
            return [self._single_bursts[acked % self._ring]]
        return self._send_window(now)

    def on_timer(self, now: float) -> list[Burst]:
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
            return [(self._option_ack, len(self._option_ack))]
        self.retransmissions += self._sent_through - self._acked
        return self._send_window(now)

    def read_ahead(self) -> None:
        """Refill the ring's free slots once half of it is free; call after sending.

        Optional: a window whose blocks are not read yet is read when it is sent. Called between
        sends, while the client works through the last window, it keeps the file read off the
        path from an ACK to the next window.
        """
        if (
            self._acked + self._ring - self._filled >= self._refill_free
            and self._acking
            and not self._last_block
        ):
            self._fill()

    def close(self) -> None:
        """Release the source; the transfer must not be used afterwards. Idempotent."""
        if not self._closed:
            self._closed = True
            self._source.close()
        if not self.finished:
            self._finish(Outcome.FAILED, "closed")

    # -- internals ------------------------------------------------------------------------------

    def _finish(self, outcome: Outcome, reason: str) -> None:
        self.outcome = outcome
        self.finished = True
        self._acking = False
        self.reason = reason

    def _send_window(self, now: float) -> list[Burst]:
        first = self._acked + 1
        end = self._acked + self._window_size
        last = self._last_block
        if self._filled < end and not last:
            self._fill()
            last = self._last_block
        if last and end >= last:
            end = last
        segment = self.segment_size
        self._sent_through = end
        self.deadline = now + self._interval
        self.bytes_sent += (end - first + 1) * self._block_size
        if end == first and end != last:
            return [(self._slots[(first - 1) % self._ring], segment)]  # lock-step
        if end == last:
            self.bytes_sent -= self._block_size - self._last_length
        bursts: list[Burst] = []
        buffer = self._view
        block = first
        while block <= end:
            slot = (block - 1) % self._ring
            count = min(end - block + 1, self._ring - slot, self._burst_blocks)
            begin = slot * segment
            stop = begin + count * segment
            if block + count - 1 == self._last_block:
                stop -= self._block_size - self._last_length
            bursts.append((buffer[begin:stop], segment))
            block += count
        return bursts

    def _fill(self) -> None:
        """Read the blocks after ``_filled`` into every free slot, in one ``fill``."""
        ring = self._ring
        start = self._filled + 1
        end = self._acked + ring  # the slots of blocks up to _acked are free again
        payloads = self._payloads
        views = [payloads[(block - 1) % ring] for block in range(start, end + 1)]
        total = self._source.fill(views)
        full = self._block_size
        filled = start + total // full  # the first block not read in full
        # Block numbers of the blocks read, the short one that ends the file included.
        self._number_blocks(start, min(filled, end))
        if filled <= end:
            # A short block (possibly empty) ends the file.
            self._last_block = filled
            self._last_length = total - (filled - start) * full
            self._filled = filled
        else:
            self._filled = end

    def _number_blocks(self, first: int, last: int) -> None:
        """Write the block numbers of blocks ``first`` to ``last`` into their slots' headers."""
        ring = self._ring
        segment = self.segment_size
        buffer = self._buffer
        block = first
        while block <= last:
            slot = (block - 1) % ring
            count = min(last - block + 1, ring - slot)  # up to the end of the ring
            begin = slot * segment
            stop = begin + count * segment
            number = block & 0xFFFF
            buffer[begin + 2 : stop : segment] = _HIGH_BYTES[number : number + count]
            buffer[begin + 3 : stop : segment] = _LOW_BYTES[number : number + count]
            block += count
