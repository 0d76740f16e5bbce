"""Content-addressed storage of golden image versions ("blobs").

A blob is a finished, immutable raw disk image named by the sha256 of its whole virtual-disk
content, zeros included, so the same disk always gets the same name on every boot server and a
copy pulled from a peer can be checked against its name. Blobs are kept raw and sparse (holes for
zero ranges) so the iSCSI layer can ``sendfile`` them and an empty 40 GiB disk costs nothing.

This module owns the :class:`ImageStore` contract, its local-file backend :class:`LocalImageStore`
(``<root>/sha256/<hex>.raw``, mode 0o444), and :class:`StagedBlob`, the temporary file a new blob
is written into, hashed while it is written and then published with one ``rename``. It knows
nothing about image names or versions; the catalog maps those to digests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from diskless.errors import NotFoundError
from diskless.storage.blockdev import BlockDevice, BufferExtent, FileExtent, ZeroExtent
from diskless.storage.durable import fsync_dir, is_temp_name, temp_name
from diskless.storage.errors import StorageError

__all__ = [
    "COPY_CHUNK",
    "Digest",
    "ImageStore",
    "LocalImageStore",
    "Progress",
    "StagedBlob",
    "hash_file",
]

COPY_CHUNK = 4 << 20
"""Bytes per read while copying or hashing: large enough that per-call Python overhead is noise
next to sha256 (~1.5 GB/s), small enough to keep memory flat and progress callbacks frequent."""

ZERO_BLOCK = 64 << 10
"""Granularity at which written data is checked for zeros and left as a hole instead. 64 KiB is
the qcow2 default cluster size, so zeroed clusters of a flattened overlay stay unallocated."""

_ZEROS = bytes(COPY_CHUNK)
_ZERO_BLOCK_BYTES = bytes(ZERO_BLOCK)
_HEX_RE = re.compile(r"[0-9a-f]{64}")

BLOB_MODE = 0o444
"""Published blobs are read-only: a golden version must never change while overlays use it."""

Progress = Callable[[int, int], None]
"""Called with ``(bytes_done, bytes_total)`` as long-running work advances."""


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """The sha256 of a blob's full content; written ``sha256:<64 hex digits>``."""

    hex: str

    def __post_init__(self) -> None:
        if not _HEX_RE.fullmatch(self.hex):
            raise ValueError(f"not a sha256 hex digest: {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Accept ``sha256:<hex>`` (or bare hex); raise :class:`ValueError` otherwise."""
        algorithm, sep, value = text.partition(":")
        if not sep:
            value = algorithm
        elif algorithm != "sha256":
            raise ValueError(f"unsupported digest algorithm in {text!r}")
        return cls(value.lower())

    @property
    def short(self) -> str:
        """The first 12 hex digits, enough to tell versions apart in a table."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def _data_segments(fd: int, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """Split ``[start, end)`` of a file into ``(offset, length, is_data)`` runs using
    ``SEEK_DATA``/``SEEK_HOLE``; file systems without them report one data run."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after pos: the rest is a hole
                yield pos, end - pos, False
                return
            if exc.errno == errno.EINVAL:  # no SEEK_DATA support: treat as all data
                yield pos, end - pos, True
                return
            raise
        if data >= end:
            yield pos, end - pos, False
            return
        if data > pos:
            yield pos, data - pos, False
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data, True
        pos = hole


def _hash_zeros(hasher: hashlib._Hash, length: int) -> None:
    zeros = memoryview(_ZEROS)
    while length > 0:
        step = min(length, len(zeros))
        hasher.update(zeros[:step])
        length -= step


def hash_file(path: Path, progress: Progress | None = None) -> Digest:
    """sha256 of the file's full content; holes are hashed as zeros without being read."""
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        buf = bytearray(COPY_CHUNK)
        for offset, length, is_data in _data_segments(fd, 0, size):
            if not is_data:
                _hash_zeros(hasher, length)
                pos = offset + length
            else:
                pos, end = offset, offset + length
                while pos < end:
                    view = memoryview(buf)[: min(COPY_CHUNK, end - pos)]
                    got = os.preadv(fd, [view], pos)
                    if got == 0:  # file shrank under us: the remainder reads as zeros
                        _hash_zeros(hasher, end - pos)
                        pos = end
                        break
                    hasher.update(view[:got])
                    pos += got
                    if progress is not None:
                        progress(pos, size)
            if progress is not None:
                progress(pos, size)
    finally:
        os.close(fd)
    return Digest(hasher.hexdigest())


class StagedBlob:
    """A new blob under construction: a locked temporary file inside the store.

    Either write the content sequentially through :meth:`write`, :meth:`write_zeroes`,
    :meth:`copy_file` and :meth:`copy_device` (it is hashed on the way and zero blocks become
    holes), or let an outside program fill :attr:`path` and write nothing here; :meth:`seal` then
    hashes the file as it stands. After :meth:`seal` the store can :meth:`ImageStore.publish` it.
    Closing an unpublished blob deletes the file. While open, the file carries an ``flock`` so
    :meth:`LocalImageStore.clean_staging` leaves a blob that is still being written alone.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._hasher = hashlib.sha256()
        self._position = 0
        self._written = False
        self._digest: Digest | None = None
        self._size = 0
        self._published = False
        self._buf = bytearray(COPY_CHUNK)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def position(self) -> int:
        """Bytes written (or skipped as zeros) so far."""
        return self._position

    @property
    def digest(self) -> Digest | None:
        return self._digest

    @property
    def size(self) -> int:
        """The blob's size; valid after :meth:`seal`."""
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; 64 KiB blocks of zeros are skipped, leaving holes."""
        self._check_open()
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self._written = True
        total = len(view)
        run_start = -1  # start of the current run of non-zero blocks, -1 when in zeros
        for pos in range(0, total, ZERO_BLOCK):
            block = bytes(view[pos : pos + ZERO_BLOCK])
            zeros = _ZERO_BLOCK_BYTES if len(block) == ZERO_BLOCK else bytes(len(block))
            is_zero = block == zeros
            if not is_zero and run_start < 0:
                run_start = pos
            elif is_zero and run_start >= 0:
                self._pwrite_all(view[run_start:pos], self._position + run_start)
                run_start = -1
        if run_start >= 0:
            self._pwrite_all(view[run_start:], self._position + run_start)
        self._position += total

    def write_zeroes(self, length: int) -> None:
        """Append ``length`` zero bytes as a hole."""
        self._check_open()
        _hash_zeros(self._hasher, length)
        self._written = True
        self._position += length

    def copy_file(self, fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes of the open file ``fd`` from ``offset``, keeping its holes."""
        for seg_offset, seg_length, is_data in _data_segments(fd, offset, offset + length):
            if not is_data:
                self.write_zeroes(seg_length)
                continue
            pos, end = seg_offset, seg_offset + seg_length
            while pos < end:
                view = memoryview(self._buf)[: min(len(self._buf), end - pos)]
                got = os.preadv(fd, [view], pos)
                if got == 0:  # past the end of a short file: the rest reads as zeros
                    self.write_zeroes(end - pos)
                    break
                self.write(view[:got])
                pos += got

    def copy_device(self, device: BlockDevice, progress: Progress | None = None) -> None:
        """Append the whole content of ``device`` as its read plan describes it.

        Ranges the device reports as zeros are never read; file ranges are copied hole-aware, so
        a flattened overlay is as sparse as its golden image plus its own writes.
        """
        size = device.size
        offset = 0
        while offset < size:
            length = min(COPY_CHUNK, size - offset)
            for extent in device.read_plan(offset, length):
                if isinstance(extent, ZeroExtent):
                    self.write_zeroes(extent.length)
                elif isinstance(extent, FileExtent):
                    self.copy_file(extent.fd, extent.offset, extent.length)
                elif isinstance(extent, BufferExtent):
                    self.write(extent.data)
            offset += length
            if self._position != offset:
                raise StorageError(
                    f"{device.path}: read plan for {offset - length}+{length} covers "
                    f"{self._position - offset + length} bytes"
                )
            if progress is not None:
                progress(offset, size)

    def seal(self, progress: Progress | None = None) -> Digest:
        """Finish the file (size, fsync, read-only mode) and return its digest.

        If nothing was written through this object, the file's current content is hashed.
        """
        self._check_open()
        if self._written:
            # Trailing zeros were skipped, not written: the size must come from the truncate.
            os.ftruncate(self._fd, self._position)
            self._size = self._position
            self._digest = Digest(self._hasher.hexdigest())
        else:
            self._size = os.fstat(self._fd).st_size
            self._digest = hash_file(self._path, progress)
        os.fsync(self._fd)
        os.fchmod(self._fd, BLOB_MODE)
        return self._digest

    def mark_published(self) -> None:
        self._published = True

    def close(self) -> None:
        """Release the file; an unpublished one is deleted."""
        if self._fd < 0:
            return
        if not self._published:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
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

    def _check_open(self) -> None:
        if self._fd < 0:
            raise StorageError(f"{self._path}: staged blob already closed")
        if self._digest is not None:
            raise StorageError(f"{self._path}: staged blob already sealed")

    def _pwrite_all(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            done += os.pwritev(self._fd, [data[done:]], offset + done)


@runtime_checkable
class ImageStore(Protocol):
    """Where golden blobs live, addressed by :class:`Digest`.

    A second backend (a per-server cache that pulls missing blobs from a peer over HTTP and
    checks them against their digest) fits behind the same calls. Callers serialise
    :meth:`publish` and :meth:`remove` with the catalog lock, so removing an unreferenced blob
    never races with a version being added for it.
    """

    def stage(self) -> StagedBlob:
        """A new empty temporary blob on the store's file system (close it when done)."""

    def publish(self, staged: StagedBlob) -> Digest:
        """Move a sealed blob into place; if that content is already stored, keep the old copy."""

    def add(self, path: Path, *, progress: Progress | None = None) -> Digest:
        """Copy a finished raw image file into the store (keeping holes); returns its digest."""

    def path(self, digest: Digest) -> Path:
        """The local file holding ``digest`` (it may not exist; see :meth:`has`)."""

    def has(self, digest: Digest) -> bool: ...

    def size(self, digest: Digest) -> int:
        """The blob's size in bytes; :class:`NotFoundError` if absent."""

    def remove(self, digest: Digest) -> None:
        """Delete the blob; absent is not an error."""

    def digests(self) -> list[Digest]:
        """Every stored blob, sorted."""

    def verify(self, digest: Digest, progress: Progress | None = None) -> bool:
        """Rehash the blob; True when its content still matches its name."""


class LocalImageStore:
    """Blobs as files ``<root>/sha256/<hex>.raw``; staging files in ``<root>/staging/``.

    Staging lives under the same root so publishing is a ``rename`` on one file system.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._blobs = root / "sha256"
        self._staging = root / "staging"

    @property
    def root(self) -> Path:
        return self._root

    @property
    def staging_dir(self) -> Path:
        return self._staging

    def _ensure_dirs(self) -> None:
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(parents=True, exist_ok=True)

    def stage(self) -> StagedBlob:
        self._ensure_dirs()
        return StagedBlob(self._staging / temp_name("blob.raw"))

    def publish(self, staged: StagedBlob) -> Digest:
        digest = staged.digest
        if digest is None:
            raise StorageError(f"{staged.path}: publish before seal")
        dest = self.path(digest)
        self._ensure_dirs()
        if not dest.exists():
            os.rename(staged.path, dest)
            staged.mark_published()
            fsync_dir(self._blobs)
        return digest

    def add(self, path: Path, *, progress: Progress | None = None) -> Digest:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"{path}: cannot open: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            with self.stage() as staged:
                offset = 0
                while offset < size:
                    length = min(COPY_CHUNK, size - offset)
                    staged.copy_file(fd, offset, length)
                    offset += length
                    if progress is not None:
                        progress(offset, size)
                staged.seal()
                return self.publish(staged)
        finally:
            os.close(fd)

    def path(self, digest: Digest) -> Path:
        return self._blobs / f"{digest.hex}.raw"

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in the store at {self._root}") from None

    def remove(self, digest: Digest) -> None:
        path = self.path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(self._blobs)

    def digests(self) -> list[Digest]:
        if not self._blobs.is_dir():
            return []
        found: list[Digest] = []
        for entry in self._blobs.iterdir():
            hex_part, dot, ext = entry.name.partition(".")
            if dot and ext == "raw" and _HEX_RE.fullmatch(hex_part):
                found.append(Digest(hex_part))
        return sorted(found)

    def verify(self, digest: Digest, progress: Progress | None = None) -> bool:
        path = self.path(digest)
        if not path.is_file():
            raise NotFoundError(f"blob {digest} is not in the store at {self._root}")
        return hash_file(path, progress) == digest

    def is_read_only(self, digest: Digest) -> bool:
        """True when the blob file has no write permission bits (as published)."""
        mode = self.path(digest).stat().st_mode
        return not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)

    def clean_staging(self) -> list[Path]:
        """Delete staging files left by crashed writers; returns what was removed.

        A file whose ``flock`` can be taken has no live writer (the kernel dropped the lock when
        the writer died), so it is safe to delete even while other imports run.
        """
        removed: list[Path] = []
        if not self._staging.is_dir():
            return removed
        for entry in self._staging.iterdir():
            if not is_temp_name(entry.name):
                continue
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
            finally:
                os.close(fd)
        return removed
