"""Image file locks that QEMU understands.

QEMU (``block/file-posix.c``) advertises what an open image is used for with open-file-description
byte locks: a shared lock on byte ``100 + bit`` for each permission it holds and on ``200 + bit``
for each permission it refuses to share. Taking the same locks means ``qemu-img`` and ``qemu-io``
refuse to touch an overlay we are serving (and tell the operator why), and we refuse to open an
overlay that a QEMU process is writing, instead of both silently corrupting it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from diskless.storage.errors import ImageBusyError

__all__ = ["lock_image"]

_PERM_BASE = 100
_SHARED_BASE = 200
_PERM_CONSISTENT_READ = 0
_PERM_WRITE = 1
_PERM_WRITE_UNCHANGED = 2
_PERM_RESIZE = 3
_ALL_PERMS = (_PERM_CONSISTENT_READ, _PERM_WRITE, _PERM_WRITE_UNCHANGED, _PERM_RESIZE)
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = struct.Struct("hhqqi")
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def lock_image(fd: int, path: Path, *, write: bool) -> None:
    """Lock an open image the way QEMU would for a reader or a writer; raise if someone conflicts.

    A reader holds "consistent read" and refuses to share "write" (a golden image must not change
    under its overlays); a writer also holds "write" and "write unchanged", so no other process
    may write or take a consistent view. The locks live as long as ``fd``.
    """
    held = {_PERM_CONSISTENT_READ}
    if write:
        held |= {_PERM_WRITE, _PERM_WRITE_UNCHANGED}
    # Consistent read stays shared so `qemu-img info -U` can inspect a disk while it is served.
    unshared = {_PERM_WRITE, _PERM_RESIZE}
    for perm in held:
        if _conflicts(fd, _SHARED_BASE + perm):
            raise ImageBusyError(f"{path}: is in use by another user that forbids sharing it")
    for perm in unshared:
        if _conflicts(fd, _PERM_BASE + perm):
            raise ImageBusyError(f"{path}: is in use by another user (locked)")
    for perm in _ALL_PERMS:
        if perm in held:
            _set_shared_lock(fd, path, _PERM_BASE + perm)
        if perm in unshared:
            _set_shared_lock(fd, path, _SHARED_BASE + perm)


def _conflicts(fd: int, byte: int) -> bool:
    request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
    try:
        answer = fcntl.fcntl(fd, _F_OFD_GETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False  # the file system has no byte locks; nothing to coordinate with
        raise
    lock_type = _FLOCK.unpack(answer)[0]
    return bool(lock_type != fcntl.F_UNLCK)


def _set_shared_lock(fd: int, path: Path, byte: int) -> None:
    request = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, byte, 1, 0)
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise ImageBusyError(f"{path}: is in use by another user (locked)") from exc
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
