"""Opening and inspecting disk images whatever their format (raw or qcow2).

This is the one place that decides which backend serves a file, so the rest of diskless can say
"open this image" without caring how it is stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from diskless.storage.blockdev import BlockDevice, RawImage
from diskless.storage.errors import StorageError
from diskless.storage.qcow2.format import MAGIC
from diskless.storage.qcow2.image import Qcow2Image

__all__ = ["FORMATS", "ImageInfo", "inspect_image", "open_image", "probe_format"]

FORMATS = ("raw", "qcow2")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What an operator wants to know about an image file (cf. ``qemu-img info``)."""

    path: Path
    format: str
    virtual_size: int
    allocated_bytes: int
    file_size: int
    backing_file: str | None = None
    backing_format: str | None = None
    cluster_size: int | None = None
    extended_l2: bool = False


def probe_format(path: Path | str) -> str:
    """``"qcow2"`` if the file starts with the qcow2 magic, else ``"raw"``."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            magic = file.read(len(MAGIC))
    except OSError as exc:
        raise StorageError(f"{path}: cannot open image: {exc.strerror}") from exc
    return "qcow2" if magic == MAGIC else "raw"


def open_image(
    path: Path | str,
    *,
    read_only: bool = False,
    fmt: str | None = None,
    sync: bool = True,
    _chain_depth: int = 0,
) -> BlockDevice:
    """Open ``path`` as a block device, with its backing chain (opened read-only).

    ``fmt`` forces the format; otherwise it is probed. A file that does not start with the qcow2
    magic is opened as raw only when probing, as QEMU does.
    """
    fmt = fmt or probe_format(path)
    if fmt == "qcow2":
        return Qcow2Image(path, read_only=read_only, sync=sync, _chain_depth=_chain_depth)
    if fmt == "raw":
        return RawImage(path, read_only=read_only)
    raise StorageError(
        f"{path}: unsupported image format {fmt!r} (supported: {', '.join(FORMATS)})"
    )


def inspect_image(path: Path | str) -> ImageInfo:
    """Describe an image without modifying it (its backing chain must be present)."""
    path = Path(path)
    device = open_image(path, read_only=True)
    try:
        stat = os.stat(path)
        if isinstance(device, Qcow2Image):
            header = device.header
            return ImageInfo(
                path=path,
                format="qcow2",
                virtual_size=device.size,
                allocated_bytes=stat.st_blocks * 512,
                file_size=stat.st_size,
                backing_file=header.backing_file,
                backing_format=header.backing_format,
                cluster_size=header.cluster_size,
                extended_l2=header.extended_l2,
            )
        return ImageInfo(
            path=path,
            format="raw",
            virtual_size=device.size,
            allocated_bytes=stat.st_blocks * 512,
            file_size=stat.st_size,
        )
    finally:
        device.close()
