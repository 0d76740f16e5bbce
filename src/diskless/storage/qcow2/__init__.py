"""qcow2 v3 images: our own reader and writer, interoperable with QEMU's.

Public surface: :func:`create_qcow2` makes empty images and overlays exactly as ``qemu-img create``
does; :class:`Qcow2Image` opens one as a :class:`~diskless.storage.blockdev.BlockDevice`.
"""

from diskless.storage.qcow2.create import create_qcow2
from diskless.storage.qcow2.format import Header
from diskless.storage.qcow2.image import Qcow2Image

__all__ = ["Header", "Qcow2Image", "create_qcow2"]
