"""``diskless export`` against misbehaving initiators: raw TCP with hand-built PDUs.

Nothing here uses the target's own codec: :class:`RawInitiator` builds initiator PDUs with
``struct`` from RFC 7143 §11 and reads the target's answers the same way. After every abuse the
server must still run, must not have logged a traceback, and must still answer ``iscsi-inq``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from libiscsi_support import (
    ISCSI_INQ,
    QEMU_IO,
    ExportServer,
    QemuIo,
    export_server,
    run_tool,
)
from portal_support import portal_in_thread

from diskless.iscsi.discovery import TargetAccess
from diskless.iscsi.target import TargetRegistry, disk_target
from diskless.storage.images import open_image

pytestmark = pytest.mark.skipif(
    not (ISCSI_INQ and QEMU_IO), reason="needs libiscsi-bin (iscsi-inq) and qemu-utils"
)

KiB = 1024
MiB = 1024 * KiB
DISK_SIZE = 16 * MiB
BLOCK = 512
TARGET = "iqn.2026-11.org.diskless.test:robustness"
INITIATOR = "iqn.2026-11.org.diskless.test:raw-initiator"
IO_TIMEOUT = 10.0
_ISIDS = itertools.count(1)

# -- a minimal initiator, straight from RFC 7143 §11 ---------------------------------------------

OP_NOP_OUT = 0x00
OP_SCSI_COMMAND = 0x01
OP_LOGIN_REQUEST = 0x03
OP_DATA_OUT = 0x05
OP_LOGOUT_REQUEST = 0x06
OP_NOP_IN = 0x20
OP_SCSI_RESPONSE = 0x21
OP_LOGIN_RESPONSE = 0x23
OP_DATA_IN = 0x25
OP_LOGOUT_RESPONSE = 0x26
OP_R2T = 0x31
OP_REJECT = 0x3F
IMMEDIATE = 0x40
FINAL = 0x80
READ = 0x40
WRITE = 0x20
SIMPLE = 0x01
RESERVED_TAG = 0xFFFFFFFF

# Login Request: opcode, flags, version max/min, AHS+DSL, ISID, TSIH, ITT, CID, -, CmdSN, ExpStatSN
LOGIN = struct.Struct(">BBBBI6sHIH2xII16x")
# SCSI Command: opcode, flags, -, AHS+DSL, LUN, ITT, EDTL, CmdSN, ExpStatSN, CDB
COMMAND = struct.Struct(">BB2xI8sIIII16s")
# SCSI Data-Out: opcode, flags, -, AHS+DSL, LUN, ITT, TTT, -, ExpStatSN, -, DataSN, BufferOffset, -
DATA_OUT = struct.Struct(">BB2xI8sII4xI4xII4x")
# Logout Request / NOP-Out share this shape: opcode, flags, -, AHS+DSL, LUN, ITT, TTT|CID, CmdSN,
# ExpStatSN
SIMPLE_REQUEST = struct.Struct(">BB2xI8sIIII16x")
assert LOGIN.size == COMMAND.size == DATA_OUT.size == SIMPLE_REQUEST.size == 48


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def text(pairs: dict[str, str]) -> bytes:
    return b"".join(f"{key}={value}".encode() + b"\0" for key, value in pairs.items())


def parse_text(data: bytes) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in data.split(b"\0"):
        if item:
            key, _, value = item.decode().partition("=")
            pairs[key] = value
    return pairs


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB6x", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB6x", 0x2A, 0, lba, 0, blocks, 0)


TEST_UNIT_READY = bytes(16)


@dataclass
class Pdu:
    bhs: bytes
    data: bytes

    @property
    def opcode(self) -> int:
        return self.bhs[0] & 0x3F

    def word(self, offset: int) -> int:
        return int.from_bytes(self.bhs[offset : offset + 4], "big")

    @property
    def itt(self) -> int:
        return self.word(16)


@dataclass
class Response:
    status: int
    data: bytes


class TargetClosedError(Exception):
    """The target closed the connection."""


class RawInitiator:
    """One TCP connection speaking just enough iSCSI to log in and run a few commands."""

    def __init__(self, server: ExportServer, *, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.target_name = server.target_name
        self.itt = 0x100
        self.cmdsn = 0x1000
        self.expstatsn = 0
        self.max_cmdsn = 0
        self.tsih = 0
        self.isid = b""
        self.keys: dict[str, str] = {}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    @classmethod
    @contextlib.contextmanager
    def connected(cls, disk: Path, log: Path) -> Iterator[RawInitiator]:
        """A server of its own for ``disk``, stopped while this connection is still open."""
        with export_server(disk, target_name=TARGET, log_path=log) as running:
            raw = cls(running)
            try:
                yield raw
                running.assert_healthy()
            except BaseException:
                raw.close()
                raise
        raw.close()

    def __enter__(self) -> RawInitiator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire ------------------------------------------------------------------------------------

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def _exactly(self, count: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < count:
            try:
                chunk = self.sock.recv(count - len(chunks))
            except ConnectionResetError as exc:
                raise TargetClosedError("connection reset") from exc
            if not chunk:
                raise TargetClosedError(f"connection closed after {len(chunks)} of {count} bytes")
            chunks += chunk
        return bytes(chunks)

    def receive(self, timeout: float = IO_TIMEOUT) -> Pdu:
        self.sock.settimeout(timeout)
        bhs = self._exactly(48)
        ahs = bhs[4] * 4
        length = int.from_bytes(bhs[5:8], "big")
        rest = self._exactly(ahs + length + (-length % 4))
        return Pdu(bhs, rest[ahs : ahs + length])

    def expect_nothing(self, seconds: float) -> None:
        """No PDU arrives (and the connection stays open) for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            first = self.sock.recv(1)
        except TimeoutError:
            return
        if not first:
            raise TargetClosedError("connection closed while waiting for silence")
        raise AssertionError(f"unexpected PDU starting with {first!r}")

    def wait_closed(self, timeout: float = IO_TIMEOUT) -> bytes:
        """Read until the target closes; returns what it sent. Fails if it stays open."""
        self.sock.settimeout(timeout)
        received = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(received)
            except TimeoutError:
                break
            if not chunk:
                return bytes(received)
            received += chunk
        raise AssertionError(f"target kept the connection open for {timeout} s")

    # -- login / logout --------------------------------------------------------------------------

    def login_request(
        self, keys: dict[str, str], *, isid: bytes, csg: int = 1, nsg: int = 3, transit: bool = True
    ) -> bytes:
        data = text(keys)
        flags = (FINAL if transit else 0) | (csg << 2) | (nsg if transit else 0)
        bhs = LOGIN.pack(
            OP_LOGIN_REQUEST | IMMEDIATE,
            flags,
            0,
            0,
            len(data),
            isid,
            0,
            self.itt,
            0,
            self.cmdsn,
            self.expstatsn,
        )
        return bhs + padded(data)

    def login(
        self,
        initiator_name: str = INITIATOR,
        *,
        isid: bytes | None = None,
        max_recv: int = 256 * KiB,
        immediate_data: bool = True,
        initial_r2t: bool = True,
    ) -> None:
        """Log in to the normal session (no authentication, operational stage only)."""
        # Distinct ISIDs unless asked otherwise: a repeated one would reinstate a live session.
        self.isid = isid or bytes([0x80, 0x77]) + next(_ISIDS).to_bytes(4, "big")
        keys = {
            "InitiatorName": initiator_name,
            "TargetName": self.target_name,
            "SessionType": "Normal",
            "HeaderDigest": "None",
            "DataDigest": "None",
            "MaxRecvDataSegmentLength": str(max_recv),
            "InitialR2T": "Yes" if initial_r2t else "No",
            "ImmediateData": "Yes" if immediate_data else "No",
            "MaxBurstLength": str(256 * KiB),
            "FirstBurstLength": str(64 * KiB),
            "MaxOutstandingR2T": "1",
            "MaxConnections": "1",
            "ErrorRecoveryLevel": "0",
            "DefaultTime2Wait": "2",
            "DefaultTime2Retain": "0",
            "DataPDUInOrder": "Yes",
            "DataSequenceInOrder": "Yes",
        }
        for _ in range(4):
            self.send(self.login_request(keys, isid=self.isid))
            answer = self.receive()
            assert answer.opcode == OP_LOGIN_RESPONSE, answer.bhs.hex()
            status = answer.bhs[36] << 8 | answer.bhs[37]
            assert status == 0, f"login refused: status {status:#06x}"
            self.keys.update(parse_text(answer.data))
            self.expstatsn = (answer.word(24) + 1) % (1 << 32)
            self.max_cmdsn = answer.word(32)
            if answer.bhs[1] & FINAL and answer.bhs[1] & 0x03 == 3:
                self.tsih = int.from_bytes(answer.bhs[14:16], "big")
                assert answer.word(28) == self.cmdsn
                return
            keys = {}  # everything said: ask again to move on
        raise AssertionError(f"login did not reach full feature phase: {self.keys}")

    def logout(self) -> None:
        itt = self.next_itt()
        self.send(
            SIMPLE_REQUEST.pack(
                OP_LOGOUT_REQUEST | IMMEDIATE,
                FINAL,
                0,
                bytes(8),
                itt,
                0,
                self.cmdsn,
                self.expstatsn,
            )
        )
        answer = self.receive_for(itt)
        assert answer.opcode == OP_LOGOUT_RESPONSE
        assert answer.bhs[2] == 0, "logout response: not closed successfully"

    # -- commands --------------------------------------------------------------------------------

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def command_pdu(
        self,
        cdb: bytes,
        *,
        itt: int,
        cmdsn: int,
        flags: int,
        edtl: int = 0,
        data: bytes = b"",
        data_segment_length: int | None = None,
    ) -> bytes:
        length = len(data) if data_segment_length is None else data_segment_length
        bhs = COMMAND.pack(
            OP_SCSI_COMMAND,
            flags | SIMPLE,
            length,
            bytes(8),
            itt,
            edtl,
            cmdsn,
            self.expstatsn,
            cdb.ljust(16, b"\0"),
        )
        return bhs + padded(data)

    def data_out(
        self, itt: int, ttt: int, datasn: int, offset: int, data: bytes, *, final: bool
    ) -> bytes:
        bhs = DATA_OUT.pack(
            OP_DATA_OUT,
            FINAL if final else 0,
            len(data),
            bytes(8),
            itt,
            ttt,
            self.expstatsn,
            datasn,
            offset,
        )
        return bhs + padded(data)

    def receive_for(self, itt: int) -> Pdu:
        while True:
            pdu = self.receive()
            if pdu.opcode == OP_NOP_IN and pdu.itt == RESERVED_TAG:
                continue  # a ping; not expected from this target, ignored if it comes
            if pdu.opcode == OP_REJECT or pdu.itt == itt:
                self._track(pdu)
                return pdu
            raise AssertionError(f"PDU for ITT {pdu.itt:#x} while waiting for {itt:#x}")

    def _track(self, pdu: Pdu) -> None:
        if pdu.opcode in (OP_SCSI_RESPONSE, OP_LOGOUT_RESPONSE, OP_NOP_IN, OP_REJECT) or (
            pdu.opcode == OP_DATA_IN and pdu.bhs[1] & 0x01
        ):
            self.expstatsn = (pdu.word(24) + 1) % (1 << 32)
        self.max_cmdsn = pdu.word(32)  # every target PDU we read carries MaxCmdSN here

    def collect(self, itt: int) -> Response:
        """Data-In and the status of one command."""
        data = bytearray()
        while True:
            pdu = self.receive_for(itt)
            if pdu.opcode == OP_DATA_IN:
                data[pdu.word(40) : pdu.word(40) + len(pdu.data)] = pdu.data
                if pdu.bhs[1] & 0x01:  # S: status rides on the last Data-In
                    return Response(pdu.bhs[3], bytes(data))
            elif pdu.opcode == OP_SCSI_RESPONSE:
                return Response(pdu.bhs[3], bytes(data))
            else:
                raise AssertionError(f"unexpected PDU {pdu.bhs.hex()}")

    def take_cmdsn(self) -> int:
        cmdsn = self.cmdsn
        self.cmdsn = (cmdsn + 1) % (1 << 32)
        return cmdsn

    def test_unit_ready(self) -> int:
        itt = self.next_itt()
        self.send(self.command_pdu(TEST_UNIT_READY, itt=itt, cmdsn=self.take_cmdsn(), flags=FINAL))
        return self.collect(itt).status

    def ready(self) -> None:
        """TEST UNIT READY until GOOD (the first command of a nexus sees a UNIT ATTENTION)."""
        for _ in range(3):
            if self.test_unit_ready() == 0:
                return
        raise AssertionError("TEST UNIT READY never returned GOOD")

    def read(self, lba: int, blocks: int) -> bytes:
        itt = self.next_itt()
        length = blocks * BLOCK
        cdb = read10(lba, blocks)
        self.send(
            self.command_pdu(cdb, itt=itt, cmdsn=self.take_cmdsn(), flags=FINAL | READ, edtl=length)
        )
        response = self.collect(itt)
        assert response.status == 0, f"READ status {response.status:#x}"
        return response.data

    def write(self, lba: int, data: bytes) -> None:
        """WRITE(10) with immediate data and R2T-solicited Data-Out (InitialR2T=Yes)."""
        itt = self.next_itt()
        immediate = data[: min(len(data), 8 * KiB)]
        self.send(
            self.command_pdu(
                write10(lba, len(data) // BLOCK),
                itt=itt,
                cmdsn=self.take_cmdsn(),
                flags=FINAL | WRITE,
                edtl=len(data),
                data=immediate,
            )
        )
        segment = int(self.keys.get("MaxRecvDataSegmentLength", "8192"))
        while True:
            pdu = self.receive_for(itt)
            if pdu.opcode == OP_SCSI_RESPONSE:
                assert pdu.bhs[3] == 0, f"WRITE status {pdu.bhs[3]:#x}"
                return
            assert pdu.opcode == OP_R2T, pdu.bhs.hex()
            ttt, offset, wanted = pdu.word(20), pdu.word(40), pdu.word(44)
            for datasn, start in enumerate(range(offset, offset + wanted, segment)):
                end = min(start + segment, offset + wanted)
                self.send(
                    self.data_out(
                        itt, ttt, datasn, start, data[start:end], final=end == offset + wanted
                    )
                )


# -- fixtures --------------------------------------------------------------------------------------


@functools.cache
def disk_bytes() -> bytes:
    return random.Random(11).randbytes(DISK_SIZE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExportServer]:
    path = tmp_path_factory.mktemp("robustness") / "disk.raw"
    path.write_bytes(disk_bytes())
    with export_server(path, target_name=TARGET) as running:
        yield running


def assert_serving(server: ExportServer) -> None:
    """Alive, no traceback, and a stranger's ``iscsi-inq`` is answered."""
    server.assert_healthy()
    done = run_tool([ISCSI_INQ, server.url()], timeout=20)
    assert done.returncode == 0, done.stdout + done.stderr + server.log()
    assert "DIRECT_ACCESS" in done.stdout
    server.assert_healthy()


@pytest.fixture(autouse=True)
def _still_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" in request.fixturenames:
        assert_serving(request.getfixturevalue("server"))


# -- before login ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + bytes(64),
        bytes(range(256)) * 2,
        b"\xff" * 48,
        # A SCSI command before any login: RFC 7143 §6.3 says drop the connection.
        COMMAND.pack(OP_SCSI_COMMAND, FINAL, 0, bytes(8), 1, 0, 1, 0, bytes(16)),
    ],
    ids=["http", "byte-ramp", "all-ones", "command-before-login"],
)
def test_garbage_before_login_closes_the_connection(server: ExportServer, garbage: bytes) -> None:
    with RawInitiator(server) as raw:
        raw.send(garbage)
        raw.wait_closed()


