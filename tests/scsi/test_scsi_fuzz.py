"""Fuzz invariant: any CDB is planned and executed without raising, and the answer is well formed.

Random CDBs (6, 10, 12 or 16 bytes, opcodes biased towards the supported ones) go through
``plan`` and, when planned, ``execute`` with Data-Out of exactly the planned size. Either call
may answer CHECK CONDITION; neither may raise. State carries over between examples on purpose
(ejected media, SWP, changed mode pages), so later examples run against odd states too.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scsi_cdbs import BLOCK, IDENTITY

from diskless.scsi import CommandResult, DataDirection, LogicalUnit, ScsiStatus
from diskless.scsi.commands import COMMANDS
from diskless.storage.blockdev import RawImage

_OPCODES = sorted({command.opcode for command in COMMANDS})
_SERVICE_ACTIONS = sorted({command.service_action or 0 for command in COMMANDS})


@st.composite
def cdbs(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from([6, 10, 12, 16]))
    body = bytearray(draw(st.binary(min_size=size, max_size=size)))
    body[0] = draw(st.one_of(st.sampled_from(_OPCODES), st.integers(0, 255)))
    if draw(st.booleans()):
        body[1] = (body[1] & 0xE0) | draw(st.sampled_from(_SERVICE_ACTIONS))
    if draw(st.booleans()):
        body[size - 1] = 0  # a plain CONTROL byte, so NACA does not end every exploration
    return bytes(body)


@pytest.fixture(scope="module")
def fuzz_unit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogicalUnit]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "disk.raw"
    path.write_bytes(random.Random(5).randbytes(2048 * BLOCK))
    with RawImage(path) as device:
        yield LogicalUnit(device, IDENTITY, removable=True)


def _check(result: CommandResult) -> None:
    assert isinstance(result, CommandResult)
    if result.status == ScsiStatus.GOOD:
        assert result.sense == b""
    else:
        assert result.status == ScsiStatus.CHECK_CONDITION
        assert len(result.sense) == 18
        assert result.data == []


@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cdb=cdbs(), seed=st.integers(0, 2**32), zeros=st.booleans(), nexus=st.integers(0, 3))
def test_any_cdb_is_answered(
    fuzz_unit: LogicalUnit, cdb: bytes, seed: int, zeros: bool, nexus: int
) -> None:
    plan = fuzz_unit.plan(cdb)
    if isinstance(plan, CommandResult):
        assert plan.status == ScsiStatus.CHECK_CONDITION
        _check(plan)
        # A transport that executes anyway still gets an answer (maybe a unit attention first).
        late = fuzz_unit.execute(cdb, None, nexus)
        _check(late)
        assert late.status == ScsiStatus.CHECK_CONDITION
        return
    assert plan.transfer_length >= 0
    data = None
    if plan.direction == DataDirection.WRITE:
        length = plan.transfer_length
        data = bytes(length) if zeros else random.Random(seed).randbytes(length)
    result = fuzz_unit.execute(cdb, data, nexus)
    _check(result)
    if result.status == ScsiStatus.GOOD:
        if plan.direction == DataDirection.READ:
            assert result.data_length <= plan.transfer_length
        else:
            assert result.data == []
