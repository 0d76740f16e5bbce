"""The image catalog: golden image names and their numbered, immutable versions.

``win11`` v1, v2, … each name one blob in the :mod:`~diskless.storage.store` by digest. One JSON
document per image, ``<root>/<name>.json``, replaced atomically on every change. Version numbers
only ever grow (``next_version`` survives deleting the newest version), so "win11 v3" never
means two different disks.

Mutations go through :meth:`Catalog.locked`, a blocking ``flock`` on ``<root>/../catalog.lock``
that every process touching images or disk→version references takes for a short critical
section: adding a version, deleting one after checking no disk uses it, pointing a disk at a
version. This module also owns name validation for images and disks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diskless.errors import DisklessError, NotFoundError
from diskless.storage.durable import FileLock, atomic_write_json, fsync_dir
from diskless.storage.errors import StorageError
from diskless.storage.store import Digest

__all__ = [
    "NAME_PATTERN",
    "Catalog",
    "CatalogError",
    "ImageRecord",
    "ImageVersion",
    "InvalidNameError",
    "utc_now",
    "validate_name",
]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""DNS-label-like, at most 63 characters: safe as a file name, an IQN part and a URL segment.
No ``/`` and no leading dot, so a name can never escape its directory or look like a temp file."""

SCHEMA_VERSION = 1
"""Bumped when the JSON layout changes incompatibly; older files are refused, not guessed at."""


class InvalidNameError(DisklessError, ValueError):
    """An image or disk name does not match :data:`NAME_PATTERN`."""


class CatalogError(StorageError):
    """A catalog file exists but cannot be read as a catalog entry."""


def validate_name(name: str, kind: str = "image") -> str:
    """Return ``name`` if valid, else raise :class:`InvalidNameError` naming the ``kind``."""
    if not NAME_PATTERN.fullmatch(name) or name in {".", ".."}:
        raise InvalidNameError(
            f"invalid {kind} name {name!r}: use 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string with second precision (``...Z``)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ImageVersion:
    """One immutable version of a golden image."""

    image: str
    version: int
    digest: Digest
    size: int
    created: str
    source: str
    """Where the content came from: the imported file's path, or ``commit of disk X``."""
    parent_image: str | None = None
    parent_version: int | None = None
    """The version the committed disk was based on; None for imports."""
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.image} v{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "digest": str(self.digest),
            "size": self.size,
            "created": self.created,
            "source": self.source,
            "parent_image": self.parent_image,
            "parent_version": self.parent_version,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, image: str, doc: dict[str, Any]) -> ImageVersion:
        return cls(
            image=image,
            version=int(doc["version"]),
            digest=Digest.parse(str(doc["digest"])),
            size=int(doc["size"]),
            created=str(doc["created"]),
            source=str(doc.get("source", "")),
            parent_image=doc.get("parent_image"),
            parent_version=doc.get("parent_version"),
            note=str(doc.get("note", "")),
        )


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """A golden image: a name and its versions, oldest first."""

    name: str
    versions: tuple[ImageVersion, ...] = field(default=())
    next_version: int = 1

    @property
    def latest(self) -> ImageVersion:
        if not self.versions:
            raise NotFoundError(f"image {self.name!r} has no versions")
        return self.versions[-1]

    def version(self, number: int) -> ImageVersion:
        for candidate in self.versions:
            if candidate.version == number:
                return candidate
        known = ", ".join(f"v{v.version}" for v in self.versions) or "none"
        raise NotFoundError(f"image {self.name!r} has no version {number} (versions: {known})")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "name": self.name,
            "next_version": self.next_version,
            "versions": [v.to_json() for v in self.versions],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ImageRecord:
        name = str(doc["name"])
        versions = tuple(ImageVersion.from_json(name, v) for v in doc["versions"])
        return cls(name=name, versions=versions, next_version=int(doc["next_version"]))


class Catalog:
    """Image records stored as ``<root>/<name>.json``."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock_path = root.parent / "catalog.lock"

    @property
    def root(self) -> Path:
        return self._root

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the catalog lock (blocking; critical sections are short)."""
        self._root.mkdir(parents=True, exist_ok=True)
        with FileLock(self._lock_path):
            yield

    def _file(self, name: str) -> Path:
        return self._root / f"{validate_name(name)}.json"

    def names(self) -> list[str]:
        if not self._root.is_dir():
            return []
        names = []
        for entry in self._root.iterdir():
            stem, dot, ext = entry.name.rpartition(".")
            if dot and ext == "json" and NAME_PATTERN.fullmatch(stem):
                names.append(stem)
        return sorted(names)

    def exists(self, name: str) -> bool:
        return self._file(name).is_file()

    def get(self, name: str) -> ImageRecord:
        """The image's record; :class:`NotFoundError` if there is no such image."""
        path = self._file(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFoundError(f"image {name!r} does not exist") from None
        try:
            doc = json.loads(text)
            if doc.get("schema") != SCHEMA_VERSION:
                raise CatalogError(f"{path}: unsupported catalog schema {doc.get('schema')!r}")
            record = ImageRecord.from_json(doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CatalogError(f"{path}: not a valid catalog entry: {exc}") from exc
        if record.name != name:
            raise CatalogError(f"{path}: names image {record.name!r}, expected {name!r}")
        return record

    def records(self) -> list[ImageRecord]:
        return [self.get(name) for name in self.names()]

    def version(self, name: str, number: int | None = None) -> ImageVersion:
        """Version ``number`` of ``name``, or its latest version when ``number`` is None."""
        record = self.get(name)
        return record.latest if number is None else record.version(number)

    def add_version(
        self,
        name: str,
        *,
        digest: Digest,
        size: int,
        source: str,
        parent_image: str | None = None,
        parent_version: int | None = None,
        note: str = "",
    ) -> ImageVersion:
        """Append a new version (creating the image if needed). Call under :meth:`locked`."""
        validate_name(name)
        try:
            record = self.get(name)
        except NotFoundError:
            record = ImageRecord(name=name)
        version = ImageVersion(
            image=name,
            version=record.next_version,
            digest=digest,
            size=size,
            created=utc_now(),
            source=source,
            parent_image=parent_image,
            parent_version=parent_version,
            note=note,
        )
        self._write(
            replace(
                record,
                versions=(*record.versions, version),
                next_version=record.next_version + 1,
            )
        )
        return version

    def remove_version(self, name: str, number: int) -> ImageVersion:
        """Drop one version (the image goes with its last one). Call under :meth:`locked`."""
        record = self.get(name)
        removed = record.version(number)
        remaining = tuple(v for v in record.versions if v.version != number)
        if remaining:
            self._write(replace(record, versions=remaining))
        else:
            self._delete(name)
        return removed

    def remove_image(self, name: str) -> ImageRecord:
        """Drop the image and all its versions. Call under :meth:`locked`."""
        record = self.get(name)
        self._delete(name)
        return record

    def referenced_digests(self) -> set[Digest]:
        return {v.digest for record in self.records() for v in record.versions}

    def find_digest(self, digest: Digest) -> list[ImageVersion]:
        """Every version (of any image) whose content is ``digest``."""
        return [v for record in self.records() for v in record.versions if v.digest == digest]

    def _write(self, record: ImageRecord) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._file(record.name), record.to_json())

    def _delete(self, name: str) -> None:
        self._file(name).unlink()
        fsync_dir(self._root)