def test_login_pdu_with_oversized_data_segment_closes(server: ExportServer) -> None:
    with RawInitiator(server) as raw:
        request = bytearray(raw.login_request({"InitiatorName": INITIATOR}, isid=bytes(6)))
        request[5:8] = (1 << 20).to_bytes(3, "big")  # 1 MiB: far above the 8 KiB login limit
        raw.send(bytes(request[:48]))
        raw.wait_closed()


@pytest.mark.parametrize("cut", [1, 20, 47, 48, 60])
def test_truncated_login_then_hang_up(server: ExportServer, cut: int) -> None:
    with RawInitiator(server) as raw:
        keys = {"InitiatorName": INITIATOR, "TargetName": TARGET, "SessionType": "Normal"}
        raw.send(raw.login_request(keys, isid=bytes([0x80, 1, 2, 3, 0, 0]))[:cut])
    # closed by the with block; the server must simply forget the half PDU


def test_unfinished_login_does_not_block_others(server: ExportServer) -> None:
    with RawInitiator(server) as stalled:
        keys = {"InitiatorName": INITIATOR, "TargetName": TARGET}
        stalled.send(stalled.login_request(keys, isid=bytes([0x80, 9, 9, 9, 0, 0]))[:30])
        with RawInitiator(server) as other:
            other.login()
            other.ready()
        done = run_tool([ISCSI_INQ, server.url()], timeout=20)
        assert done.returncode == 0, done.stderr


