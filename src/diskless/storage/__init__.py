"""The disk engine: block devices, our qcow2 engine, golden image versions and per-machine disks.

Modules, bottom up:

* ``blockdev``: the :class:`BlockDevice` contract (with ``read_plan`` for zero-copy reads) and the
  raw backend; ``fileio`` and ``locking`` (QEMU-compatible image locks) serve the backends.
* ``qcow2``: our qcow2 v3 reader and writer (:func:`create_qcow2`, :class:`Qcow2Image`).
* ``images``: :func:`open_image` and :func:`inspect_image` for any supported format.
* ``store`` (content-addressed golden blobs), ``catalog`` (image names and their immutable
  versions), ``importer`` (``qemu-img convert``), ``disks`` (per-machine overlays: create, reset,
  rollback, commit) and ``library`` (all of them behind one object built from the settings).

Errors derive from :class:`~diskless.storage.errors.StorageError`.
"""

from diskless.storage.blockdev import (
    BlockDevice,
    BufferExtent,
    Extent,
    FileExtent,
    RawImage,
    ZeroExtent,
)
from diskless.storage.errors import (
    BackingFileError,
    ImageBusyError,
    ImageFormatError,
    OutOfRangeError,
    ReadOnlyError,
    StorageError,
)
from diskless.storage.images import ImageInfo, inspect_image, open_image, probe_format
from diskless.storage.qcow2 import Qcow2Image, create_qcow2

__all__ = [
    "BackingFileError",
    "BlockDevice",
    "BufferExtent",
    "Extent",
    "FileExtent",
    "ImageBusyError",
    "ImageFormatError",
    "ImageInfo",
    "OutOfRangeError",
    "Qcow2Image",
    "RawImage",
    "ReadOnlyError",
    "StorageError",
    "ZeroExtent",
    "create_qcow2",
    "inspect_image",
    "open_image",
    "probe_format",
]
