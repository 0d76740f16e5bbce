"""Per-machine disks: a qcow2 overlay over one golden version, and what can be done to it.

A disk lives in ``<root>/<name>/``:

* ``disk.json`` — the :class:`DiskRecord` (image, version, digest, mode, overlay file name). It is
  the single commit point: a disk *is* what ``disk.json`` says, replaced atomically.
* ``overlay-<digest12>.qcow2`` — the client's writes. Its backing file is the *relative* path of
  the golden blob (backing format raw), so the data directory can be moved as a whole. The file
  name carries the backing digest so that switching versions writes a new overlay beside the old
  one and then flips ``disk.json``: a crash leaves the old disk or the new one, never an overlay
  whose backing disagrees with ``disk.json``.
* ``lock`` — an ``flock`` held by whoever mutates or serves the disk (non-blocking: a busy disk
  is refused with :class:`~diskless.storage.errors.ImageBusyError`, never waited for).

Reset discards the client's writes by replacing the overlay with an empty one; reset-on-boot
disks get that on every :meth:`DiskManager.open` with ``boot=True``. Commit flattens overlay plus
golden version through our own engine into a new blob and catalogs it as a new version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from diskless.errors import ConflictError, NotFoundError
from diskless.storage.catalog import Catalog, ImageVersion, utc_now, validate_name
from diskless.storage.diskhandle import DiskHandle
from diskless.storage.durable import (
    FileLock,
    LockHeld,
    atomic_write_json,
    fsync_dir,
    is_temp_name,
    temp_name,
)
from diskless.storage.errors import ImageBusyError, StorageError
from diskless.storage.images import open_image
from diskless.storage.qcow2 import create_qcow2
from diskless.storage.store import Digest, ImageStore, Progress

__all__ = ["CommitResult", "DiskInfo", "DiskManager", "DiskMode", "DiskRecord", "DiskSpec"]

RECORD_FILE = "disk.json"
LOCK_FILE = "lock"
SCHEMA_VERSION = 1


class DiskMode(StrEnum):
    """What happens to a client's writes across boots."""

    PERSISTENT = "persistent"
    """Writes survive reboots until reset, rollback or commit."""
    RESET_ON_BOOT = "reset-on-boot"
    """Every boot starts from the golden version (internet-cafe / classroom mode)."""


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """What a disk should be made of, as the site assigns it (see :meth:`DiskManager.open`)."""

    image: str
    version: int | None
    """``None``: the image's latest version, whichever that is at the disk's next boot."""
    mode: DiskMode


@dataclass(frozen=True, slots=True)
class DiskRecord:
    """The content of ``disk.json``."""

    name: str
    image: str
    version: int
    digest: Digest
    mode: DiskMode
    overlay: str
    """File name of the live overlay inside the disk's directory."""
    created: str
    updated: str

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "name": self.name,
            "image": self.image,
            "version": self.version,
            "digest": str(self.digest),
            "mode": self.mode.value,
            "overlay": self.overlay,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DiskRecord:
        overlay = str(doc["overlay"])
        if "/" in overlay or overlay in {"", ".", ".."}:
            raise ValueError(f"overlay {overlay!r} is not a plain file name")
        return cls(
            name=str(doc["name"]),
            image=str(doc["image"]),
            version=int(doc["version"]),
            digest=Digest.parse(str(doc["digest"])),
            mode=DiskMode(doc["mode"]),
            overlay=overlay,
            created=str(doc["created"]),
            updated=str(doc["updated"]),
        )


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """A disk's record plus what its files look like on the host right now."""

    record: DiskRecord
    directory: Path
    overlay_path: Path
    backing_path: Path
    virtual_size: int
    allocated_bytes: int
    """Host bytes the overlay occupies: the client's writes plus qcow2 metadata."""

    def to_json(self) -> dict[str, Any]:
        doc = self.record.to_json()
        del doc["schema"]
        doc.update(
            virtual_size=self.virtual_size,
            allocated_bytes=self.allocated_bytes,
            overlay_path=str(self.overlay_path),
            backing_path=str(self.backing_path),
        )
        return doc


@dataclass(frozen=True, slots=True)
class CommitResult:
    version: ImageVersion
    """The new golden version."""
    disk: DiskRecord
    """The committed disk afterwards (on the new version unless the overlay was kept)."""


def overlay_name(digest: Digest) -> str:
    """The overlay file name for a disk on ``digest``."""
    return f"overlay-{digest.short}.qcow2"