def test_login_that_never_finishes_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(disk_bytes())
    device = open_image(path)
    targets = TargetRegistry([disk_target(device, TargetAccess(name=TARGET), identity_seed="t")])
    try:
        with (
            portal_in_thread(targets, login_timeout=0.5) as (_, port),
            socket.create_connection(("127.0.0.1", port), timeout=5) as stalled,
        ):
            stalled.sendall(b"\x43" + bytes(20))  # the start of a Login Request, then nothing
            assert stalled.recv(1) == b"", "the target must close a stalled login"
    finally:
        device.close()


# -- full feature phase ----------------------------------------------------------------------------


def test_login_read_logout(server: ExportServer) -> None:
    with RawInitiator(server) as raw:
        raw.login()
        assert raw.keys["MaxRecvDataSegmentLength"].isdigit()
        raw.ready()
        assert raw.read(0, 8) == disk_bytes()[: 8 * BLOCK]
        raw.logout()
        raw.wait_closed()


def test_oversized_data_segment_in_full_feature_phase(server: ExportServer) -> None:
    """A BHS announcing 16 MiB - 1 of data, far above our MaxRecvDataSegmentLength: the target
    must skip it and Reject, or close; never hang or crash. The data is sent in full, so a target
    that keeps the framing is not left waiting."""
    with RawInitiator(server) as raw:
        raw.login()
        raw.ready()
        declared = int(raw.keys["MaxRecvDataSegmentLength"])
        huge = (1 << 24) - 1
        assert huge > declared
        itt = raw.next_itt()
        bhs = raw.command_pdu(
            write10(0, 8),
            itt=itt,
            cmdsn=raw.take_cmdsn(),
            flags=FINAL | WRITE,
            edtl=8 * BLOCK,
            data_segment_length=huge,
        )
        raw.send(bhs)
        try:
            raw.send(bytes(huge + (-huge % 4)))
            answer = raw.receive(timeout=30)
        except (TargetClosedError, BrokenPipeError, ConnectionResetError):
            return  # closing is acceptable
        assert answer.opcode == OP_REJECT, answer.bhs.hex()
        assert answer.data[:48] == bhs[:48], "a Reject carries the rejected header"
        raw.expstatsn = (answer.word(24) + 1) % (1 << 32)
        # The command was never accepted, so its CmdSN is still expected.
        raw.cmdsn = answer.word(28)
        assert raw.test_unit_ready() == 0
        assert raw.read(0, 8) == disk_bytes()[: 8 * BLOCK], "the rejected WRITE must not land"


