"""Fixtures for the SCSI layer tests: small disks (raw and qcow2 overlays) and logical units."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from recording_device import RecordingDevice
from scsi_cdbs import BLOCK, DISK_BLOCKS, IDENTITY

from diskless.scsi import LogicalUnit
from diskless.storage.blockdev import RawImage
from diskless.storage.qcow2 import Qcow2Image, create_qcow2


def _random_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


@pytest.fixture
def raw_path(tmp_path: Path) -> Path:
    return _random_file(tmp_path / "disk.raw", DISK_BLOCKS * BLOCK, 1)


@pytest.fixture
def raw(raw_path: Path) -> Iterator[RawImage]:
    with RawImage(raw_path) as device:
        yield device


@pytest.fixture
def recording(raw: RawImage) -> RecordingDevice:
    return RecordingDevice(raw)


@pytest.fixture
def unit(recording: RecordingDevice) -> LogicalUnit:
    """A writable LU over a recorded raw image, without the power-on unit attention."""
    return LogicalUnit(recording, IDENTITY, power_on_unit_attention=False)


@pytest.fixture
def golden_path(tmp_path: Path) -> Path:
    return _random_file(tmp_path / "golden.raw", DISK_BLOCKS * BLOCK, 2)


@pytest.fixture
def overlay(tmp_path: Path, golden_path: Path) -> Iterator[Qcow2Image]:
    path = tmp_path / "client.qcow2"
    create_qcow2(path, backing=golden_path.name, backing_format="raw")
    with Qcow2Image(path) as image:
        yield image
