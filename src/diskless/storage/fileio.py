"""Low-level file I/O shared by the disk backends: exact positional reads and writes, hole punching.

The kernel may return short reads and writes; these helpers loop until the whole buffer is done,
and never copy the caller's data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["pread_exact", "punch_hole", "pwrite_all"]

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def pread_exact(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from ``offset``; bytes past the end of the file read as zeros (sparse tail)."""
    done = 0
    total = len(buf)
    while done < total:
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got == 0:
            buf[done:] = bytes(total - done)
            return
        done += got


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``."""
    done = 0
    total = len(data)
    while done < total:
        done += os.pwritev(fd, [data[done:]], offset + done)


@functools.cache
def _libc_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    func = ctypes.CDLL(name, use_errno=True).fallocate
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a byte range, keeping the file size; False where the file system can't.

    ``os.fallocate`` has no mode argument, and ``FALLOC_FL_PUNCH_HOLE`` is what releases space.
    """
    if length <= 0:
        return True
    func = _libc_fallocate()
    if func is None:
        return False
    return bool(func(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0)