def test_oversized_data_segment_then_hang_up(server: ExportServer) -> None:
    with RawInitiator(server) as raw:
        raw.login()
        raw.ready()
        bhs = raw.command_pdu(
            write10(0, 8),
            itt=raw.next_itt(),
            cmdsn=raw.take_cmdsn(),
            flags=FINAL | WRITE,
            edtl=8 * BLOCK,
            data_segment_length=(1 << 24) - 1,
        )
        raw.send(bhs + bytes(1000))


@pytest.mark.parametrize("cut", [10, 48, 48 + 100])
def test_truncated_pdu_in_full_feature_phase(server: ExportServer, cut: int) -> None:
    """A WRITE announcing 4 KiB of immediate data, cut short, then the initiator hangs up."""
    with RawInitiator(server) as raw:
        raw.login()
        raw.ready()
        pdu = raw.command_pdu(
            write10(16, 8),
            itt=raw.next_itt(),
            cmdsn=raw.take_cmdsn(),
            flags=FINAL | WRITE,
            edtl=8 * BLOCK,
            data=bytes([0xC3]) * (8 * BLOCK),
        )
        raw.send(pdu[:cut])
    with RawInitiator(server) as check:
        check.login()
        check.ready()
        assert check.read(16, 8) == disk_bytes()[16 * BLOCK : 24 * BLOCK]


