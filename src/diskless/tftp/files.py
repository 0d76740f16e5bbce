"""What the TFTP server may hand out, and the byte sources a transfer reads from.

Owns the jail. A requested name is normalised the way tftpd-hpa ``-s`` and Windows clients need
(backslashes become ``/``, leading ``/`` are stripped, ``.`` and empty parts dropped) and refused
outright if any part is ``..`` or it holds a NUL. It is then looked up, first match wins:

1. the :class:`VirtualFiles` provider, for content generated per client;
2. the configured iPXE programs, by their configured names, in ``ipxe_dir`` (symlinks followed:
   Debian's ``ipxe.efi`` is a link into ``/boot``, and the operator named these files);
3. the TFTP root, where symlinks are followed only while they stay inside the root: the real path
   is checked before opening, and the opened descriptor's path again after, so a link swapped in
   between cannot lead outside.

Sources fill a transfer's preallocated block buffers (``fill``): :class:`FileSource` with one
``preadv`` per window straight into them, :class:`BytesSource` from memory, and
:class:`NetasciiSource` converting another source (LF → CR LF, CR → CR NUL) on the way.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from diskless.errors import ConfigError, DisklessError

from .codec import ErrorCode

__all__ = [
    "BlockSource",
    "BytesSource",
    "ClientAddress",
    "FileCatalog",
    "FileRefused",
    "FileSource",
    "NetasciiSource",
    "ServedFile",
    "VirtualFiles",
    "normalize_name",
]

ClientAddress = tuple[str, int]
"""A client's (IP address, UDP port)."""

# Raw bytes NetasciiSource reads from its inner source at a time.
_NETASCII_CHUNK = 16 << 10


class FileRefused(DisklessError):  # noqa: N818 (a refusal, not an error on our side)
    """A request the server answers with an ERROR packet of ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class VirtualFiles(Protocol):
    """Content generated per client (e.g. a per-machine iPXE script), looked up before any file."""

    def lookup(self, name: str, client: ClientAddress) -> bytes | None:
        """The bytes of ``name`` (already normalised) for ``client``, or ``None`` if not ours."""


class BlockSource(Protocol):
    """The bytes of one transfer, read strictly in order."""

    @property
    def size(self) -> int | None:
        """How many bytes the transfer sends in all, if known up front (the tsize option)."""

    def fill(self, views: Sequence[memoryview]) -> int:
        """Fill ``views`` in order with the next bytes; returns how many were written.

        Each view is filled completely before the next, so only the end of the data makes the
        total fall short.
        """

    def close(self) -> None:
        """Release the file behind the source; called once, when the transfer ends."""


class FileSource:
    """A regular file read with ``preadv``: one system call fills a whole window of blocks."""

    __slots__ = ("_fd", "_offset", "_size")

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._offset = 0

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int:
        return self._fd

    def fill(self, views: Sequence[memoryview]) -> int:
        wanted = sum(len(view) for view in views)
        total = os.preadv(self._fd, views, self._offset)
        # A regular file reads short only at its end; keep going anyway if it did not (a file
        # that grew, or a file system that splits reads), until a read returns nothing.
        while 0 < total < wanted:
            more = os.preadv(self._fd, _skip(views, total), self._offset + total)
            if more == 0:
                break
            total += more
        self._offset += total
        return total

    def close(self) -> None:
        os.close(self._fd)


class BytesSource:
    """Bytes already in memory (virtual files)."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0

    @property
    def size(self) -> int:
        return len(self._data)

    def fill(self, views: Sequence[memoryview]) -> int:
        total = 0
        for view in views:
            piece = self._data[self._offset : self._offset + len(view)]
            view[: len(piece)] = piece
            self._offset += len(piece)
            total += len(piece)
            if len(piece) < len(view):
                break
        return total

    def close(self) -> None:
        self._data.release()


class NetasciiSource:
    """Netascii on the wire (RFC 1350 via RFC 764): LF → CR LF and CR → CR NUL.

    The converted size is not known without reading the whole file, so ``size`` is ``None`` and
    the server leaves tsize out of its answer, as RFC 2349 lets it. Memory stays bounded: at most
    one window plus one converted chunk is held.
    """

    __slots__ = ("_chunk", "_inner", "_pending", "_raw_done")

    def __init__(self, inner: BlockSource) -> None:
        self._inner = inner
        self._chunk = bytearray(_NETASCII_CHUNK)
        self._pending = bytearray()
        self._raw_done = False

    @property
    def size(self) -> None:
        return None

    def fill(self, views: Sequence[memoryview]) -> int:
        wanted = sum(len(view) for view in views)
        while len(self._pending) < wanted and not self._raw_done:
            count = self._inner.fill([memoryview(self._chunk)])
            if count < len(self._chunk):
                self._raw_done = True
            # Each byte converts on its own, so converting chunk by chunk is exact. CR first, so
            # the CR inserted before each LF is not itself turned into CR NUL.
            raw = bytes(self._chunk[:count])
            self._pending += raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        total = 0
        for view in views:
            piece = self._pending[total : total + len(view)]
            view[: len(piece)] = piece
            total += len(piece)
            if len(piece) < len(view):
                break
        del self._pending[:total]
        return total

    def close(self) -> None:
        self._inner.close()


