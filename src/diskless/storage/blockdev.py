"""The block-device contract every disk backend fulfils, and the raw-file backend.

The iSCSI target talks to disks only through :class:`BlockDevice`. Besides plain ``read`` it offers
:meth:`BlockDevice.read_plan`, which describes *where* the bytes of a range live instead of copying
them, so the network layer can ``os.sendfile`` golden-image data straight from the page cache.

Calls are synchronous and may block on the file system; a device serialises its own metadata
updates, so it may be used from an executor thread.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from diskless.storage.errors import OutOfRangeError, ReadOnlyError, StorageError
from diskless.storage.fileio import pread_exact, punch_hole, pwrite_all
from diskless.storage.locking import lock_image

__all__ = [
    "SECTOR_SIZE",
    "BlockDevice",
    "BufferExtent",
    "Extent",
    "FileExtent",
    "RawImage",
    "ZeroExtent",
    "byte_view",
    "check_range",
    "extents_length",
    "fill_from_plan",
]

SECTOR_SIZE = 512
"""The logical block size every backend reports; 512 is what BIOS-era boot loaders expect."""


# Not frozen: extents are built for every I/O and a frozen __init__ costs ~1 µs more each;
# treat them as immutable all the same.
@dataclass(slots=True)
class FileExtent:
    """``length`` bytes stored in the open file ``fd`` at byte ``offset``."""

    fd: int
    offset: int
    length: int


@dataclass(slots=True)
class ZeroExtent:
    """``length`` bytes that read as zeros and are stored nowhere."""

    length: int


@dataclass(slots=True)
class BufferExtent:
    """Bytes that exist only in memory, e.g. a decompressed cluster."""

    data: bytes | memoryview

    @property
    def length(self) -> int:
        return len(self.data)


Extent = FileExtent | ZeroExtent | BufferExtent


@runtime_checkable
class BlockDevice(Protocol):
    """A virtual disk of ``size`` bytes addressed by byte offset.

    Offsets and lengths need not be sector aligned, but every range must lie inside the device
    (:class:`OutOfRangeError` otherwise). A write is *acknowledged* when the call returns; it is
    *durable* after a later :meth:`flush` returns, or at once when written with ``fua=True``.
    """

    @property
    def path(self) -> Path: ...

    @property
    def size(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    @property
    def read_only(self) -> bool: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill all of ``buf`` with the bytes at ``offset``."""

    def read_plan(self, offset: int, length: int) -> list[Extent]:
        """Where the bytes of the range live, in order; the lengths add up to ``length``."""

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None: ...

    def write_zeroes(
        self, offset: int, length: int, *, unmap: bool = True, fua: bool = False
    ) -> None:
        """Make the range read as zeros; with ``unmap`` the backend may release the space."""

    def discard(self, offset: int, length: int) -> None:
        """Release the range; afterwards it reads as zeros (SCSI UNMAP with LBPRZ=1)."""

    def flush(self) -> None:
        """Make every write acknowledged so far durable."""

    def allocated_bytes(self) -> int:
        """Bytes the device's own file occupies on the host (not counting backing files)."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def check_range(device_size: int, offset: int, length: int) -> None:
    """Raise :class:`OutOfRangeError` unless ``[offset, offset+length)`` lies inside the device."""
    if offset < 0 or length < 0 or offset + length > device_size:
        raise OutOfRangeError(f"range {offset}+{length} outside device of {device_size} bytes")


def byte_view(buf: bytearray | memoryview) -> memoryview:
    """``buf`` as a flat view of bytes, without a copy (and without a cast when it already is)."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def extents_length(plan: list[Extent]) -> int:
    return sum(extent.length for extent in plan)


def fill_from_plan(plan: list[Extent], buf: memoryview) -> None:
    """Copy the bytes a read plan describes into ``buf`` (the non-zero-copy path)."""
    pos = 0
    for extent in plan:
        end = pos + extent.length
        if isinstance(extent, FileExtent):
            pread_exact(extent.fd, buf[pos:end], extent.offset)
        elif isinstance(extent, ZeroExtent):
            buf[pos:end] = bytes(extent.length)
        else:
            buf[pos:end] = extent.data
        pos = end


class RawImage:
    """A raw disk image: the file's bytes are the disk's bytes."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self._path = Path(path)
        flags = os.O_RDONLY if read_only else os.O_RDWR
        try:
            self._fd = os.open(self._path, flags | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"{self._path}: cannot open raw image: {exc.strerror}") from exc
        try:
            lock_image(self._fd, self._path, write=not read_only)
        except BaseException:
            os.close(self._fd)
            raise
        self._read_only = read_only
        self._size = os.fstat(self._fd).st_size
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return SECTOR_SIZE

    @property
    def read_only(self) -> bool:
        return self._read_only

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        view = byte_view(buf)
        length = len(view)
        if offset < 0 or offset + length > self._size:
            check_range(self._size, offset, length)
        if os.preadv(self._fd, [view], offset) != length:
            pread_exact(self._fd, view, offset)

    def read_plan(self, offset: int, length: int) -> list[Extent]:
        check_range(self._size, offset, length)
        return [FileExtent(self._fd, offset, length)] if length else []

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        self._check_writable()
        view = memoryview(data).cast("B")
        check_range(self._size, offset, len(view))
        pwrite_all(self._fd, view, offset)
        if fua:
            os.fdatasync(self._fd)

    def write_zeroes(
        self, offset: int, length: int, *, unmap: bool = True, fua: bool = False
    ) -> None:
        self._check_writable()
        check_range(self._size, offset, length)
        if not (unmap and punch_hole(self._fd, offset, length)):
            zeros = memoryview(bytes(min(length, 1 << 20)))
            end = offset + length
            while offset < end:
                step = min(len(zeros), end - offset)
                pwrite_all(self._fd, zeros[:step], offset)
                offset += step
        if fua:
            os.fdatasync(self._fd)

    def discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length, unmap=True)

    def flush(self) -> None:
        if not self._read_only:
            os.fdatasync(self._fd)

    def allocated_bytes(self) -> int:
        return os.fstat(self._fd).st_blocks * 512

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyError(f"{self._path}: opened read-only")
