"""The image lifecycle as one object: store, catalog and disks under one data directory.

:class:`ImageLibrary` is what the CLI (and later the API) builds from
:class:`~diskless.config.Settings`. It owns the operations that cross the three parts: importing
a foreign image as a new version, deleting versions only when no disk uses them (and their blob
only when no version references it), verifying blobs against their digests, and collecting what
crashed operations left behind.

Layout under ``data_dir``::

    images/blobs/sha256/<hex>.raw     golden versions, read-only, sparse
    images/blobs/staging/             blobs being written (flock'ed while alive)
    images/catalog/<name>.json        versions of each image
    images/catalog.lock               serialises catalog changes and disk→version references
    disks/<name>/                     per-machine disks (see diskless.storage.disks)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diskless.config import Settings
from diskless.errors import ConflictError
from diskless.storage.catalog import Catalog, ImageRecord, ImageVersion, validate_name
from diskless.storage.diskhandle import DiskHandle
from diskless.storage.disks import DiskManager, DiskRecord
from diskless.storage.importer import convert_to_raw, probe_source
from diskless.storage.store import Digest, LocalImageStore, Progress

__all__ = ["GcReport", "ImageLibrary", "PhaseProgress", "VerifyResult"]

PhaseProgress = Callable[[str, int, int], None]
"""``(phase, bytes_done, bytes_total)``; phases are ``convert``, ``hash``, ``verify``."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    version: ImageVersion
    ok: bool
    missing: bool = False


@dataclass(frozen=True, slots=True)
class GcReport:
    staging_files: list[Path] = field(default_factory=list)
    disk_leftovers: list[Path] = field(default_factory=list)
    orphan_blobs: list[Digest] = field(default_factory=list)


def _phase(progress: PhaseProgress | None, phase: str) -> Progress | None:
    if progress is None:
        return None
    return lambda done, total: progress(phase, done, total)


class ImageLibrary:
    """Golden images, their versions and the per-machine disks built on them."""

    def __init__(
        self,
        data_dir: Path,
        *,
        cluster_size: int = 131072,
        extended_l2: bool = True,
        qemu_img: str = "qemu-img",
    ) -> None:
        self._data_dir = data_dir
        self.store = LocalImageStore(data_dir / "images" / "blobs")
        self.catalog = Catalog(data_dir / "images" / "catalog")
        self.disks = DiskManager(
            data_dir / "disks",
            self.store,
            self.catalog,
            cluster_size=cluster_size,
            extended_l2=extended_l2,
        )
        self._qemu_img = qemu_img

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLibrary:
        return cls(
            settings.data_dir,
            cluster_size=settings.storage.overlay_cluster_size,
            extended_l2=settings.storage.overlay_extended_l2,
        )

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    def import_image(
        self,
        name: str,
        source: Path,
        *,
        fmt: str | None = None,
        note: str = "",
        progress: PhaseProgress | None = None,
    ) -> ImageVersion:
        """Convert ``source`` to raw with qemu-img and add it as the next version of ``name``.

        Raises :class:`~diskless.storage.importer.SourceImageError` for a file that cannot be
        imported, :class:`ConflictError` if ``name`` already has a version with this content.
        """
        validate_name(name)
        info = probe_source(source, fmt=fmt, qemu_img=self._qemu_img)
        with self.store.stage() as staged:
            convert_to_raw(
                info, staged.path, progress=_phase(progress, "convert"), qemu_img=self._qemu_img
            )
            digest = staged.seal(progress=_phase(progress, "hash"))
            with self.catalog.locked():
                for existing in self._versions_or_none(name):
                    if existing.digest == digest:
                        raise ConflictError(
                            f"{info.path} has the same content as {existing.label}; not imported"
                        )
                self.store.publish(staged)
                return self.catalog.add_version(
                    name, digest=digest, size=staged.size, source=str(info.path), note=note
                )

    def delete_version(self, name: str, version: int) -> ImageVersion:
        """Remove one version; :class:`ConflictError` naming the disks that still use it."""
        with self.catalog.locked():
            self.catalog.version(name, version)  # NotFoundError before anything else
            self._refuse_if_used(name, version)
            removed = self.catalog.remove_version(name, version)
            self._drop_unreferenced(removed.digest)
            return removed

    def delete_image(self, name: str) -> ImageRecord:
        """Remove an image and all its versions; refused while any disk uses any of them."""
        with self.catalog.locked():
            self.catalog.get(name)
            self._refuse_if_used(name, None)
            record = self.catalog.remove_image(name)
            for version in record.versions:
                self._drop_unreferenced(version.digest)
            return record

    def open_disk(self, name: str, *, boot: bool = False, read_only: bool = False) -> DiskHandle:
        """Open disk ``name`` for serving (see :meth:`DiskManager.open`): a block device that
        holds the disk's lock until closed; ``boot=True`` applies reset-on-boot first."""
        return self.disks.open(name, boot=boot, read_only=read_only)

    def users(self, name: str, version: int | None = None) -> list[DiskRecord]:
        return self.disks.users(name, version)

    def verify(
        self, name: str, version: int | None = None, *, progress: PhaseProgress | None = None
    ) -> list[VerifyResult]:
        """Rehash the blobs of ``name`` (one version or all); each result says if it matches."""
        record = self.catalog.get(name)
        versions = record.versions if version is None else (record.version(version),)
        results = []
        for item in versions:
            if not self.store.has(item.digest):
                results.append(VerifyResult(item, ok=False, missing=True))
                continue
            ok = self.store.verify(item.digest, _phase(progress, f"verify v{item.version}"))
            results.append(VerifyResult(item, ok=ok))
        return results

    def gc(self) -> GcReport:
        """Remove leftovers of crashed imports, commits, creates and deletes, and blobs that no
        version and no disk references. Safe to run while other commands and the server run."""
        staging = self.store.clean_staging()
        with self.catalog.locked():
            leftovers = self.disks.clean()
            referenced = self.catalog.referenced_digests() | self.disks.referenced_digests()
            orphans = [d for d in self.store.digests() if d not in referenced]
            for digest in orphans:
                self.store.remove(digest)
        return GcReport(staging_files=staging, disk_leftovers=leftovers, orphan_blobs=orphans)

    def _versions_or_none(self, name: str) -> tuple[ImageVersion, ...]:
        if not self.catalog.exists(name):
            return ()
        return self.catalog.get(name).versions

    def _refuse_if_used(self, name: str, version: int | None) -> None:
        users = self.disks.users(name, version)
        if users:
            what = f"image {name!r}" if version is None else f"{name} v{version}"
            used = ", ".join(f"{u.name} (v{u.version})" for u in users)
            raise ConflictError(f"{what} is in use by disk(s): {used}")

    def _drop_unreferenced(self, digest: Digest) -> None:
        # Under the catalog lock: another image or version (or a disk) may share the content.
        if self.catalog.find_digest(digest) or digest in self.disks.referenced_digests():
            return
        self.store.remove(digest)
