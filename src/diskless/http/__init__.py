"""The HTTP boot plane: per-machine iPXE scripts and boot files over HTTP (aiohttp).

* ``app``: the routes (``/boot.ipxe``, ``/boot/{mac}.ipxe``, ``/ipxe/{name}``, ``/files/{path}``)
  over a :class:`BootPlane`, counted in :class:`HttpStats`.
* ``jail``: :class:`FileJail`, request paths to files inside the HTTP root, nothing else.
* ``once``: next-boot-once overrides served once (:class:`ConsumedInMemory`).
* ``service``: :class:`HttpBootService`, the ``http`` service of ``diskless serve``.
"""

from diskless.http.app import BootPlane, HttpStats, SiteLookup, build_app
from diskless.http.jail import FileJail, NoSuchFileError, OutsideRootError
from diskless.http.once import ConsumedInMemory, NextBootOnceStore
from diskless.http.service import HttpBootService

__all__ = [
    "BootPlane",
    "ConsumedInMemory",
    "FileJail",
    "HttpBootService",
    "HttpStats",
    "NextBootOnceStore",
    "NoSuchFileError",
    "OutsideRootError",
    "SiteLookup",
    "build_app",
]