def test_data_out_for_an_unknown_task_is_rejected(server: ExportServer) -> None:
    with RawInitiator(server) as raw:
        raw.login()
        raw.ready()
        raw.send(raw.data_out(0xDEAD, RESERVED_TAG, 0, 0, bytes(BLOCK), final=True))
        answer = raw.receive()
        assert answer.opcode == OP_REJECT, answer.bhs.hex()
        raw._track(answer)
        assert raw.test_unit_ready() == 0


def test_nop_out_ping_is_echoed(server: ExportServer) -> None:
    with RawInitiator(server) as raw:
        raw.login()
        itt = raw.next_itt()
        payload = b"are you there?"
        bhs = SIMPLE_REQUEST.pack(
            OP_NOP_OUT | IMMEDIATE,
            FINAL,
            len(payload),
            bytes(8),
            itt,
            RESERVED_TAG,
            raw.cmdsn,
            raw.expstatsn,
        )
        raw.send(bhs + padded(payload))
        answer = raw.receive_for(itt)
        assert answer.opcode == OP_NOP_IN
        assert answer.data == payload
        raw.ready()


def test_unknown_opcode_is_rejected_and_the_session_goes_on(server: ExportServer) -> None:
    with RawInitiator(server) as raw:
        raw.login()
        raw.ready()
        bogus = bytearray(48)
        bogus[0] = 0x1F  # not an initiator opcode
        bogus[16:20] = (0x4242).to_bytes(4, "big")
        raw.send(bytes(bogus))
        answer = raw.receive()
        assert answer.opcode == OP_REJECT, answer.bhs.hex()
        raw._track(answer)
        assert raw.test_unit_ready() == 0


