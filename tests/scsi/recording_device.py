"""A block device wrapper that records what the SCSI layer asked of it (tests only)."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from diskless.storage.blockdev import Extent, RawImage


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
