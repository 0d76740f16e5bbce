"""Crash-safe file replacement and the advisory locks of the image lifecycle layer.

Everything the lifecycle layer persists (catalog entries, ``disk.json``, overlays, golden blobs)
is replaced the same way: write a temporary file in the destination's directory, ``fsync`` it,
``rename`` it over the destination, ``fsync`` the directory. After a crash a reader sees either the
old file or the new one, never a torn one; at worst an orphan temporary file is left behind, and
every temporary name starts with :data:`TEMP_PREFIX` so the garbage collector can find it.

Locks are ``flock`` locks on a file, so the kernel drops them when the holder dies: a crashed
``diskless`` never leaves a disk "busy" forever.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from diskless.storage.errors import StorageError

__all__ = [
    "TEMP_PREFIX",
    "FileLock",
    "LockHeld",
    "atomic_write_bytes",
    "atomic_write_json",
    "fsync_dir",
    "fsync_path",
    "is_temp_name",
    "replace_file",
    "temp_name",
]

TEMP_PREFIX = ".tmp-"
"""Every temporary file or directory we create starts with this, and no valid object name can
(names start with ``[a-z0-9]``), so a leftover is never mistaken for an image or a disk."""


class LockHeld(Exception):  # noqa: N818 - a signal, not an error; callers turn it into one
    """The lock is held by someone else (only raised for non-blocking acquisition)."""


def temp_name(final_name: str) -> str:
    """A unique temporary name for a file that will be renamed to ``final_name``."""
    return f"{TEMP_PREFIX}{final_name}.{secrets.token_hex(6)}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, create or unlink) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Make the file's data and size durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(temp: Path, dest: Path) -> None:
    """Rename an already-fsynced ``temp`` over ``dest`` (same directory) and make it durable."""
    os.replace(temp, dest)
    fsync_dir(dest.parent)


def atomic_write_bytes(dest: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``dest`` with ``data`` so that a crash leaves either the old or the new content."""
    temp = dest.parent / temp_name(dest.name)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        replace_file(temp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def atomic_write_json(dest: Path, document: Any) -> None:
    """Replace ``dest`` with ``document`` as indented, key-sorted JSON (diff-friendly)."""
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(dest, text.encode("utf-8"))


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing).

    Non-blocking acquisition raises :class:`LockHeld`. The lock belongs to this object's open file
    description, so two :class:`FileLock` objects on the same path exclude each other even inside
    one process, which is what lets tests exercise "busy" without a second process.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    @property
    def path(self) -> Path:
        return self._path

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self, *, blocking: bool) -> None:
        if self._fd >= 0:
            raise StorageError(f"{self._path}: lock already held by this handle")
        while True:
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError as exc:
                raise StorageError(f"{self._path}: lock directory is missing") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LockHeld(str(self._path)) from exc
                raise
            # The lock file may have been unlinked (its directory deleted or renamed away) between
            # our open and our flock; then we hold a lock nobody else will ever look at. Only a
            # lock on the inode currently at the path counts.
            try:
                current = os.stat(self._path)
            except FileNotFoundError:
                os.close(fd)
                raise StorageError(f"{self._path}: removed while waiting for its lock") from None
            held = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd >= 0:
            # Closing the descriptor drops the flock; no explicit LOCK_UN needed.
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def hold(self, *, blocking: bool) -> Iterator[Self]:
        self.acquire(blocking=blocking)
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> Self:
        self.acquire(blocking=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
