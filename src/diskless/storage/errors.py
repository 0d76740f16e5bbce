"""Errors raised by the disk engine.

Every error that concerns a file names that file, so an operator reading a log line knows which
image to look at.
"""

from __future__ import annotations

from pathlib import Path

from diskless.errors import ConflictError, DisklessError


class StorageError(DisklessError):
    """A disk image could not be opened, read or written as asked."""


class ImageFormatError(StorageError):
    """The file is not a valid image of its format (truncated, corrupt or unsupported)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class BackingFileError(StorageError):
    """An overlay's backing file is missing or unusable."""

    def __init__(self, path: Path | str, backing: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.backing = Path(backing)
        super().__init__(f"{path}: backing file {backing}: {reason}")


class ReadOnlyError(StorageError):
    """A write was attempted on a device opened read-only."""


class OutOfRangeError(StorageError, ValueError):
    """An I/O request reaches outside the device."""


class ImageBusyError(StorageError, ConflictError):
    """Another process holds the image open for writing."""
