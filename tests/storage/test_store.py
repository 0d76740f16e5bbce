"""The content-addressed blob store: digests, sparseness, atomic publication, staging cleanup."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from diskless.errors import NotFoundError
from diskless.storage.blockdev import RawImage
from diskless.storage.durable import FileLock, LockHeld, atomic_write_json
from diskless.storage.store import Digest, LocalImageStore, hash_file

MiB = 1 << 20


def sparse_file(path: Path, size: int, chunks: dict[int, bytes]) -> Path:
    """A file of ``size`` bytes with ``chunks`` written at their offsets and holes elsewhere."""
    with path.open("wb") as file:
        file.truncate(size)
        for offset, data in chunks.items():
            file.seek(offset)
            file.write(data)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.fixture
def store(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "blobs")


def test_digest_parse_and_format() -> None:
    hex_digest = "ab" * 32
    digest = Digest.parse(f"sha256:{hex_digest}")
    assert digest == Digest.parse(hex_digest.upper())
    assert str(digest) == f"sha256:{hex_digest}"
    assert digest.short == hex_digest[:12]
    for bad in ("sha1:" + "ab" * 20, "sha256:xyz", "", "sha256:" + "ab" * 31):
        with pytest.raises(ValueError, match=r"digest"):
            Digest.parse(bad)


def test_hash_file_counts_holes_as_zeros(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "f.raw", 5 * MiB + 512, {MiB: b"x" * 4096, 5 * MiB: b"y" * 512})
    assert hash_file(path).hex == sha256_of(path)


def test_add_keeps_content_digest_holes_and_is_read_only(
    store: LocalImageStore, tmp_path: Path
) -> None:
    size = 9 * MiB + 1536  # not a multiple of the copy chunk or of the zero block
    source = sparse_file(tmp_path / "src.raw", size, {0: b"\xab" * MiB, 8 * MiB: b"\xcd" * 4096})
    # A block of explicit zeros in the data must become a hole too.
    with source.open("r+b") as file:
        file.seek(3 * MiB)
        file.write(bytes(2 * MiB))

    digest = store.add(source)

    blob = store.path(digest)
    assert digest.hex == sha256_of(source)
    assert blob.read_bytes() == source.read_bytes()
    assert blob.name == f"{digest.hex}.raw"
    assert blob.parent == tmp_path / "blobs" / "sha256"
    assert store.size(digest) == size
    assert allocated(blob) <= MiB + 256 * 1024  # holes kept, explicit zeros dropped
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert store.is_read_only(digest)
    assert store.digests() == [digest]
    assert store.has(digest)
    assert store.verify(digest)
    assert list(store.staging_dir.iterdir()) == []


def test_same_content_same_digest_is_stored_once(store: LocalImageStore, tmp_path: Path) -> None:
    a = sparse_file(tmp_path / "a.raw", 2 * MiB, {4096: b"same"})
    b = sparse_file(tmp_path / "b.raw", 2 * MiB, {4096: b"same"})
    c = sparse_file(tmp_path / "c.raw", 2 * MiB + 512, {4096: b"same"})  # longer: other content

    first, second, third = store.add(a), store.add(b), store.add(c)

    assert first == second
    assert third != first
    assert store.digests() == sorted([first, third])


def test_staged_write_hashes_as_it_goes(store: LocalImageStore) -> None:
    expected = hashlib.sha256()
    with store.stage() as staged:
        for data in (b"\x01" * 70000, bytes(3 * MiB), b"\x02" * 100):
            staged.write(data)
            expected.update(data)
        staged.write_zeroes(MiB)
        expected.update(bytes(MiB))
        digest = staged.seal()
        published = store.publish(staged)

    assert digest == published
    assert digest.hex == expected.hexdigest()
    assert store.size(digest) == 70000 + 3 * MiB + 100 + MiB
    assert hash_file(store.path(digest)) == digest


def test_copy_device_keeps_file_holes(store: LocalImageStore, tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "src.raw", 12 * MiB, {5 * MiB: b"z" * 8192})
    with RawImage(source, read_only=True) as device, store.stage() as staged:
        seen: list[tuple[int, int]] = []
        staged.copy_device(device, lambda done, total: seen.append((done, total)))
        digest = staged.seal()
        store.publish(staged)

    assert digest.hex == sha256_of(source)
    assert allocated(store.path(digest)) <= 256 * 1024
    assert seen[-1] == (12 * MiB, 12 * MiB)


def test_unpublished_or_failed_stage_leaves_nothing(store: LocalImageStore) -> None:
    def crash_while_writing() -> None:
        with store.stage() as staged:
            staged.write(b"partial" * 1000)
            raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        crash_while_writing()
    with store.stage() as staged:
        staged.write(b"sealed but never published")
        staged.seal()

    assert list(store.staging_dir.iterdir()) == []
    assert store.digests() == []


def test_clean_staging_spares_live_writers_and_removes_dead_ones(store: LocalImageStore) -> None:
    # A writer that dies mid-blob leaves its staging file; the kernel drops its flock.
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from diskless.storage.store import LocalImageStore\n"
        "staged = LocalImageStore(Path(sys.argv[1])).stage()\n"
        "staged.write(b'x' * 65536)\n"
        "os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(store.root)], check=False)
    with store.stage() as live:
        live.write(b"still writing")
        assert len(list(store.staging_dir.iterdir())) == 2

        removed = store.clean_staging()

        assert len(removed) == 1
        assert [p.name for p in store.staging_dir.iterdir()] == [live.path.name]


def test_verify_detects_corruption_and_missing(store: LocalImageStore, tmp_path: Path) -> None:
    digest = store.add(sparse_file(tmp_path / "src.raw", MiB, {0: b"good"}))
    blob = store.path(digest)
    os.chmod(blob, 0o644)
    with blob.open("r+b") as file:
        file.write(b"evil")

    assert not store.verify(digest)
    store.remove(digest)
    store.remove(digest)  # absent is fine
    with pytest.raises(NotFoundError, match=digest.short):
        store.verify(digest)
    with pytest.raises(NotFoundError):
        store.size(digest)


def test_file_lock_excludes_second_holder(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "lock"), FileLock(tmp_path / "lock")
    first.acquire(blocking=False)
    with pytest.raises(LockHeld):
        second.acquire(blocking=False)
    first.release()
    second.acquire(blocking=False)
    second.release()


def test_atomic_write_json_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    atomic_write_json(target, {"c": 3})
    assert target.read_text() == '{\n  "c": 3\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]
