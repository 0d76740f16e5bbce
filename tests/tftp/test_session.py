"""The sans-I/O read transfer: negotiation, windows, rollover, ACK rules, timers, and a fuzzer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.tftp import (
    ErrorCode,
    ErrorPacket,
    FileCatalog,
    FileRefused,
    MalformedPacket,
    Mode,
    Negotiated,
    Opcode,
    Outcome,
    ReadTransfer,
    Request,
    TransferLimits,
    negotiate,
    open_transfer,
    parse_packet,
)
from diskless.tftp.files import BytesSource
from diskless.tftp.session import (
    MAX_BACKOFF,
    MAX_BURST_DATAGRAMS,
    MAX_WINDOW_BUFFER,
    READ_AHEAD_BYTES,
    Burst,
)

CLIENT = ("192.0.2.10", 2000)


def _transfer(
    data: bytes,
    *,
    block_size: int = 512,
    window_size: int = 1,
    oack: bool = False,
    retries: int = 3,
) -> ReadTransfer:
    negotiated = Negotiated(
        block_size, window_size, 1.0, {"blksize": str(block_size)} if oack else None
    )
    return ReadTransfer(BytesSource(data), negotiated, retries=retries, now=0.0)


def _datagrams(bursts: list[Burst]) -> list[bytes]:
    """Each burst cut into its datagrams, as an endpoint without GSO sends them."""
    out = []
    for data, segment in bursts:
        assert len(data) > 0
        out += [bytes(data[i : i + segment]) for i in range(0, len(data), segment)]
    return out


def _blocks(bursts: list[Burst]) -> list[tuple[int, bytes]]:
    """(block number, payload) of each DATA datagram."""
    out = []
    for raw in _datagrams(bursts):
        assert raw[:2] == b"\x00\x03", raw[:4]
        out.append((int.from_bytes(raw[2:4], "big"), raw[4:]))
    return out


# -- negotiation ------------------------------------------------------------------------------


def test_no_options_means_no_oack() -> None:
    assert negotiate({}, 100, TransferLimits()).acknowledged is None
    assert negotiate({"multicast": ""}, 100, TransferLimits()).acknowledged is None


def test_granted_options_keep_the_clients_order() -> None:
    negotiated = negotiate(
        {"tsize": "0", "blksize": "1468", "timeout": "3", "windowsize": "8", "x-unknown": "1"},
        4096,
        TransferLimits(),
    )

    assert negotiated == Negotiated(
        1468,
        8,
        3.0,
        {"tsize": "4096", "blksize": "1468", "timeout": "3", "windowsize": "8"},
    )


@pytest.mark.parametrize(
    ("requested", "granted"),
    [("65464", "65464"), ("99999", "65464"), ("8", "8"), ("7", None), ("x", None), ("", None)],
)
def test_blksize_range(requested: str, granted: str | None) -> None:
    negotiated = negotiate({"blksize": requested}, 1, TransferLimits())

    assert (negotiated.acknowledged or {}).get("blksize") == granted


def test_blksize_is_capped_by_the_setting() -> None:
    negotiated = negotiate({"blksize": "8192"}, 1, TransferLimits(max_block_size=1468))

    assert negotiated.block_size == 1468
    assert negotiated.acknowledged == {"blksize": "1468"}


@pytest.mark.parametrize(("requested", "granted"), [("1", "1"), ("255", "255"), ("0", None)])
def test_timeout_range(requested: str, granted: str | None) -> None:
    negotiated = negotiate({"timeout": requested}, 1, TransferLimits())

    assert (negotiated.acknowledged or {}).get("timeout") == granted


def test_windowsize_is_capped_by_the_setting_and_the_buffer_budget() -> None:
    assert negotiate({"windowsize": "500"}, 1, TransferLimits()).window_size == 64
    big = negotiate({"blksize": "65464", "windowsize": "64"}, 1, TransferLimits())

    assert big.window_size == MAX_WINDOW_BUFFER // 65468
    assert big.acknowledged == {"blksize": "65464", "windowsize": str(big.window_size)}


def test_tsize_is_left_out_when_the_size_is_unknown() -> None:
    assert negotiate({"tsize": "0"}, None, TransferLimits()).acknowledged is None


# -- opening ----------------------------------------------------------------------------------


def _catalog(tmp_path: Path) -> FileCatalog:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "text.txt").write_bytes(b"a\nb\r\n")
    return FileCatalog(root=tmp_path / "root", ipxe_dir=tmp_path / "none", loader_names=[])


def test_a_write_request_is_an_access_violation(tmp_path: Path) -> None:
    request = Request(Opcode.WRITE_REQUEST, "text.txt", Mode.OCTET)

    with pytest.raises(FileRefused) as refused:
        open_transfer(request, _catalog(tmp_path), CLIENT, TransferLimits(), 0.0)

    assert refused.value.code is ErrorCode.ACCESS_VIOLATION


def test_mail_mode_is_an_illegal_operation(tmp_path: Path) -> None:
    request = Request(Opcode.READ_REQUEST, "text.txt", Mode.MAIL)

    with pytest.raises(FileRefused) as refused:
        open_transfer(request, _catalog(tmp_path), CLIENT, TransferLimits(), 0.0)

    assert refused.value.code is ErrorCode.ILLEGAL_OPERATION


def test_netascii_converts_and_omits_tsize(tmp_path: Path) -> None:
    request = Request(Opcode.READ_REQUEST, "text.txt", Mode.NETASCII, {"tsize": "0"})
    transfer = open_transfer(request, _catalog(tmp_path), CLIENT, TransferLimits(), 0.0)

    assert _blocks(transfer.start(0.0)) == [(1, b"a\r\nb\r\0\r\n")]
    assert transfer.negotiated.acknowledged is None
    transfer.close()


# -- transfers --------------------------------------------------------------------------------


def test_lock_step_transfer_ends_with_a_short_block() -> None:
    data = bytes(range(256)) * 5  # 1280 bytes: blocks of 512, 512, 256
    transfer = _transfer(data)

    assert _blocks(transfer.start(0.0)) == [(1, data[:512])]
    assert _blocks(transfer.on_ack(1, 0.1)) == [(2, data[512:1024])]
    assert _blocks(transfer.on_ack(2, 0.2)) == [(3, data[1024:])]
    assert transfer.on_ack(3, 0.3) == []
    assert transfer.outcome is Outcome.COMPLETED
    assert transfer.bytes_sent == len(data)


def test_a_file_of_whole_blocks_ends_with_an_empty_block() -> None:
    transfer = _transfer(b"x" * 1024)
    transfer.start(0.0)
    transfer.on_ack(1, 0.0)

    assert _blocks(transfer.on_ack(2, 0.0)) == [(3, b"")]
    transfer.on_ack(3, 0.0)
    assert transfer.outcome is Outcome.COMPLETED


def test_an_empty_file_is_one_empty_block() -> None:
    transfer = _transfer(b"")

    assert _blocks(transfer.start(0.0)) == [(1, b"")]
    transfer.on_ack(1, 0.0)
    assert transfer.outcome is Outcome.COMPLETED


def test_options_wait_for_the_ack_of_the_oack() -> None:
    transfer = _transfer(b"abc", oack=True)

    assert _datagrams(transfer.start(0.0)) == [b"\x00\x06blksize\x00512\x00"]
    assert transfer.on_ack(1, 0.1) == []  # not the OACK's ACK
    assert _blocks(transfer.on_ack(0, 0.2)) == [(1, b"abc")]


def test_an_error_in_answer_to_the_oack_ends_the_transfer_silently() -> None:
    transfer = _transfer(b"abc", oack=True)
    transfer.start(0.0)

    assert transfer.on_packet(ErrorPacket(8, "options refused"), 0.1) == []
    assert transfer.outcome is Outcome.FAILED
    assert "options" in transfer.reason


def test_block_numbers_roll_over_to_zero() -> None:
    block_size = 8
    data = random.Random(1).randbytes(block_size * 65540 + 3)
    transfer = _transfer(data, block_size=block_size, window_size=4)
    received = bytearray()
    datagrams = transfer.start(0.0)
    numbers: list[int] = []
    while datagrams:
        blocks = _blocks(datagrams)
        for number, payload in blocks:
            numbers.append(number)
            received += payload
        datagrams = transfer.on_ack(blocks[-1][0], 0.0)

    assert transfer.outcome is Outcome.COMPLETED
    assert bytes(received) == data
    assert numbers[65534:65538] == [65535, 0, 1, 2]


def test_a_duplicate_ack_never_resends() -> None:
    transfer = _transfer(b"x" * 5000, window_size=4)
    transfer.start(0.0)
    transfer.on_ack(4, 0.1)  # window 5..8 is out

    assert transfer.on_ack(4, 0.2) == []  # the Sorcerer's Apprentice duplicate
    assert transfer.on_ack(2, 0.2) == []  # older still
    assert transfer.on_ack(12, 0.2) == []  # not sent yet


def test_an_ack_inside_the_window_restarts_the_window_after_it() -> None:
    transfer = _transfer(b"x" * 5000, window_size=4)
    transfer.start(0.0)

    assert [n for n, _ in _blocks(transfer.on_ack(2, 0.1))] == [3, 4, 5, 6]


def test_a_window_goes_out_as_one_burst_of_its_ring_slots() -> None:
    transfer = _transfer(b"x" * 10_000, window_size=8)

    bursts = transfer.start(0.0)

    assert [(len(data), segment) for data, segment in bursts] == [(8 * 516, 516)]
    # The last window: 10,000 = 19 * 512 + 272, so blocks 17..20, the last one short.
    transfer.on_ack(8, 0.0)
    assert [(len(data), segment) for data, segment in transfer.on_ack(16, 0.0)] == [
        (3 * 516 + 4 + 272, 516)
    ]


def test_bursts_stay_within_the_gso_limits() -> None:
    transfer = _transfer(b"x" * 100_000, block_size=8, window_size=100)

    bursts = transfer.start(0.0)

    assert [len(data) // segment for data, segment in bursts] == [MAX_BURST_DATAGRAMS, 36]
    assert [n for n, _ in _blocks(bursts)] == list(range(1, 101))


class _CountingSource(BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.fills = 0

    def fill(self, views: Sequence[memoryview]) -> int:
        self.fills += 1
        return super().fill(views)


@pytest.mark.parametrize("read_ahead", [False, True])
def test_lock_step_reads_ahead_instead_of_once_per_block(read_ahead: bool) -> None:
    data = random.Random(2).randbytes(300_000)
    source = _CountingSource(data)
    transfer = ReadTransfer(source, Negotiated(512, 1, 1.0, None), retries=1, now=0.0)
    received = bytearray()
    datagrams = transfer.start(0.0)
    block = 0
    while datagrams:
        received += _blocks(datagrams)[0][1]
        if read_ahead:
            transfer.read_ahead()
        block += 1
        datagrams = transfer.on_ack(block, 0.0)

    assert transfer.outcome is Outcome.COMPLETED
    assert bytes(received) == data
    # Reading ahead refills at half a ring, so at most twice as often as the lazy reads.
    fills_per_ring = 2 if read_ahead else 1
    assert source.fills <= fills_per_ring * (300_000 // READ_AHEAD_BYTES + 2)


def test_timeouts_resend_the_window_with_backoff_then_give_up() -> None:
    transfer = _transfer(b"x" * 5000, window_size=2, retries=4)
    transfer.start(0.0)
    assert transfer.deadline == 1.0
    assert transfer.on_timer(0.5) == []  # early: nothing

    intervals = []
    now = transfer.deadline
    for _ in range(4):
        assert [n for n, _ in _blocks(transfer.on_timer(now))] == [1, 2]
        intervals.append(transfer.deadline - now)
        now = transfer.deadline
    assert intervals == [2.0, 4.0, 8.0, float(MAX_BACKOFF)]
    assert transfer.retransmissions == 8

    assert transfer.on_timer(now) == []
    assert transfer.outcome is Outcome.TIMED_OUT


def test_progress_resets_the_backoff() -> None:
    transfer = _transfer(b"x" * 5000, retries=2)
    transfer.start(0.0)
    transfer.on_timer(1.0)
    transfer.on_timer(3.0)
    transfer.on_ack(1, 3.5)

    assert transfer.deadline == 4.5
    assert _blocks(transfer.on_timer(4.5)) == [(2, b"x" * 512)]


def test_close_before_the_end_is_a_failure_and_releases_the_source() -> None:
    transfer = _transfer(b"abc")
    transfer.start(0.0)
    transfer.close()
    transfer.close()

    assert transfer.outcome is Outcome.FAILED
    assert transfer.on_ack(1, 0.0) == []


# -- the client side of RFC 7440 over a lossy link, and a fuzzer ------------------------------


def _lossy_download(
    data: bytes, block_size: int, window_size: int, loss: float, seed: int
) -> tuple[bytes, ReadTransfer]:
    """Run a transfer against an RFC 7440 receiver over a link that drops packets."""
    rng = random.Random(seed)
    transfer = _transfer(data, block_size=block_size, window_size=window_size, retries=50)
    received = bytearray()
    expected = 1
    now = 0.0
    in_flight = transfer.start(now)
    for _ in range(100_000):
        if transfer.finished:
            break
        ack: int | None = None
        arrived = [block for block in _blocks(in_flight) if rng.random() >= loss]
        for number, payload in arrived:
            if number == expected & 0xFFFF:
                received += payload
                expected += 1
                if len(payload) < block_size or (expected - 1) % window_size == 0:
                    ack = expected - 1
            else:
                ack = expected - 1  # out of order: acknowledge what arrived in order
                break
        if ack is not None and rng.random() >= loss:
            in_flight = transfer.on_ack(ack & 0xFFFF, now)
        else:
            now = transfer.deadline
            in_flight = transfer.on_timer(now)
        if rng.random() < 0.5:
            transfer.read_ahead()  # as the endpoint does after each send
    return bytes(received), transfer


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 6000),
    block_size=st.sampled_from([8, 512, 1468]),
    window_size=st.integers(1, 8),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 2**32),
)
def test_a_lossy_link_still_delivers_every_byte(
    size: int, block_size: int, window_size: int, loss: float, seed: int
) -> None:
    data = random.Random(seed).randbytes(size)

    received, transfer = _lossy_download(data, block_size, window_size, loss, seed)

    assert transfer.outcome is Outcome.COMPLETED
    assert received == data


_events = st.lists(
    st.one_of(
        st.tuples(st.just("ack"), st.integers(0, 0xFFFF)),
        st.tuples(st.just("near-ack"), st.integers(-3, 10)),
        st.tuples(st.just("datagram"), st.binary(max_size=40)),
        st.tuples(st.just("timer"), st.floats(0, 30)),
        st.tuples(st.just("read-ahead"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(
    size=st.integers(0, 3000),
    block_size=st.sampled_from([8, 100, 512]),
    window_size=st.integers(1, 6),
    oack=st.booleans(),
    events=_events,
)
def test_no_event_sequence_breaks_the_transfer(
    size: int,
    block_size: int,
    window_size: int,
    oack: bool,
    events: list[tuple[str, object]],
) -> None:
    data = bytes(i % 251 for i in range(size))
    transfer = _transfer(data, block_size=block_size, window_size=window_size, oack=oack)
    now = 0.0
    output = transfer.start(now)
    for kind, value in events:
        for raw in _datagrams(output):
            assert raw[:2] in (b"\x00\x03", b"\x00\x06")  # only DATA and OACK, never ERROR
            if raw[:2] == b"\x00\x03":
                # Every DATA is the right slice of the file for its block number (the files are
                # too small to roll over here).
                number = int.from_bytes(raw[2:4], "big")
                assert raw[4:] == data[(number - 1) * block_size : number * block_size]
        if kind == "ack":
            assert isinstance(value, int)
            output = transfer.on_ack(value, now)
        elif kind == "near-ack":
            assert isinstance(value, int)
            output = transfer.on_ack((transfer.blocks_acknowledged + value) & 0xFFFF, now)
        elif kind == "read-ahead":
            transfer.read_ahead()
            output = []
        elif kind == "datagram":
            assert isinstance(value, bytes)
            try:
                packet = parse_packet(value)
            except MalformedPacket:
                continue
            output = transfer.on_packet(packet, now)
        else:
            assert isinstance(value, float)
            now += value
            output = transfer.on_timer(now)
        assert transfer.deadline >= 0
    transfer.close()
    assert transfer.outcome is not Outcome.ACTIVE