def test_out_of_window_cmdsn_is_ignored(server: ExportServer) -> None:
    """RFC 7143 §4.2.2.1: commands outside [ExpCmdSN, MaxCmdSN] are silently dropped."""
    with RawInitiator(server) as raw:
        raw.login()
        raw.ready()
        expected = raw.cmdsn
        window = (raw.max_cmdsn - expected) % (1 << 32)
        for cmdsn in (
            (raw.max_cmdsn + 1) % (1 << 32),
            (expected + window + 1000) % (1 << 32),
            (expected - 1) % (1 << 32),
            (expected - 100) % (1 << 32),
            (expected + (1 << 31)) % (1 << 32),
        ):
            raw.send(raw.command_pdu(TEST_UNIT_READY, itt=raw.next_itt(), cmdsn=cmdsn, flags=FINAL))
        raw.expect_nothing(1.0)
        assert raw.test_unit_ready() == 0
        assert raw.cmdsn == (expected + 1) % (1 << 32)


def test_commands_run_in_cmdsn_order(server: ExportServer) -> None:
    """A command arriving ahead of a gap waits for it; both then answer, in CmdSN order."""
    with RawInitiator(server) as raw:
        raw.login()
        raw.ready()
        first, second = raw.cmdsn, (raw.cmdsn + 1) % (1 << 32)
        early, late = raw.next_itt(), raw.next_itt()
        raw.send(raw.command_pdu(TEST_UNIT_READY, itt=early, cmdsn=second, flags=FINAL))
        raw.expect_nothing(0.5)
        raw.send(raw.command_pdu(TEST_UNIT_READY, itt=late, cmdsn=first, flags=FINAL))
        answers = [raw.receive(), raw.receive()]
        assert [pdu.itt for pdu in answers] == [late, early]
        assert all(pdu.opcode == OP_SCSI_RESPONSE and pdu.bhs[3] == 0 for pdu in answers)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ExportServer]:
    """A server of the test's own, for abuse whose log must not spill into other tests."""
    path = tmp_path / "disk.raw"
    path.write_bytes(disk_bytes())
    with export_server(path, target_name=TARGET) as running:
        yield running


def reinstate(server: ExportServer) -> None:
    """RFC 7143 §6.3.5: a new login with the same initiator name and ISID replaces the session
    (open-iscsi and Windows reuse their ISID when they reconnect after a network failure)."""
    isid = bytes([0x80, 0x12, 0x34, 0x56, 0, 0])
    with RawInitiator(server) as old:
        old.login(isid=isid)
        old.ready()
        with RawInitiator(server) as new:
            new.login(isid=isid)
            old.wait_closed()
            new.ready()
            assert new.read(8, 1) == disk_bytes()[8 * BLOCK : 9 * BLOCK]
            new.logout()


