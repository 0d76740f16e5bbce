"""An open per-machine disk: the overlay's block device plus the disk lock that guards it.

The iSCSI layer serves a :class:`DiskHandle` like any other
:class:`~diskless.storage.blockdev.BlockDevice`; holding it open keeps the disk's lock, so
``diskless disk reset``/``commit``/``delete`` from another process are refused while a client
is using the disk. Closing the handle closes the device first, then drops the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from diskless.storage.blockdev import BlockDevice, Extent
from diskless.storage.durable import FileLock

if TYPE_CHECKING:
    from diskless.storage.disks import DiskRecord

__all__ = ["DiskHandle"]


class DiskHandle:
    """A :class:`BlockDevice` for one disk, holding that disk's lock until :meth:`close`."""

    def __init__(self, *, record: DiskRecord, device: BlockDevice, lock: FileLock) -> None:
        self._record = record
        self._device = device
        self._lock = lock
        self.on_first_write: Callable[[], None] | None = None
        """Called once, before the next write, write-zeroes or discard (then cleared): how the
        boot timeline learns when a booted machine first writes its disk."""

    def _first_write(self) -> None:
        callback, self.on_first_write = self.on_first_write, None
        if callback is not None:
            callback()

    @property
    def record(self) -> DiskRecord:
        """The disk as it was when opened (after any reset-on-boot)."""
        return self._record

    @property
    def device(self) -> BlockDevice:
        """The underlying overlay device."""
        return self._device

    @property
    def path(self) -> Path:
        return self._device.path

    @property
    def size(self) -> int:
        return self._device.size

    @property
    def block_size(self) -> int:
        return self._device.block_size

    @property
    def read_only(self) -> bool:
        return self._device.read_only

    def read(self, offset: int, length: int) -> bytes:
        return self._device.read(offset, length)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        self._device.readinto(offset, buf)

    def read_plan(self, offset: int, length: int) -> list[Extent]:
        return self._device.read_plan(offset, length)

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        if self.on_first_write is not None:
            self._first_write()
        self._device.write(offset, data, fua=fua)

    def write_zeroes(
        self, offset: int, length: int, *, unmap: bool = True, fua: bool = False
    ) -> None:
        if self.on_first_write is not None:
            self._first_write()
        self._device.write_zeroes(offset, length, unmap=unmap, fua=fua)

    def discard(self, offset: int, length: int) -> None:
        if self.on_first_write is not None:
            self._first_write()
        self._device.discard(offset, length)

    def flush(self) -> None:
        self._device.flush()

    def allocated_bytes(self) -> int:
        return self._device.allocated_bytes()

    def close(self) -> None:
        """Close the device, then release the disk lock (idempotent)."""
        try:
            self._device.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
