"""Creating empty qcow2 v3 images and overlays, laid out exactly as ``qemu-img create`` lays them.

Matching QEMU byte for byte is not vanity: it means every tool that knows QEMU's images (qemu-img,
libvirt, backup software) knows ours, and tests can compare our output with QEMU's directly.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

from diskless.storage.errors import StorageError
from diskless.storage.qcow2.format import (
    INCOMPAT_EXTENDED_L2,
    MAX_CLUSTER_BITS,
    Header,
    HeaderError,
    build_header_cluster,
    required_l1_entries,
)

__all__ = ["create_qcow2"]

_DEFAULT_REFCOUNT_ORDER = 4  # 16-bit refcounts, QEMU's default
# QEMU writes the feature-name table only into images whose clusters are larger than this.
_FEATURE_TABLE_MIN_CLUSTER = 4096


def create_qcow2(
    path: Path | str,
    *,
    size: int | None = None,
    backing: str | None = None,
    backing_format: str | None = None,
    cluster_size: int = 65536,
    extended_l2: bool = False,
) -> None:
    """Write an empty qcow2 v3 image at ``path``, replacing any file there atomically.

    ``backing`` is stored verbatim; when relative, readers resolve it against the directory of
    ``path`` (as QEMU does). ``size`` defaults to the backing image's virtual size. The result is
    byte-identical to what ``qemu-img create -f qcow2 [-b B -F FMT]
    -o cluster_size=N,extended_l2=on|off`` writes.
    """
    path = Path(path)
    cluster_bits = cluster_size.bit_length() - 1
    if cluster_size != 1 << cluster_bits or not 9 <= cluster_bits <= MAX_CLUSTER_BITS:
        raise StorageError(f"{path}: cluster size {cluster_size} is not a power of two in 512..2M")
    if extended_l2 and cluster_bits < 14:
        raise StorageError(f"{path}: extended L2 entries need clusters of at least 16 KiB")
    if backing is not None and backing_format is None:
        backing_format = _probe_backing_format(path, backing)
    if size is None:
        if backing is None:
            raise StorageError(f"{path}: a size is needed when there is no backing file")
        size = _backing_size(path, backing, backing_format)
    if size < 0:
        raise StorageError(f"{path}: negative size {size}")
    size = -(-size // 512) * 512  # qemu-img rounds the virtual size up to whole sectors

    try:
        layout = _layout(size, cluster_bits, extended_l2)
    except StorageError as exc:
        raise StorageError(f"{path}: {exc}") from exc
    header = Header(
        version=3,
        cluster_bits=cluster_bits,
        size=size,
        l1_size=layout.l1_size,
        l1_table_offset=layout.l1_offset,
        refcount_table_offset=layout.refcount_table_offset,
        refcount_table_clusters=layout.refcount_table_clusters,
        nb_snapshots=0,
        snapshots_offset=0,
        incompatible_features=INCOMPAT_EXTENDED_L2 if extended_l2 else 0,
        refcount_order=_DEFAULT_REFCOUNT_ORDER,
        backing_file=backing,
        backing_format=backing_format if backing is not None else None,
    )
    try:
        header_bytes = build_header_cluster(
            header, feature_table=cluster_size > _FEATURE_TABLE_MIN_CLUSTER
        )
    except HeaderError as exc:
        raise StorageError(f"{path}: {exc}") from exc
    _write_atomically(path, layout, header_bytes)


class _Layout:
    """Where each metadata structure of a new image goes (cluster indexes and byte offsets)."""

    def __init__(self, size: int, cluster_bits: int, extended_l2: bool) -> None:
        cluster_size = 1 << cluster_bits
        entry_size = 16 if extended_l2 else 8
        self.cluster_size = cluster_size
        self.l1_size = required_l1_entries(size, cluster_bits, cluster_size // entry_size)
        refcounts_per_block = cluster_size * 8 // (1 << _DEFAULT_REFCOUNT_ORDER)
        l1_clusters = -(-self.l1_size * 8 // cluster_size)
        # QEMU: header at 0, refcount table at 1, first refcount block at 2, L1 table from 3;
        # refcount blocks needed for clusters beyond the first block's reach follow the L1 table.
        self.refcount_table_clusters = 1
        self.refcount_table_offset = cluster_size
        # An empty disk has no L1 table at all, and QEMU then records offset 0.
        self.l1_offset = 3 * cluster_size if self.l1_size else 0
        # Refcount blocks beyond the first go where QEMU's allocator puts them: each at the next
        # free cluster, immediately followed by the block that counts it if that doesn't exist.
        blocks = {0: 2}
        next_free = 3 + l1_clusters

        def ensure_block(index: int) -> None:
            nonlocal next_free
            if index in blocks:
                return
            blocks[index] = next_free
            next_free += 1
            ensure_block(blocks[index] // refcounts_per_block)

        for cluster in range(0, 3 + l1_clusters, refcounts_per_block):
            ensure_block(cluster // refcounts_per_block)
        ensure_block((2 + l1_clusters) // refcounts_per_block)
        # QEMU would move the refcount table for more blocks than one table cluster holds; such
        # tiny-cluster giant images are refused rather than laid out differently from QEMU.
        if max(blocks) >= (cluster_size // 8) * self.refcount_table_clusters:
            raise StorageError(
                "image too large for a one-cluster refcount table; use larger clusters"
            )
        self.refcount_blocks = [blocks.get(index, 0) for index in range(max(blocks) + 1)]
        self.used_clusters = next_free
        self.refcounts_per_block = refcounts_per_block
        self.file_length = max(
            self.l1_offset + self.l1_size * 8,
            3 * cluster_size,
            (max(blocks.values()) + 1) * cluster_size if len(blocks) > 1 else 0,
        )


def _layout(size: int, cluster_bits: int, extended_l2: bool) -> _Layout:
    return _Layout(size, cluster_bits, extended_l2)


def _write_atomically(path: Path, layout: _Layout, header_bytes: bytes) -> None:
    cluster_size = layout.cluster_size
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.ftruncate(fd, layout.file_length)
        os.pwrite(fd, header_bytes, 0)
        table = struct.pack(
            f">{len(layout.refcount_blocks)}Q",
            *(block * cluster_size for block in layout.refcount_blocks),
        )
        os.pwrite(fd, table, layout.refcount_table_offset)
        per_block = layout.refcounts_per_block
        for index, block in enumerate(layout.refcount_blocks):
            if not block:
                continue
            first = index * per_block
            count = min(per_block, layout.used_clusters - first)
            os.pwrite(fd, struct.pack(f">{count}H", *([1] * count)), block * cluster_size)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
        _fsync_directory(directory)
    except OSError as exc:
        raise StorageError(f"{path}: cannot create image: {exc.strerror}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _resolve_backing(path: Path, backing: str) -> Path:
    backing_path = Path(backing)
    return backing_path if backing_path.is_absolute() else path.parent / backing_path


def _probe_backing_format(path: Path, backing: str) -> str:
    from diskless.storage.images import probe_format

    return probe_format(_resolve_backing(path, backing))


def _backing_size(path: Path, backing: str, backing_format: str | None) -> int:
    from diskless.storage.images import open_image

    with open_image(_resolve_backing(path, backing), read_only=True, fmt=backing_format) as device:
        return device.size