def _resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_does_not_stall_others(server: ExportServer) -> None:
    """100 pipelined 1 MiB READs whose Data-In nobody reads: that connection's writes block,
    everyone else's must not, and the target holds a few MiB for it, not the 100 MiB asked."""
    with RawInitiator(server) as hog:
        hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.login()
        hog.ready()
        resident = _resident_bytes(server.process.pid)
        for index in range(100):
            hog.send(
                hog.command_pdu(
                    read10(index % 16 * 2048, 2048),
                    itt=hog.next_itt(),
                    cmdsn=hog.take_cmdsn(),
                    flags=FINAL | READ,
                    edtl=MiB,
                )
            )
        done = run_tool([ISCSI_INQ, server.url()], timeout=20)
        assert done.returncode == 0, done.stderr
        done = run_tool([QEMU_IO, "-f", "raw", "-c", "read 0 4M", server.url()], timeout=20)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "read 4194304/4194304" in done.stdout
        grown = _resident_bytes(server.process.pid) - resident
        assert grown < 16 * MiB, f"the target buffered {grown / MiB:.0f} MiB for a stalled reader"
        server.assert_healthy()


def test_session_reinstatement_drops_the_old_connection(own_server: ExportServer) -> None:
    reinstate(own_server)
    assert own_server.alive()
    done = run_tool([ISCSI_INQ, own_server.url()], timeout=20)
    assert done.returncode == 0, done.stderr
    log = own_server.wait_for_log("iSCSI session closed: initiator=iqn.2007-10.com.github")
    tsihs = re.findall(r"iSCSI login: initiator=\S+ target=\S+ isid=801234560000 tsih=(\d+)", log)
    assert len(tsihs) == 2, log
    closed = re.findall(r"iSCSI session closed: initiator=\S+ target=\S+ tsih=(\d+)", log)
    assert closed[:2] == tsihs, "the old session closes first, the new one at its logout"


def test_session_reinstatement_logs_no_traceback(own_server: ExportServer) -> None:
    reinstate(own_server)
    time.sleep(0.2)
    assert "Traceback" not in own_server.log(), own_server.log()


def test_stop_with_a_session_logged_in_logs_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(disk_bytes())
    log = tmp_path / "server.log"
    with RawInitiator.connected(path, log) as raw:
        raw.login()
        raw.ready()
    # export_server sent SIGTERM with the session still logged in, and saw exit status 0
    assert "export stopped" in log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_quick_connect_disconnect_cycles(server: ExportServer) -> None:
    for cycle in range(50):
        with RawInitiator(server) as raw:
            if cycle % 2:
                continue  # bare TCP connect and close
            raw.login(isid=bytes([0x80, 0, 0, cycle, 0, 0]))
            if cycle % 4 == 0:
                raw.logout()
    server.assert_healthy()


def test_parallel_logins(server: ExportServer) -> None:
    count = 20
    barrier = threading.Barrier(count, timeout=30)
    errors: list[BaseException] = []
    expected = disk_bytes()[64 * BLOCK : 72 * BLOCK]

    def one(index: int) -> None:
        try:
            with RawInitiator(server) as raw:
                barrier.wait()
                raw.login(f"{INITIATOR}-{index % 5}", isid=bytes([0x80, 0, 1, index, 0, 0]))
                raw.ready()
                assert raw.read(64, 8) == expected
                raw.logout()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a login hung"
    assert not errors, errors


# -- a writer that vanishes mid Data-Out, while other sessions work --------------------------------


