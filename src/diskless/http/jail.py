"""The HTTP root as a jail: a request path becomes a regular file inside the root, or is refused.

A request may name a file only by a relative path without ``.`` or ``..`` parts, and the file it
names, with every symbolic link followed, must still be inside the root: a link pointing out of
the root is refused even though the request path looks innocent. Directories are never listed.
The root's content is trusted (the operator puts boot files there); the jail keeps *requests*
from reaching anything else.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FileJail", "NoSuchFileError", "OutsideRootError"]


class OutsideRootError(Exception):
    """The request path tries to leave the root (``..``, an absolute path, a link out): 403."""


class NoSuchFileError(Exception):
    """Nothing to serve under this path (missing, a directory, a special file): 404."""


class FileJail:
    """Resolves request paths to the regular files under ``root`` they name."""

    def __init__(self, root: Path) -> None:
        # Resolved once: the root itself may be a symlink (e.g. onto another disk).
        self._root = root.resolve()

    @property
    def root(self) -> Path:
        return self._root

    def resolve(self, relative: str) -> Path:
        """The real path of the regular file ``relative`` names under the root.

        Raises :class:`OutsideRootError` for a path that leaves the root, and
        :class:`NoSuchFileError` when there is no regular file to serve.
        """
        if "\x00" in relative:
            raise OutsideRootError("NUL in path")
        if relative.startswith("/") or "\\" in relative:
            raise OutsideRootError("absolute path")
        parts = relative.split("/")
        if any(part in (".", "..") for part in parts):
            raise OutsideRootError("dot segment")
        try:
            real = self._root.joinpath(*(part for part in parts if part)).resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # missing, not a directory, a symlink loop
            raise NoSuchFileError(relative) from exc
        if not real.is_relative_to(self._root):
            raise OutsideRootError("symbolic link out of the root")
        if not real.is_file():
            raise NoSuchFileError(relative)
        return real