class DiskManager:
    """The disks under ``root``, backed by blobs in ``store`` named in ``catalog``."""

    def __init__(
        self,
        root: Path,
        store: ImageStore,
        catalog: Catalog,
        *,
        cluster_size: int,
        extended_l2: bool,
    ) -> None:
        self._root = root
        self._store = store
        self._catalog = catalog
        self._cluster_size = cluster_size
        self._extended_l2 = extended_l2

    @property
    def root(self) -> Path:
        return self._root

    def directory(self, name: str) -> Path:
        return self._root / validate_name(name, "disk")

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self._root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self._root.iterdir()
            if not is_temp_name(entry.name) and (entry / RECORD_FILE).is_file()
        )

    def get(self, name: str) -> DiskRecord:
        """The disk's record; :class:`NotFoundError` if there is no such disk."""
        path = self.directory(name) / RECORD_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFoundError(f"disk {name!r} does not exist") from None
        except ValueError as exc:
            raise StorageError(f"{path}: not valid JSON: {exc}") from exc
        try:
            if doc.get("schema") != SCHEMA_VERSION:
                raise ValueError(f"unsupported schema {doc.get('schema')!r}")
            return DiskRecord.from_json(doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"{path}: not a valid disk record: {exc}") from exc

    def records(self) -> list[DiskRecord]:
        records = []
        for name in self.names():
            with contextlib.suppress(NotFoundError):  # deleted while we listed
                records.append(self.get(name))
        return records

    def info(self, name: str) -> DiskInfo:
        """Record and host usage. Needs no lock and never opens the overlay, so it also works
        while the disk is being served."""
        record = self.get(name)
        directory = self.directory(name)
        overlay = directory / record.overlay
        try:
            st = overlay.stat()
        except FileNotFoundError:
            raise StorageError(f"disk {name!r}: overlay {overlay} is missing") from None
        return DiskInfo(
            record=record,
            directory=directory,
            overlay_path=overlay,
            backing_path=self._store.path(record.digest),
            virtual_size=self._store.size(record.digest),
            allocated_bytes=st.st_blocks * 512,
        )

    def users(self, image: str, version: int | None = None) -> list[DiskRecord]:
        """Disks on ``image`` (any version, or only ``version``). Exact only under the catalog
        lock, which every operation that points a disk at a version holds."""
        return [
            r
            for r in self.records()
            if r.image == image and (version is None or r.version == version)
        ]

    def referenced_digests(self) -> set[Digest]:
        return {r.digest for r in self.records()}

    # -- creating and deleting -------------------------------------------------------------

    def create(
        self,
        name: str,
        image: str,
        version: int | None = None,
        *,
        mode: DiskMode = DiskMode.PERSISTENT,
    ) -> DiskRecord:
        """A new disk on ``image`` ``version`` (latest if None) with an empty overlay.

        Raises :class:`ConflictError` if the disk exists, :class:`NotFoundError` for an unknown
        image or version.
        """
        directory = self.directory(name)
        self._root.mkdir(parents=True, exist_ok=True)
        with self._catalog.locked():
            if directory.exists():
                raise ConflictError(f"disk {name!r} already exists")
            target = self._catalog.version(image, version)
            staging = self._root / temp_name(name)
            staging.mkdir()
            try:
                now = utc_now()
                record = DiskRecord(
                    name=name,
                    image=target.image,
                    version=target.version,
                    digest=target.digest,
                    mode=mode,
                    overlay=overlay_name(target.digest),
                    created=now,
                    updated=now,
                )
                # The backing path is computed for the final directory; the staging directory
                # sits beside it, so the relative path resolves the same from both.
                self._write_overlay(staging, directory, record.overlay, target)
                (staging / LOCK_FILE).touch()
                atomic_write_json(staging / RECORD_FILE, record.to_json())
                os.rename(staging, directory)
                fsync_dir(self._root)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return record

    def delete(self, name: str) -> DiskRecord:
        """Remove the disk and all its writes. :class:`ImageBusyError` if it is in use."""
        with self._locked(name):
            record = self.get(name)
            # Rename first: from here on nobody can find the disk, even if rmtree is cut short
            # (gc finishes the job). The lock file moves with it, so we keep holding it.
            doomed = self._root / temp_name(name)
            os.rename(self.directory(name), doomed)
            fsync_dir(self._root)
            shutil.rmtree(doomed, ignore_errors=True)
        return record

    # -- changing a disk -------------------------------------------------------------------

    def reset(self, name: str) -> DiskRecord:
        """Discard every write: replace the overlay with an empty one on the same version."""
        with self._locked(name):
            return self._reset_locked(self.get(name))

    def set_mode(self, name: str, mode: DiskMode) -> DiskRecord:
        with self._locked(name):
            record = self.get(name)
            if record.mode is mode:
                return record
            updated = replace(record, mode=mode, updated=utc_now())
            atomic_write_json(self.directory(name) / RECORD_FILE, updated.to_json())
            return updated

    def rollback(self, name: str, version: int, *, image: str | None = None) -> DiskRecord:
        """Put the disk on another version (of its image, or of ``image``) with an empty overlay.

        The disk's current writes are discarded.
        """
        with self._locked(name):
            record = self.get(name)
            with self._catalog.locked():
                target = self._catalog.version(image or record.image, version)
                return self._switch(record, target)

    def commit(
        self,
        name: str,
        *,
        image: str | None = None,
        note: str = "",
        keep_overlay: bool = False,
        progress: Progress | None = None,
    ) -> CommitResult:
        """Turn the disk's current content into a new version of ``image`` (default: its own).

        The overlay and its golden version are flattened through our engine into a new sparse
        raw blob, hashed on the way; the old version is untouched. Unless ``keep_overlay``, the
        disk then moves to the new version with an empty overlay (same content, nothing lost).
        Raises :class:`ConflictError` if the image already has a version with that content
        (e.g. the disk has no writes). A failure or crash part-way leaves the catalog unchanged
        and at most a staging file that :meth:`LocalImageStore.clean_staging` removes.
        """
        target_image = validate_name(image) if image is not None else None
        with self._locked(name):
            record = self.get(name)
            target_image = target_image or record.image
            overlay = self.directory(name) / record.overlay
            with self._store.stage() as staged:
                device = open_image(overlay, read_only=True)
                try:
                    staged.copy_device(device, progress)
                finally:
                    device.close()
                digest = staged.seal()
                with self._catalog.locked():
                    with contextlib.suppress(NotFoundError):
                        for existing in self._catalog.get(target_image).versions:
                            if existing.digest == digest:
                                raise ConflictError(
                                    f"disk {name!r} has the same content as {existing.label}; "
                                    "nothing to commit"
                                )
                    self._store.publish(staged)
                    new_version = self._catalog.add_version(
                        target_image,
                        digest=digest,
                        size=staged.size,
                        source=f"commit of disk {name}",
                        parent_image=record.image,
                        parent_version=record.version,
                        note=note,
                    )
                    if not keep_overlay:
                        record = self._switch(record, new_version)
        return CommitResult(version=new_version, disk=record)

    # -- serving ---------------------------------------------------------------------------

    def open(
        self,
        name: str,
        *,
        boot: bool = False,
        read_only: bool = False,
        spec: DiskSpec | None = None,
    ) -> DiskHandle:
        """Open the disk for serving, holding its lock until the handle is closed.

        With ``boot=True`` a reset-on-boot disk first gets an empty overlay. With ``spec``, a
        missing disk is created from it, and at a boot the disk follows it: it takes the
        assigned mode, and a reset-on-boot disk starts on the assigned version (the image's
        latest when none is pinned), which is how a commit or a rollback of the golden image
        reaches the machines that reset at every boot. A persistent disk keeps its version and
        its writes: moving it is an explicit :meth:`rollback`. Raises :class:`ImageBusyError`
        if anyone else holds the disk.
        """
        if spec is not None and not read_only and not self.directory(name).exists():
            with contextlib.suppress(ConflictError):  # another server created it just now
                self.create(name, spec.image, spec.version, mode=spec.mode)
        lock = self._acquire(name)
        try:
            record = self.get(name)
            if boot and not read_only:
                if spec is not None:
                    record = self._follow_locked(record, spec)
                elif record.mode is DiskMode.RESET_ON_BOOT:
                    record = self._reset_locked(record)
            # A reset-on-boot overlay is thrown away at the next boot, so its flushes need no
            # fdatasync barriers: the guest's cache flushes become cheap.
            device = open_image(
                self.directory(name) / record.overlay,
                read_only=read_only,
                sync=record.mode is not DiskMode.RESET_ON_BOOT,
            )
        except BaseException:
            lock.release()
            raise
        return DiskHandle(record=record, device=device, lock=lock)

    # -- housekeeping ----------------------------------------------------------------------

    def clean(self) -> list[Path]:
        """Remove what crashed operations left: half-created or half-deleted disk directories
        and stale overlay/temporary files inside idle disks. Busy disks are skipped.

        Call under the catalog lock (creates hold it while their staging directory exists).
        """
        removed: list[Path] = []
        if not self._root.is_dir():
            return removed
        for entry in sorted(self._root.iterdir()):
            if is_temp_name(entry.name) and entry.is_dir():
                lock = FileLock(entry / LOCK_FILE)
                if (entry / LOCK_FILE).exists():
                    try:
                        lock.acquire(blocking=False)
                    except (LockHeld, StorageError):
                        continue  # a delete in progress still owns it
                try:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                finally:
                    lock.release()
        for name in self.names():
            try:
                with self._locked(name):
                    removed.extend(self._clean_disk_dir(self.get(name), self.directory(name)))
            except (ImageBusyError, NotFoundError):
                continue  # served right now, or deleted while we looked
        return removed

    def _clean_disk_dir(self, record: DiskRecord, directory: Path) -> list[Path]:
        removed = []
        for item in directory.iterdir():
            stale_overlay = item.name.startswith("overlay-") and item.name != record.overlay
            if stale_overlay or item.name.startswith("."):
                item.unlink(missing_ok=True)
                removed.append(item)
        if removed:
            fsync_dir(directory)
        return removed

    # -- internals -------------------------------------------------------------------------

    def _acquire(self, name: str) -> FileLock:
        directory = self.directory(name)
        if not (directory / RECORD_FILE).is_file():
            raise NotFoundError(f"disk {name!r} does not exist")
        lock = FileLock(directory / LOCK_FILE)
        try:
            lock.acquire(blocking=False)
        except LockHeld:
            raise ImageBusyError(
                f"disk {name!r} is in use: another process holds {directory / LOCK_FILE}"
            ) from None
        except StorageError:
            raise NotFoundError(f"disk {name!r} does not exist") from None
        return lock

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[FileLock]:
        lock = self._acquire(name)
        try:
            yield lock
        finally:
            lock.release()

    def _write_overlay(
        self, where: Path, final_dir: Path, filename: str, target: ImageVersion
    ) -> None:
        blob = self._store.path(target.digest)
        if not blob.is_file():
            raise StorageError(f"{target.label}: blob {blob} is missing from the image store")
        backing = os.path.relpath(blob.resolve(), final_dir.parent.resolve() / final_dir.name)
        create_qcow2(
            where / filename,
            size=target.size,
            backing=backing,
            backing_format="raw",
            cluster_size=self._cluster_size,
            extended_l2=self._extended_l2,
        )

    def _reset_locked(self, record: DiskRecord) -> DiskRecord:
        directory = self.directory(record.name)
        target = self._current_version(record)
        # create_qcow2 replaces the file atomically: a crash leaves the old overlay or the new one.
        self._write_overlay(directory, directory, record.overlay, target)
        updated = replace(record, updated=utc_now())
        atomic_write_json(directory / RECORD_FILE, updated.to_json())
        return updated

    def _follow_locked(self, record: DiskRecord, spec: DiskSpec) -> DiskRecord:
        """At a boot: ``spec``'s mode, and a reset-on-boot disk on ``spec``'s version."""
        if record.mode is not spec.mode:
            record = replace(record, mode=spec.mode, updated=utc_now())
            atomic_write_json(self.directory(record.name) / RECORD_FILE, record.to_json())
        if record.mode is not DiskMode.RESET_ON_BOOT:
            return record
        with self._catalog.locked():
            try:
                target = self._catalog.version(spec.image, spec.version)
            except NotFoundError:
                # An assignment naming a version that is gone: boot what the disk was on rather
                # than nothing (the exporter logs both versions).
                return self._reset_locked(record)
            # On the same version this resets the overlay in place.
            return self._switch(record, target)

    def _current_version(self, record: DiskRecord) -> ImageVersion:
        """The record's version as an :class:`ImageVersion`, straight from the store, so a reset
        works even if the catalog entry was damaged (the blob is what the overlay needs)."""
        return ImageVersion(
            image=record.image,
            version=record.version,
            digest=record.digest,
            size=self._store.size(record.digest),
            created=record.created,
            source="",
        )

    def _switch(self, record: DiskRecord, target: ImageVersion) -> DiskRecord:
        """Point the disk at ``target`` with an empty overlay. Hold the disk and catalog locks."""
        directory = self.directory(record.name)
        new_overlay = overlay_name(target.digest)
        # Write the new overlay beside the old one, then flip disk.json (the commit point), then
        # drop the old overlay. If both names are equal the overlay is simply reset in place.
        self._write_overlay(directory, directory, new_overlay, target)
        updated = replace(
            record,
            image=target.image,
            version=target.version,
            digest=target.digest,
            overlay=new_overlay,
            updated=utc_now(),
        )
        atomic_write_json(directory / RECORD_FILE, updated.to_json())
        if record.overlay != new_overlay:
            (directory / record.overlay).unlink(missing_ok=True)
            fsync_dir(directory)
        return updated