def test_writer_vanishing_mid_data_out(tmp_path: Path) -> None:
    original = disk_bytes()
    path = tmp_path / "disk.raw"
    path.write_bytes(original)
    slots = 4
    slot_size = 64 * KiB
    busy_base = 8 * MiB  # the qemu-io session's slots
    torn_lba = 1024  # the vanishing writer's range: 512 KiB at 512 KiB
    torn_length = 256 * KiB
    torn_data = bytes([0xEE]) * torn_length
    acknowledged: dict[int, int] = {}  # slot -> last pattern qemu-io got a completion for
    stop = threading.Event()
    started = threading.Event()  # qemu-io is logged in and has completed a write and a read
    failures: list[BaseException] = []
    rounds = [0]

    with export_server(path, target_name=TARGET) as running:

        def busy() -> None:
            try:
                with QemuIo(["-f", "raw", running.url()]) as qemu:
                    for step in range(2000):
                        if stop.is_set() and step >= 8:
                            break
                        slot, pattern = step % slots, step % 250 + 1
                        offset = busy_base + slot * slot_size
                        qemu.check(f"write -P {pattern} {offset} {slot_size}")
                        acknowledged[slot] = pattern
                        qemu.check(f"read -P {pattern} {offset} {slot_size}")
                        rounds[0] = step + 1
                        started.set()
            except BaseException as exc:  # reported below
                failures.append(exc)
            finally:
                started.set()

        worker = threading.Thread(target=busy)
        worker.start()
        try:
            assert started.wait(30), "qemu-io did not start"
            assert not failures, failures
            with RawInitiator(running) as writer:
                writer.login(initial_r2t=True, immediate_data=True)
                writer.ready()
                itt = writer.next_itt()
                writer.send(
                    writer.command_pdu(
                        write10(torn_lba, torn_length // BLOCK),
                        itt=itt,
                        cmdsn=writer.take_cmdsn(),
                        flags=FINAL | WRITE,
                        edtl=torn_length,
                        data=torn_data[: 8 * KiB],
                    )
                )
                r2t = writer.receive_for(itt)
                assert r2t.opcode == OP_R2T, r2t.bhs.hex()
                ttt, offset = r2t.word(20), r2t.word(40)
                assert offset == 8 * KiB
                writer.send(
                    writer.data_out(
                        itt, ttt, 0, offset, torn_data[offset : offset + 64 * KiB], final=False
                    )
                )
                # The next Data-Out: its header and half its data, then the writer is gone.
                half = writer.data_out(
                    itt, ttt, 1, offset + 64 * KiB, torn_data[: 64 * KiB], final=False
                )
                writer.send(half[: 48 + 32 * KiB])
            # A second writer vanishes between the command and its first Data-Out.
            with RawInitiator(running) as writer:
                writer.login()
                writer.ready()
                writer.send(
                    writer.command_pdu(
                        write10(torn_lba + 1024, 128),
                        itt=writer.next_itt(),
                        cmdsn=writer.take_cmdsn(),
                        flags=FINAL | WRITE,
                        edtl=64 * KiB,
                    )
                )
            # Meanwhile and afterwards, another raw session writes and reads back fine.
            with RawInitiator(running) as steady:
                steady.login()
                steady.ready()
                steady.write(4096, bytes([0x5A]) * (128 * KiB))
                assert steady.read(4096, 256) == bytes([0x5A]) * (128 * KiB)
                steady.logout()
            deadline = time.monotonic() + 20
            while rounds[0] < 8 and time.monotonic() < deadline and worker.is_alive():
                time.sleep(0.05)
        finally:
            stop.set()
            worker.join(60)
        assert not worker.is_alive(), "qemu-io hung"
        assert not failures, failures
        assert rounds[0] >= 8, "the qemu-io session barely ran"
        assert_serving(running)

    after = path.read_bytes()
    for slot, pattern in acknowledged.items():
        offset = busy_base + slot * slot_size
        assert after[offset : offset + slot_size] == bytes([pattern]) * slot_size, slot
    assert after[4096 * BLOCK : 4352 * BLOCK] == bytes([0x5A]) * (128 * KiB)
    # Never acknowledged: each block holds either the old or the new data, nothing else.
    start = torn_lba * BLOCK
    for block in range(start, start + torn_length, BLOCK):
        got = after[block : block + BLOCK]
        assert got in (original[block : block + BLOCK], torn_data[:BLOCK]), block
    # Everything else is untouched.
    touched = [
        (start, start + torn_length),
        (4096 * BLOCK, 4352 * BLOCK),
        (busy_base, busy_base + slots * slot_size),
    ]
    cursor = 0
    for begin, end in sorted(touched):
        assert after[cursor:begin] == original[cursor:begin], (cursor, begin)
        cursor = end
    assert after[cursor:] == original[cursor:]
