"""qcow2 host-cluster accounting: the refcount table, refcount blocks and cluster allocation.

Refcounts are kept in memory and written back by the image's flush in the order qcow2.rst's
crash-consistency rule requires (a refcount reaches the disk before any table entry that relies on
it). This module never decides *when* to write; it only knows *what* is dirty.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import os
import struct
import sys
from array import array
from collections.abc import Callable
from pathlib import Path

from diskless.storage.errors import ImageFormatError, StorageError
from diskless.storage.fileio import pread_exact
from diskless.storage.qcow2.format import REFT_OFFSET_MASK

__all__ = ["Refcounts"]

_ARRAY_CODE = {3: "B", 4: "H", 5: "I", 6: "Q"}
# How far past the end of the file refcounts may reach before the table is taken as damaged:
# 2^20 clusters is 64 GiB of 64 KiB clusters written but not yet on disk at a crash.
_LEAK_SLACK_CLUSTERS = 1 << 20
_HEADER_REFCOUNT_TABLE = struct.Struct(">QI")  # refcount_table_offset, refcount_table_clusters
_HEADER_REFCOUNT_TABLE_AT = 48


def _big_endian_array(code: str, data: bytes | bytearray | memoryview) -> array[int]:
    values: array[int] = array(code)
    values.frombytes(data)
    if sys.byteorder == "little" and values.itemsize > 1:
        values.byteswap()
    return values


def _to_big_endian(values: array[int]) -> bytes:
    if sys.byteorder == "little" and values.itemsize > 1:
        swapped = array(values.typecode, values)
        swapped.byteswap()
        return swapped.tobytes()
    return values.tobytes()


class Refcounts:
    """The reference count of every host cluster of one writable image.

    ``sync`` is called where an ordering barrier is needed (it is ``os.fdatasync`` for durable
    images and a no-op for throw-away ones).
    """

    def __init__(
        self,
        fd: int,
        path: Path,
        *,
        cluster_bits: int,
        refcount_order: int,
        table_offset: int,
        table_clusters: int,
        file_size: int,
        sync: Callable[[], None],
    ) -> None:
        if refcount_order not in _ARRAY_CODE:
            raise StorageError(
                f"{path}: {1 << refcount_order}-bit refcounts are supported read-only; "
                "convert with `qemu-img convert -O qcow2` to write"
            )
        self._fd = fd
        self._path = path
        self._sync = sync
        self._cluster_bits = cluster_bits
        self._cluster_size = 1 << cluster_bits
        self._code = _ARRAY_CODE[refcount_order]
        self._max_refcount = (1 << (1 << refcount_order)) - 1
        self._per_block = self._cluster_size * 8 >> refcount_order
        self._entry_bytes = (1 << refcount_order) // 8
        self._table_offset = table_offset
        self._table_clusters = table_clusters
        raw_table = bytearray(table_clusters << cluster_bits)
        pread_exact(fd, memoryview(raw_table), table_offset)
        self._table: list[int] = [
            entry & REFT_OFFSET_MASK for entry in _big_endian_array("Q", raw_table)
        ]
        self._blocks: dict[int, array[int]] = {}
        self._dirty_blocks: set[int] = set()
        self._unwritten_entries: set[int] = set()
        highest_used = -1
        for index, block_offset in enumerate(self._table):
            if not block_offset:
                continue
            if (
                block_offset & (self._cluster_size - 1)
                or block_offset + self._cluster_size > file_size
            ):
                raise ImageFormatError(
                    path, f"refcount block {index} at {block_offset:#x} lies outside the file"
                )
            raw_block = bytearray(self._cluster_size)
            pread_exact(fd, memoryview(raw_block), block_offset)
            self._blocks[index] = _big_endian_array(self._code, raw_block)
            used_bytes = len(raw_block.rstrip(b"\0"))
            if used_bytes:
                last = (used_bytes - 1) // self._entry_bytes
                highest_used = max(highest_used, index * self._per_block + last)
        file_clusters = -(-file_size // self._cluster_size)
        # Refcounts past the end of the file are leaks a crash may leave (counted before the data
        # reached the disk); refcounts far past it come from a damaged refcount table.
        if highest_used >= file_clusters + max(file_clusters, _LEAK_SLACK_CLUSTERS):
            raise ImageFormatError(
                path,
                f"refcounts claim cluster {highest_used}, far past the file's "
                f"{file_clusters} clusters (damaged refcount table?)",
            )
        self.alloc_end = max(highest_used + 1, file_clusters)
        # Unreferenced clusters inside the file are reusable. A min-heap (ascending order is one),
        # so the lowest goes first and the file stays compact.
        self._free: list[int] = []
        for index in range(-(-file_clusters // self._per_block)):
            first = index * self._per_block
            count = min(self._per_block, file_clusters - first)
            block = self._blocks.get(index)
            if block is None:
                self._free.extend(range(first, first + count))
            else:
                self._free.extend(
                    itertools.compress(
                        range(first, first + count), map(operator.not_, block[:count])
                    )
                )

    @property
    def dirty(self) -> bool:
        return bool(self._dirty_blocks or self._unwritten_entries)

    @property
    def has_unwritten_table_entries(self) -> bool:
        return bool(self._unwritten_entries)

    def get(self, cluster: int) -> int:
        block = self._blocks.get(cluster // self._per_block)
        return block[cluster % self._per_block] if block is not None else 0

    def allocate(self, count: int = 1) -> int:
        """Take ``count`` contiguous free clusters, give each a refcount of 1; returns the first."""
        if count == 1 and self._free:
            cluster = heapq.heappop(self._free)
        else:
            cluster = self.alloc_end
            self.alloc_end += count
        for index in range(cluster, cluster + count):
            self._add(index, 1)
        return cluster

    def release(self, cluster: int) -> bool:
        """Drop one reference; True when the cluster became free (and may be reused)."""
        remaining = self._add(cluster, -1)
        if remaining == 0:
            heapq.heappush(self._free, cluster)
            return True
        return False

    def write_dirty_blocks(self) -> None:
        """Write every changed refcount block in place (the caller orders and syncs)."""
        for index in sorted(self._dirty_blocks):
            data = _to_big_endian(self._blocks[index])
            os.pwrite(self._fd, data, self._table[index])
        self._dirty_blocks.clear()

    def write_table_entries(self) -> None:
        """Point the on-disk refcount table at blocks already written and synced."""
        for index in sorted(self._unwritten_entries):
            os.pwrite(
                self._fd, struct.pack(">Q", self._table[index]), self._table_offset + index * 8
            )
        self._unwritten_entries.clear()

    def _add(self, cluster: int, delta: int) -> int:
        index = cluster // self._per_block
        block = self._blocks.get(index)
        if block is None:
            block = self._new_block(index)
        position = cluster % self._per_block
        value = block[position] + delta
        if value < 0 or value > self._max_refcount:
            raise ImageFormatError(
                self._path, f"refcount of cluster {cluster} out of range ({value})"
            )
        block[position] = value
        self._dirty_blocks.add(index)
        return value

    def _new_block(self, index: int) -> array[int]:
        if index >= len(self._table):
            self._grow_table(index + 1)
            existing = self._blocks.get(index)
            if existing is not None:  # growing the table already created this block
                return existing
        block: array[int] = array(self._code, bytes(self._cluster_size))
        self._blocks[index] = block
        # The block's own cluster is appended at the end of the file; its refcount may land in
        # this very block (which is why the block exists before the recursive _add).
        block_cluster = self.alloc_end
        self.alloc_end += 1
        self._table[index] = block_cluster << self._cluster_bits
        self._unwritten_entries.add(index)
        self._dirty_blocks.add(index)
        self._add(block_cluster, 1)
        return block

    def _grow_table(self, min_entries: int) -> None:
        """Move the refcount table to a larger place at the end of the file.

        Rare (a 64 KiB-cluster image needs it past 16 TiB of file; a 512-byte-cluster image past
        8 MiB). Every refcount block is made durable before the new table that points at them, and
        the new table before the header that points at it; the old table is freed afterwards.
        """
        entries_per_cluster = self._cluster_size // 8
        new_clusters = max(self._table_clusters * 2, -(-(min_entries + 1) // entries_per_cluster))
        new_table_cluster = self.alloc_end
        self.alloc_end += new_clusters
        old_offset, old_clusters = self._table_offset, self._table_clusters
        self._table.extend([0] * (new_clusters * entries_per_cluster - len(self._table)))
        self._table_offset = new_table_cluster << self._cluster_bits
        self._table_clusters = new_clusters
        for cluster in range(new_table_cluster, new_table_cluster + new_clusters):
            self._add(cluster, 1)
        self.write_dirty_blocks()
        self._sync()
        table_bytes = struct.pack(f">{len(self._table)}Q", *self._table)
        os.pwrite(self._fd, table_bytes, self._table_offset)
        self._unwritten_entries.clear()
        self._sync()
        os.pwrite(
            self._fd,
            _HEADER_REFCOUNT_TABLE.pack(self._table_offset, self._table_clusters),
            _HEADER_REFCOUNT_TABLE_AT,
        )
        self._sync()
        for cluster in range(
            old_offset >> self._cluster_bits, (old_offset >> self._cluster_bits) + old_clusters
        ):
            self.release(cluster)
