"""The image catalog: names, monotonic version numbers, persistence, and its lock."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from diskless.errors import NotFoundError
from diskless.storage.catalog import Catalog, CatalogError, InvalidNameError, validate_name
from diskless.storage.store import Digest

D1, D2, D3 = (Digest(c * 64) for c in "123")


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "catalog")


@pytest.mark.parametrize("name", ["win11", "a", "ubuntu-24.04", "x_y", "9" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../etc", "a/b", "Win11", "-x", ".hidden", "_x", "a b", "x" * 64, "é", "a\0"],
)
def test_invalid_names(name: str, catalog: Catalog) -> None:
    with pytest.raises(InvalidNameError, match="invalid image name"):
        validate_name(name)
    with pytest.raises(InvalidNameError):
        catalog.get(name)


def test_versions_are_numbered_and_persisted(catalog: Catalog, tmp_path: Path) -> None:
    with catalog.locked():
        v1 = catalog.add_version("win11", digest=D1, size=1024, source="/src/a.vhdx", note="base")
        v2 = catalog.add_version(
            "win11",
            digest=D2,
            size=2048,
            source="commit of disk pc01",
            parent_image="win11",
            parent_version=1,
        )

    assert (v1.version, v2.version) == (1, 2)
    reread = Catalog(tmp_path / "catalog").get("win11")
    assert reread.versions == (v1, v2)
    assert reread.latest == v2
    assert reread.version(1).note == "base"
    assert v2.label == "win11 v2"
    assert v1.created.endswith("Z")
    doc = json.loads((tmp_path / "catalog" / "win11.json").read_text())
    assert doc["versions"][0]["digest"] == str(D1)
    assert doc["versions"][1]["parent_version"] == 1


def test_version_numbers_are_never_reused(catalog: Catalog) -> None:
    with catalog.locked():
        for digest in (D1, D2):
            catalog.add_version("win11", digest=digest, size=512, source="x")
        catalog.remove_version("win11", 2)
        v3 = catalog.add_version("win11", digest=D3, size=512, source="x")

    assert v3.version == 3
    assert [v.version for v in catalog.get("win11").versions] == [1, 3]


def test_removing_last_version_removes_image(catalog: Catalog) -> None:
    with catalog.locked():
        catalog.add_version("win11", digest=D1, size=512, source="x")
        catalog.add_version("deb12", digest=D1, size=512, source="x")
        catalog.remove_version("win11", 1)

    assert catalog.names() == ["deb12"]
    assert catalog.referenced_digests() == {D1}
    assert [v.image for v in catalog.find_digest(D1)] == ["deb12"]
    with pytest.raises(NotFoundError, match="'win11' does not exist"):
        catalog.get("win11")


def test_unknown_version_names_known_ones(catalog: Catalog) -> None:
    with catalog.locked():
        catalog.add_version("win11", digest=D1, size=512, source="x")
    with pytest.raises(NotFoundError, match=r"no version 7 \(versions: v1\)"):
        catalog.version("win11", 7)


def test_damaged_catalog_file_is_reported(catalog: Catalog) -> None:
    catalog.root.mkdir(parents=True)
    (catalog.root / "win11.json").write_text("{not json")
    with pytest.raises(CatalogError, match=r"win11\.json"):
        catalog.get("win11")


def test_temp_and_foreign_files_are_not_images(catalog: Catalog) -> None:
    catalog.root.mkdir(parents=True)
    (catalog.root / ".tmp-win11.json.abc").write_text("{}")
    (catalog.root / "README").write_text("hi")
    assert catalog.names() == []


def test_lock_serialises_writers(catalog: Catalog) -> None:
    order: list[str] = []

    def other() -> None:
        with catalog.locked():
            order.append("other")

    with catalog.locked():
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.2)
        order.append("first")
    thread.join(5)

    assert order == ["first", "other"]
