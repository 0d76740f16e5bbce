"""The full feature phase state machine, driven PDU by PDU without sockets."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest

from diskless.iscsi.connection import MAX_ACTIVE_WRITES, Frame, FullFeatureConnection
from diskless.iscsi.discovery import PortalInfo
from diskless.iscsi.negotiation import SessionParameters, SessionType
from diskless.iscsi.pdu import RESERVED_TAG, DataOut, Opcode, Request, ScsiCommand
from diskless.iscsi.target import TargetRegistry
from diskless.iscsi.window import CommandWindow
from diskless.scsi import LogicalUnit, LuIdentity, naa_locally_assigned
from diskless.storage.blockdev import FileExtent, RawImage

BLOCK = 512
DISK = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> RawImage:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * (DISK // 256))
    image = RawImage(path)
    yield image
    image.close()


def _connection(disk: RawImage, **parameters: object) -> FullFeatureConnection:
    unit = LogicalUnit(
        disk,
        LuIdentity(serial="conn", naa=naa_locally_assigned(b"conn")),
        power_on_unit_attention=False,
    )
    return FullFeatureConnection(
        parameters=SessionParameters(**parameters),  # type: ignore[arg-type]
        session_type=SessionType.NORMAL,
        initiator_name="iqn.2026-11.test:initiator",
        nexus=("iqn.2026-11.test:initiator", b"\x80\x00\x00\x00\x00\x01"),
        logical_unit=unit,
        target_name="iqn.2026-11.test:target",
        directory=TargetRegistry(),
        portal=PortalInfo(),
        window=CommandWindow[Request](1, 128),
        statsn=100,
    )


def _command(
    itt: int, cmdsn: int, cdb: bytes, edtl: int, *, write: bool = False, data: bytes = b""
) -> ScsiCommand:
    return ScsiCommand(
        immediate=False,
        final=True,
        read=not write and edtl > 0,
        write=write,
        attr=1,
        lun=0,
        itt=itt,
        expected_data_transfer_length=edtl,
        cmdsn=cmdsn,
        expstatsn=100,
        cdb=cdb.ljust(16, b"\0"),
        bidi_read_expected_data_transfer_length=None,
        immediate_data=memoryview(data),
    )


def _read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def _write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def _opcode(frame: Frame) -> Opcode:
    return Opcode(frame.header[0] & 0x3F)


def _word(frame: Frame, offset: int) -> int:
    return int(struct.unpack_from(">I", frame.header, offset)[0])


def test_read_is_one_data_in_with_status_and_zero_copy_extents(disk: RawImage) -> None:
    connection = _connection(disk, max_send_data_segment_length=8192)
    frames = connection.receive(_command(7, 1, _read10(8, 32), 32 * BLOCK))
    assert [_opcode(frame) for frame in frames] == [Opcode.DATA_IN, Opcode.DATA_IN]
    last = frames[-1]
    assert last.header[1] & 0x81 == 0x81  # F and S: the status rides on the last Data-In
    assert _word(last, 24) == 100  # StatSN
    assert all(isinstance(extent, FileExtent) for frame in frames for extent in frame.data)
    assert [frame.data_length for frame in frames] == [8192, 8192]
    assert connection.statsn == 101


def test_read_with_short_edtl_reports_overflow(disk: RawImage) -> None:
    connection = _connection(disk)
    frames = connection.receive(_command(1, 1, _read10(0, 1), 200))
    assert frames[-1].data_length == 200
    assert frames[-1].header[1] & 0x04  # O: residual overflow
    assert _word(frames[-1], 44) == BLOCK - 200


def test_writes_beyond_the_active_limit_wait_for_their_r2t(disk: RawImage) -> None:
    connection = _connection(disk, initial_r2t=True, immediate_data=False)
    r2ts: list[Frame] = []
    count = MAX_ACTIVE_WRITES + 4
    for index in range(count):
        cdb = _write10(index * 8, 8)
        r2ts += connection.receive(_command(index + 1, index + 1, cdb, 8 * BLOCK, write=True))
    assert [_opcode(frame) for frame in r2ts] == [Opcode.R2T] * MAX_ACTIVE_WRITES
    first = r2ts[0]
    data = DataOut(
        final=True,
        lun=0,
        itt=1,
        ttt=_word(first, 20),
        expstatsn=100,
        datasn=0,
        buffer_offset=0,
        data=memoryview(b"\xaa" * 8 * BLOCK),
    )
    frames = connection.receive(data)
    assert [_opcode(frame) for frame in frames] == [Opcode.SCSI_RESPONSE, Opcode.R2T]
    assert frames[0].header[3] == 0  # GOOD
    assert _word(frames[1], 16) == MAX_ACTIVE_WRITES + 1  # the next write's ITT
    assert disk.read(0, 8 * BLOCK) == b"\xaa" * 8 * BLOCK


def test_out_of_order_datasn_fails_the_write(disk: RawImage) -> None:
    connection = _connection(disk, initial_r2t=True, immediate_data=False)
    (r2t,) = connection.receive(_command(5, 1, _write10(0, 2), 2 * BLOCK, write=True))
    stray = DataOut(
        final=False,
        lun=0,
        itt=5,
        ttt=_word(r2t, 20),
        expstatsn=100,
        datasn=1,
        buffer_offset=0,
        data=memoryview(b"x" * BLOCK),
    )
    (response,) = connection.receive(stray)
    assert _opcode(response) == Opcode.SCSI_RESPONSE
    assert response.header[3] == 2  # CHECK CONDITION
    sense = bytes(response.data)
    assert sense[2 + 2] & 0x0F == 0x0B  # ABORTED COMMAND
    # The rest of that command's data is ignored, not rejected.
    assert connection.receive(stray) == []


def test_commands_wait_for_their_cmdsn(disk: RawImage) -> None:
    connection = _connection(disk)
    assert connection.receive(_command(2, 2, _read10(0, 1), BLOCK)) == []
    frames = connection.receive(_command(1, 1, _read10(1, 1), BLOCK))
    assert [_word(frame, 16) for frame in frames] == [1, 2]  # ITTs, in CmdSN order


def test_unsolicited_nop_out_gets_no_answer(disk: RawImage) -> None:
    from diskless.iscsi.pdu import NopOut

    connection = _connection(disk)
    ping = NopOut(
        immediate=True,
        lun=0,
        itt=RESERVED_TAG,
        ttt=RESERVED_TAG,
        cmdsn=1,
        expstatsn=100,
        data=memoryview(b""),
    )
    assert connection.receive(ping) == []
    echo = NopOut(
        immediate=True,
        lun=0,
        itt=9,
        ttt=RESERVED_TAG,
        cmdsn=1,
        expstatsn=100,
        data=memoryview(b"hello"),
    )
    (reply,) = connection.receive(echo)
    assert _opcode(reply) == Opcode.NOP_IN
    assert reply.data == b"hello"


def _data_out(itt: int, ttt: int, datasn: int, offset: int, data: bytes, *, final: bool) -> DataOut:
    return DataOut(
        final=final,
        lun=0,
        itt=itt,
        ttt=ttt,
        expstatsn=100,
        datasn=datasn,
        buffer_offset=offset,
        data=memoryview(data),
    )


def test_an_unsolicited_burst_ended_early_fails_the_write(disk: RawImage) -> None:
    # InitialR2T=No: the initiator owes FirstBurstLength (or the EDTL) of unsolicited data. Ending
    # that burst with F early would leave bytes nobody asks for, so the command fails, unwritten.
    connection = _connection(
        disk, initial_r2t=False, immediate_data=False, first_burst_length=8 * BLOCK
    )
    before = disk.read(0, 16 * BLOCK)
    command = _command(9, 1, _write10(0, 16), 16 * BLOCK, write=True)
    frames = connection.receive(dataclasses.replace(command, final=False))  # F=0: data follows
    assert [_opcode(frame) for frame in frames] == [Opcode.R2T]  # for the solicited half
    assert _word(frames[0], 40) == 8 * BLOCK  # its buffer offset
    (response,) = connection.receive(
        _data_out(9, RESERVED_TAG, 0, 0, b"\x11" * 4 * BLOCK, final=True)
    )
    assert _opcode(response) == Opcode.SCSI_RESPONSE
    assert response.header[3] == 2  # CHECK CONDITION
    assert bytes(response.data)[2 + 2] & 0x0F == 0x0B  # ABORTED COMMAND
    assert disk.read(0, 16 * BLOCK) == before


def test_write_buffers_are_reused_without_leaking_old_bytes(disk: RawImage) -> None:
    # A finished write's buffer serves the next one; a smaller write must take only its own
    # bytes from it, and a larger one gets a buffer of its own size.
    connection = _connection(disk, initial_r2t=True, immediate_data=False)
    for itt, (blocks, fill) in enumerate([(256, 0xAA), (128, 0xBB), (512, 0xCC)], start=1):
        (r2t,) = connection.receive(
            _command(itt, itt, _write10(0, blocks), blocks * BLOCK, write=True)
        )
        (response,) = connection.receive(
            _data_out(itt, _word(r2t, 20), 0, 0, bytes([fill]) * blocks * BLOCK, final=True)
        )
        assert response.header[3] == 0  # GOOD
        assert disk.read(0, blocks * BLOCK) == bytes([fill]) * blocks * BLOCK
    assert disk.read(512 * BLOCK, BLOCK) == bytes(range(256)) * 2  # past the writes: untouched
