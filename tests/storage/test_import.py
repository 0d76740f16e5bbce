"""Importing foreign images with real qemu-img: formats, refusals, progress, content addressing."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from diskless.errors import ConflictError
from diskless.storage.errors import StorageError
from diskless.storage.importer import SourceImageError, normalise_format, probe_source
from diskless.storage.library import ImageLibrary

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed",
)


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def foreign_image(path: Path, fmt: str, size: str = "4M") -> Path:
    """A ``fmt`` image with recognisable data written by qemu-io (QEMU's own driver)."""
    run("qemu-img", "create", "-q", "-f", fmt, str(path), size)
    run("qemu-io", "-f", fmt, "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 2M 64k", str(path))
    return path


def qemu_raw_sha256(path: Path, fmt: str, tmp_path: Path) -> str:
    """What QEMU itself says the virtual disk contains."""
    out = tmp_path / f"{path.name}.oracle.raw"
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out))
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture
def lib(tmp_path: Path) -> ImageLibrary:
    return ImageLibrary(tmp_path / "data", cluster_size=65536)


@pytest.mark.parametrize("fmt", ["qcow2", "vhdx", "vpc", "vmdk", "vdi", "raw"])
def test_import_matches_qemu_and_is_content_addressed(
    lib: ImageLibrary, tmp_path: Path, fmt: str
) -> None:
    source = foreign_image(tmp_path / f"src.{fmt}", fmt)
    phases: dict[str, tuple[int, int]] = {}

    version = lib.import_image(
        "golden", source, note="from qemu", progress=lambda p, d, t: phases.__setitem__(p, (d, t))
    )

    blob = lib.store.path(version.digest)
    assert version.digest.hex == qemu_raw_sha256(source, fmt, tmp_path)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == version.digest.hex
    assert (version.version, version.note, version.source) == (1, "from qemu", str(source))
    assert version.size == blob.stat().st_size
    assert blob.stat().st_blocks * 512 <= 2 * MiB  # sparse: only the written MiB and 64 KiB
    assert phases["convert"] == (version.size, version.size)
    assert phases["hash"] == (version.size, version.size)
    assert list(lib.store.staging_dir.iterdir()) == []


def test_same_content_under_two_names_shares_one_blob(lib: ImageLibrary, tmp_path: Path) -> None:
    qcow = foreign_image(tmp_path / "a.qcow2", "qcow2")
    raw = tmp_path / "a.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow), str(raw))

    first = lib.import_image("one", qcow)
    second = lib.import_image("two", raw)

    assert first.digest == second.digest
    assert lib.store.digests() == [first.digest]
    with pytest.raises(ConflictError, match="same content as one v1"):
        lib.import_image("one", raw)
    assert [v.version for v in lib.catalog.get("one").versions] == [1]


def test_forced_format(lib: ImageLibrary, tmp_path: Path) -> None:
    qcow = foreign_image(tmp_path / "a.qcow2", "qcow2")

    # Forcing raw imports the qcow2 file's bytes, not the disk they describe.
    version = lib.import_image("bytes", qcow, fmt="raw")

    assert lib.store.path(version.digest).read_bytes()[:4] == b"QFI\xfb"
    assert normalise_format("VHD") == "vpc"
    with pytest.raises(StorageError, match="unsupported image format 'dmg'"):
        lib.import_image("x", qcow, fmt="dmg")


def test_refuses_backing_chains(lib: ImageLibrary, tmp_path: Path) -> None:
    base = foreign_image(tmp_path / "base.qcow2", "qcow2")
    top = tmp_path / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))

    with pytest.raises(SourceImageError, match="has a backing file"):
        lib.import_image("golden", top)
    assert lib.catalog.names() == []


def test_refuses_vmdk_extents_outside_its_directory(tmp_path: Path) -> None:
    (tmp_path / "secret.raw").write_bytes(b"secret" * 1000 + bytes(2288))
    (tmp_path / "sub").mkdir()
    descriptor = tmp_path / "sub" / "evil.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\nRW 16 FLAT "../secret.raw" 0\n\n'
        'ddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
    )
    with pytest.raises(SourceImageError, match="lies outside"):
        probe_source(descriptor)


def test_refuses_missing_files_directories_and_garbage(lib: ImageLibrary, tmp_path: Path) -> None:
    with pytest.raises(SourceImageError, match="no such file"):
        probe_source(tmp_path / "missing.vhdx")
    with pytest.raises(SourceImageError, match="is a directory"):
        probe_source(tmp_path)
    empty = tmp_path / "empty.raw"
    empty.touch()
    with pytest.raises(SourceImageError, match="virtual size of 0"):
        probe_source(empty)
    broken = tmp_path / "broken.vhdx"
    broken.write_bytes(b"vhdxfile" + bytes(4096))
    with pytest.raises(SourceImageError, match="qemu-img info failed"):
        probe_source(broken, fmt="vhdx")


def test_protocol_like_names_are_plain_files(
    lib: ImageLibrary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative name that QEMU would parse as a protocol must be opened as a file here.
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "nbd:localhost:10809"
    odd.write_bytes(b"\x5a" * 4096)

    version = lib.import_image("odd", Path("nbd:localhost:10809"))

    assert lib.store.path(version.digest).read_bytes() == b"\x5a" * 4096
