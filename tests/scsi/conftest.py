"""Fixtures for the SCSI layer tests: small disks (raw and qcow2 overlays) and logical units."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
from scsi_cdbs import BLOCK, DISK_BLOCKS, IDENTITY

from diskless.scsi import LogicalUnit
from diskless.storage.blockdev import Extent, RawImage
from diskless.storage.qcow2 import Qcow2Image, create_qcow2


class RecordingDevice:
    """A RawImage that records writes (with their FUA flag), discards and flushes."""

    def __init__(self, inner: RawImage) -> None:
        self.inner = inner
        self.calls: list[tuple[object, ...]] = []

    @property
    def path(self) -> Path:
        return self.inner.path

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def block_size(self) -> int:
        return self.inner.block_size

    @property
    def read_only(self) -> bool:
        return self.inner.read_only

    def read(self, offset: int, length: int) -> bytes:
        return self.inner.read(offset, length)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        self.inner.readinto(offset, buf)

    def read_plan(self, offset: int, length: int) -> list[Extent]:
        return self.inner.read_plan(offset, length)

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        self.calls.append(("write", offset, len(memoryview(data)), fua))
        self.inner.write(offset, data, fua=fua)

    def write_zeroes(
        self, offset: int, length: int, *, unmap: bool = True, fua: bool = False
    ) -> None:
        self.calls.append(("write_zeroes", offset, length, unmap, fua))
        self.inner.write_zeroes(offset, length, unmap=unmap, fua=fua)

    def discard(self, offset: int, length: int) -> None:
        self.calls.append(("discard", offset, length))
        self.inner.discard(offset, length)

    def flush(self) -> None:
        self.calls.append(("flush",))
        self.inner.flush()

    def allocated_bytes(self) -> int:
        return self.inner.allocated_bytes()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