def _skip(views: Sequence[memoryview], count: int) -> list[memoryview]:
    """``views`` without their first ``count`` bytes."""
    rest: list[memoryview] = []
    for view in views:
        if count >= len(view):
            count -= len(view)
            continue
        rest.append(view[count:])
        count = 0
    return rest


@dataclass(frozen=True, slots=True)
class ServedFile:
    """An opened file: its bytes (octet; the session wraps netascii) and where it came from."""

    source: BlockSource
    origin: str
    """``virtual``, ``ipxe`` or ``root``, for logs."""


def normalize_name(requested: str) -> str:
    """The jailed relative path for a requested name; raises :class:`FileRefused`.

    ``a\\b`` → ``a/b``, ``/a//./b`` → ``a/b``; any ``..`` part or a NUL is an access violation.
    """
    if "\0" in requested:
        raise FileRefused(ErrorCode.ACCESS_VIOLATION, "bad file name")
    parts = [part for part in requested.replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise FileRefused(ErrorCode.ACCESS_VIOLATION, "access violation")
    if not parts:
        raise FileRefused(ErrorCode.FILE_NOT_FOUND, "file not found")
    return "/".join(parts)


class FileCatalog:
    """Resolves requested names to opened files; see the module docstring for the order."""

    def __init__(
        self,
        *,
        root: Path | None,
        ipxe_dir: Path,
        loader_names: Iterable[str | None],
        virtual: VirtualFiles | None = None,
    ) -> None:
        self._root = root
        self._ipxe_dir = ipxe_dir
        self._loaders = frozenset(
            _loader_name(name) for name in loader_names if name is not None and name.strip("/")
        )
        self._virtual = virtual

    def open(self, requested: str, client: ClientAddress) -> ServedFile:
        """Open ``requested`` for ``client``; raises :class:`FileRefused` with the error to send."""
        name = normalize_name(requested)
        if self._virtual is not None:
            content = self._virtual.lookup(name, client)
            if content is not None:
                return ServedFile(BytesSource(content), "virtual")
        if name in self._loaders:
            try:
                return ServedFile(self._open_loader(name), "ipxe")
            except FileRefused:
                pass  # Not installed: the TFTP root may still hold a file of that name.
        if self._root is None:
            raise FileRefused(ErrorCode.FILE_NOT_FOUND, "file not found")
        return ServedFile(self._open_in_root(name), "root")

    def _open_loader(self, name: str) -> FileSource:
        return _open_regular(os.path.realpath(self._ipxe_dir / name))

    def _open_in_root(self, name: str) -> FileSource:
        assert self._root is not None
        root = os.path.realpath(self._root)
        real = os.path.realpath(os.path.join(root, name))
        if not _is_within(real, root):
            raise FileRefused(ErrorCode.ACCESS_VIOLATION, "access violation")
        source = _open_regular(real)
        # realpath and open are two steps: check the file actually opened, so a symlink swapped
        # into the path in between cannot escape the root.
        try:
            opened = os.readlink(f"/proc/self/fd/{source.fileno()}")
        except OSError:
            opened = real  # No /proc: the realpath check above is all there is.
        if not _is_within(opened, root):
            source.close()
            raise FileRefused(ErrorCode.ACCESS_VIOLATION, "access violation")
        return source


def _loader_name(name: str) -> str:
    try:
        return normalize_name(name)
    except FileRefused:
        raise ConfigError(f"boot: iPXE program name {name!r} cannot be served over TFTP") from None


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _open_regular(path: str) -> FileSource:
    try:
        # O_NONBLOCK: opening a FIFO must not hang the event loop (it is refused just below).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise _refusal(exc) from exc
    try:
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise _refusal(exc) from exc
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FileRefused(ErrorCode.FILE_NOT_FOUND, "not a regular file")
    return FileSource(fd, info.st_size)


def _refusal(exc: OSError) -> FileRefused:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileRefused(ErrorCode.FILE_NOT_FOUND, "file not found")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.ELOOP):
        return FileRefused(ErrorCode.ACCESS_VIOLATION, "access violation")
    return FileRefused(ErrorCode.NOT_DEFINED, exc.strerror or "cannot open file")
