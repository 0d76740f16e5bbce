"""A qcow2 image as a :class:`~diskless.storage.blockdev.BlockDevice`: mapping, I/O, flush.

Reads follow qcow2.rst "Cluster mapping": guest offset → L1 entry → L2 entry → host offset, a zero
cluster, a compressed cluster, or "ask the backing file". Writes allocate host clusters at the end
of the file (or in holes left by discards), copy the unwritten part of a cluster — or, with extended
L2 entries, of a 1/32 subcluster — from the backing file, and keep L2 tables and refcounts in
memory until :meth:`Qcow2Image.flush`.

Crash consistency (qcow2.rst and QEMU's ``qcow2_alloc_cluster_link_l2``): at every instant the
on-disk metadata describes a consistent image. :meth:`flush` writes, with a barrier after each step,

1. guest data, new L2 tables (not yet referenced) and refcount blocks;
2. refcount-table entries for new refcount blocks (only when there are any);
3. updated L2 tables and L1 entries (every cluster they reference is now counted and written);
4. and only then drops the refcounts of clusters the new tables no longer reference.

A crash anywhere therefore leaves at worst leaked clusters (``qemu-img check`` exit 3), never a
reference to an uncounted cluster or to data that is not on disk, and every write acknowledged
before the last completed flush is present. Freed clusters are reused only after step 4.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import zlib
from array import array
from pathlib import Path
from types import TracebackType
from typing import Self

from diskless.storage.blockdev import (
    SECTOR_SIZE,
    BlockDevice,
    BufferExtent,
    Extent,
    FileExtent,
    ZeroExtent,
    byte_view,
    check_range,
    fill_from_plan,
)
from diskless.storage.errors import (
    BackingFileError,
    ImageFormatError,
    ReadOnlyError,
    StorageError,
)
from diskless.storage.fileio import pread_exact, punch_hole, pwrite_all
from diskless.storage.locking import lock_image
from diskless.storage.qcow2.format import (
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    L1E_OFFSET_MASK,
    L2E_COMPRESSED,
    L2E_OFFSET_MASK,
    L2E_ZERO,
    OFLAG_COPIED,
    SUBCLUSTERS_PER_CLUSTER,
    Header,
    HeaderError,
    parse_header,
)
from diskless.storage.qcow2.refcount import Refcounts

__all__ = ["Qcow2Image"]

# Longest backing chain we follow; deeper chains are almost certainly a loop.
MAX_BACKING_CHAIN = 16
# Clean L2 tables kept in memory per image (dirty ones stay until the next flush).
DEFAULT_L2_CACHE_BYTES = 32 << 20
# Dirty metadata beyond this is written back without waiting for the guest's flush, bounding the
# memory a guest that never flushes can pin.
MAX_DIRTY_METADATA_BYTES = 16 << 20
_DECOMPRESSED_CACHE_ENTRIES = 8
_HEADER_FEATURES = struct.Struct(">QQQ")  # incompatible, compatible, autoclear at byte 72
_HEADER_FEATURES_AT = 72
_ALL_SUBCLUSTERS = (1 << SUBCLUSTERS_PER_CLUSTER) - 1

# Kinds of guest range while mapping (kept as small ints: this runs for every I/O).
_DATA, _ZERO, _BACKING, _COMPRESSED = 0, 1, 2, 3


def _load_be64(data: bytes | bytearray | memoryview) -> array[int]:
    table: array[int] = array("Q")
    table.frombytes(data)
    if sys.byteorder == "little":
        table.byteswap()
    return table


def _dump_be64(table: array[int]) -> bytes:
    if sys.byteorder == "little":
        swapped = array("Q", table)
        swapped.byteswap()
        return swapped.tobytes()
    return table.tobytes()


class Qcow2Image:
    """An open qcow2 image (version 2 or 3, standard or extended L2 entries).

    ``backing`` lets several overlays share one open golden image (the caller keeps ownership);
    by default the backing chain named in the header is opened read-only and owned by this image.
    ``sync=False`` skips ``fdatasync`` barriers: for reset-on-boot overlays whose contents are
    thrown away at the next boot anyway.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        backing: BlockDevice | None = None,
        sync: bool = True,
        l2_cache_bytes: int = DEFAULT_L2_CACHE_BYTES,
        _chain_depth: int = 0,
    ) -> None:
        self._path = Path(path)
        self._read_only = read_only
        self._sync_enabled = sync and not read_only
        self._lock = threading.Lock()
        self._fd = -1
        self._backing: BlockDevice | None = None
        self._owns_backing = False
        try:
            self._fd = os.open(self._path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"{self._path}: cannot open image: {exc.strerror}") from exc
        try:
            self._open(backing, l2_cache_bytes, _chain_depth)
        except BaseException:
            self._release_files()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _open(self, backing: BlockDevice | None, l2_cache_bytes: int, chain_depth: int) -> None:
        lock_image(self._fd, self._path, write=not self._read_only)
        file_size = os.fstat(self._fd).st_size
        first = os.pread(self._fd, 1 << 21, 0)
        try:
            header = parse_header(first, file_size)
        except HeaderError as exc:
            raise ImageFormatError(self._path, str(exc)) from exc
        self._header = header
        self._size = header.size
        self._cluster_bits = header.cluster_bits
        self._cluster_size = header.cluster_size
        self._extended = header.extended_l2
        self._l2_entries = header.l2_entries
        self._l2_bits = self._l2_entries.bit_length() - 1
        self._subcluster_bits = self._cluster_bits - 5
        self._zero_flag = header.version >= 3 and not self._extended
        self._cluster_mask = self._cluster_size - 1
        self._l2_mask = self._l2_entries - 1
        self._file_size = file_size
        raw_l1 = bytearray(header.l1_size * 8)
        pread_exact(self._fd, memoryview(raw_l1), header.l1_table_offset)
        self._l1 = _load_be64(raw_l1)
        self._l2_cache: dict[int, array[int]] = {}
        self._l2_cache_limit = max(4, l2_cache_bytes >> self._cluster_bits)
        self._dirty_l2: set[int] = set()
        self._new_l2: set[int] = set()
        self._dirty_l1: set[int] = set()
        self._pending_free: list[int] = []
        self._data_dirty = False
        self._decompressed: dict[int, bytes] = {}
        self._refcounts: Refcounts | None = None
        if not self._read_only:
            self._prepare_for_writing(header, file_size)
        self._attach_backing(header, backing, chain_depth)

    def _prepare_for_writing(self, header: Header, file_size: int) -> None:
        if header.incompatible_features & INCOMPAT_CORRUPT:
            raise ImageFormatError(
                self._path, "marked corrupt; repair with `qemu-img check -r all`"
            )
        if header.incompatible_features & INCOMPAT_DIRTY:
            raise ImageFormatError(
                self._path,
                "dirty (lazy refcounts were not written back); repair with `qemu-img check -r all`",
            )
        if header.nb_snapshots:
            raise ImageFormatError(
                self._path, "images with internal snapshots are opened read-only"
            )
        self._refcounts = Refcounts(
            self._fd,
            self._path,
            cluster_bits=header.cluster_bits,
            refcount_order=header.refcount_order,
            table_offset=header.refcount_table_offset,
            table_clusters=header.refcount_table_clusters,
            file_size=file_size,
            sync=self._barrier,
        )
        if header.version >= 3 and header.autoclear_features:
            # qcow2.rst: a writer that doesn't maintain an autoclear feature must clear its bit.
            os.pwrite(
                self._fd,
                _HEADER_FEATURES.pack(header.incompatible_features, header.compatible_features, 0),
                _HEADER_FEATURES_AT,
            )
            self._barrier()

    def _attach_backing(
        self, header: Header, backing: BlockDevice | None, chain_depth: int
    ) -> None:
        if backing is not None:
            self._backing = backing
            return
        if header.backing_file is None:
            return
        if chain_depth >= MAX_BACKING_CHAIN:
            raise BackingFileError(
                self._path, header.backing_file, "backing chain too deep (loop?)"
            )
        backing_path = Path(header.backing_file)
        if not backing_path.is_absolute():
            backing_path = self._path.parent / backing_path
        if not backing_path.exists():
            raise BackingFileError(self._path, backing_path, "does not exist")
        from diskless.storage.images import open_image  # images imports this module

        try:
            self._backing = open_image(
                backing_path,
                read_only=True,
                fmt=header.backing_format,
                _chain_depth=chain_depth + 1,
            )
        except StorageError as exc:
            raise BackingFileError(self._path, backing_path, str(exc)) from exc
        self._owns_backing = True

    # -- BlockDevice properties ----------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return SECTOR_SIZE

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def header(self) -> Header:
        return self._header

    @property
    def backing(self) -> BlockDevice | None:
        return self._backing

    @property
    def cluster_size(self) -> int:
        return self._cluster_size

    @property
    def extended_l2(self) -> bool:
        return self._extended

    # -- reading -------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        view = byte_view(buf)
        length = len(view)
        if offset < 0 or offset + length > self._size:
            check_range(self._size, offset, length)
        located = self._locate_simple(offset, length)
        if located is None:
            fill_from_plan(self.read_plan(offset, length), view)
            return
        kind, where = located
        if kind == _DATA:
            if os.preadv(self._fd, [view], where) != length:
                pread_exact(self._fd, view, where)
        elif kind == _BACKING:
            self._read_backing_into(where, view)
        else:
            view[:] = bytes(length)

    def read_plan(self, offset: int, length: int) -> list[Extent]:
        check_range(self._size, offset, length)
        located = self._locate_simple(offset, length) if length else None
        plan: list[Extent]
        if located is not None:
            kind, where = located
            if kind == _DATA:
                return [FileExtent(self._fd, where, length)]
            if kind == _ZERO:
                return [ZeroExtent(length)]
            plan = []
            self._emit_backing(where, length, plan)
            return plan
        plan = []
        with self._lock:
            self._plan(offset, length, plan)
        return plan

    def _locate_simple(self, pos: int, length: int) -> tuple[int, int] | None:
        """``(kind, where)`` when the range is one run inside one cluster whose L2 table is cached.

        The hot path of small reads: no lock (the GIL makes each table read atomic, and a writer
        publishes an entry only after its data is written), no list, no merging. ``None`` sends
        the caller down the general path.
        """
        in_cluster = pos & self._cluster_mask
        if in_cluster + length > self._cluster_size:
            return None
        cluster = pos >> self._cluster_bits
        l2_offset = self._l1[cluster >> self._l2_bits] & L1E_OFFSET_MASK
        if not l2_offset:
            return _BACKING, pos
        table = self._l2_cache.get(l2_offset)
        if table is None:
            return None
        index = cluster & self._l2_mask
        if self._extended:
            descriptor = table[2 * index]
            if descriptor & L2E_COMPRESSED:
                return None
            bitmap = table[2 * index + 1]
            first = in_cluster >> self._subcluster_bits
            last = (in_cluster + length - 1) >> self._subcluster_bits
            wanted = ((2 << last) - 1) ^ ((1 << first) - 1)
            allocated = bitmap & wanted
            zeros = (bitmap >> SUBCLUSTERS_PER_CLUSTER) & wanted
            if allocated == wanted and not zeros:
                return _DATA, self._data_offset(descriptor, pos) + in_cluster
            if not allocated and not zeros:
                return _BACKING, pos
            if zeros == wanted and not allocated:
                return _ZERO, 0
            return None
        entry = table[index]
        if entry & L2E_COMPRESSED:
            return None
        if entry & L2E_ZERO and self._zero_flag:
            return _ZERO, 0
        if entry & L2E_OFFSET_MASK:
            return _DATA, self._data_offset(entry, pos) + in_cluster
        return _BACKING, pos

    def _plan(self, offset: int, length: int, plan: list[Extent]) -> None:
        """Append the extents of a guest range to ``plan``, merging contiguous runs."""
        cluster_bits = self._cluster_bits
        cluster_mask = self._cluster_size - 1
        l2_bits = self._l2_bits
        l2_mask = self._l2_entries - 1
        l1 = self._l1
        extended = self._extended
        pos = offset
        end = offset + length
        run_kind = -1
        run_where = 0
        run_length = 0
        while pos < end:
            cluster = pos >> cluster_bits
            l1_index = cluster >> l2_bits
            l2_offset = l1[l1_index] & L1E_OFFSET_MASK
            if not l2_offset:
                kind = _BACKING
                where = pos
                count = min(end, (l1_index + 1) << (l2_bits + cluster_bits)) - pos
            else:
                table = self._l2_cache.get(l2_offset) or self._load_l2(l2_offset)
                in_cluster = pos & cluster_mask
                if extended:
                    kind, where, count = self._map_extended(
                        table, cluster & l2_mask, in_cluster, pos, end
                    )
                else:
                    entry = table[cluster & l2_mask]
                    count = min(end - pos, self._cluster_size - in_cluster)
                    if entry & L2E_COMPRESSED:
                        kind, where = _COMPRESSED, entry
                    elif entry & L2E_ZERO and self._zero_flag:
                        kind, where = _ZERO, 0
                    elif entry & L2E_OFFSET_MASK:
                        kind, where = _DATA, self._data_offset(entry, pos) + in_cluster
                    else:
                        kind, where = _BACKING, pos
            if kind == run_kind and (kind == _ZERO or run_where + run_length == where):
                run_length += count
            else:
                if run_length:
                    self._emit(run_kind, run_where, run_length, plan)
                if kind == _COMPRESSED:
                    self._emit_compressed(where, pos & cluster_mask, count, pos, plan)
                    run_kind, run_length = -1, 0
                else:
                    run_kind, run_where, run_length = kind, where, count
            pos += count
        if run_length:
            self._emit(run_kind, run_where, run_length, plan)

    def _map_extended(
        self, table: array[int], index: int, in_cluster: int, pos: int, end: int
    ) -> tuple[int, int, int]:
        """Classify the run of like subclusters from ``pos`` within one extended-L2 cluster."""
        descriptor = table[2 * index]
        if descriptor & L2E_COMPRESSED:
            return _COMPRESSED, descriptor, min(end - pos, self._cluster_size - in_cluster)
        bitmap = table[2 * index + 1]
        allocated = bitmap & _ALL_SUBCLUSTERS
        zeros = bitmap >> SUBCLUSTERS_PER_CLUSTER
        if allocated & zeros:
            raise ImageFormatError(
                self._path, f"subcluster both allocated and zero at guest offset {pos:#x}"
            )
        sub_bits = self._subcluster_bits
        first = in_cluster >> sub_bits
        bit = 1 << first
        if allocated & bit:
            kind, state = _DATA, allocated
        elif zeros & bit:
            kind, state = _ZERO, zeros
        else:
            kind, state = _BACKING, ~(allocated | zeros)
        last = first + 1
        while last < SUBCLUSTERS_PER_CLUSTER and state & (1 << last):
            last += 1
        count = min(end - pos, (last << sub_bits) - in_cluster)
        if kind == _DATA:
            return kind, self._data_offset(descriptor, pos) + in_cluster, count
        return kind, pos if kind == _BACKING else 0, count

    def _data_offset(self, descriptor: int, pos: int) -> int:
        host = descriptor & L2E_OFFSET_MASK
        if not host:
            raise ImageFormatError(
                self._path, f"guest offset {pos:#x} is marked allocated but has no host cluster"
            )
        if host & (self._cluster_size - 1):
            raise ImageFormatError(
                self._path, f"data cluster for guest offset {pos:#x} at unaligned {host:#x}"
            )
        if host >= self._data_limit():
            raise ImageFormatError(
                self._path,
                f"L2 entry for guest offset {pos:#x} points past the end of the file ({host:#x})",
            )
        return host

    def _data_limit(self) -> int:
        if self._refcounts is not None:
            return max(self._file_size, self._refcounts.alloc_end << self._cluster_bits)
        return self._file_size

    def _emit(self, kind: int, where: int, length: int, plan: list[Extent]) -> None:
        if kind == _DATA:
            plan.append(FileExtent(self._fd, where, length))
        elif kind == _ZERO:
            plan.append(ZeroExtent(length))
        else:
            self._emit_backing(where, length, plan)

    def _emit_backing(self, pos: int, length: int, plan: list[Extent]) -> None:
        backing = self._backing
        inside = 0 if backing is None else max(0, min(length, backing.size - pos))
        if inside:
            assert backing is not None
            plan.extend(backing.read_plan(pos, inside))
        if length > inside:
            plan.append(ZeroExtent(length - inside))

    def _emit_compressed(
        self, descriptor: int, in_cluster: int, count: int, pos: int, plan: list[Extent]
    ) -> None:
        data = self._decompress(descriptor, pos)
        plan.append(BufferExtent(memoryview(data)[in_cluster : in_cluster + count]))

    def _compressed_span(self, descriptor: int) -> tuple[int, int]:
        """Host byte offset and length of a compressed cluster (qcow2.rst "Compressed Clusters")."""
        offset_bits = 62 - (self._cluster_bits - 8)
        host = descriptor & ((1 << offset_bits) - 1)
        sectors = ((descriptor >> offset_bits) & ((1 << (self._cluster_bits - 8)) - 1)) + 1
        return host, sectors * 512 - (host & 511)

    def _decompress(self, descriptor: int, pos: int) -> bytes:
        cached = self._decompressed.get(descriptor)
        if cached is not None:
            return cached
        host, length = self._compressed_span(descriptor)
        if host + 1 > self._data_limit():
            raise ImageFormatError(
                self._path, f"compressed cluster for guest offset {pos:#x} lies past the end"
            )
        compressed = os.pread(self._fd, length, host)
        try:
            # Raw deflate with a 4 KiB window, as QEMU's qcow2_co_decompress writes it.
            data = zlib.decompressobj(-12).decompress(compressed, self._cluster_size)
        except zlib.error as exc:
            raise ImageFormatError(
                self._path, f"compressed cluster for guest offset {pos:#x} is corrupt: {exc}"
            ) from exc
        if len(data) != self._cluster_size:
            raise ImageFormatError(
                self._path, f"compressed cluster for guest offset {pos:#x} is truncated"
            )
        if len(self._decompressed) >= _DECOMPRESSED_CACHE_ENTRIES:
            self._decompressed.pop(next(iter(self._decompressed)))
        self._decompressed[descriptor] = data
        return data

    def _load_l2(self, l2_offset: int) -> array[int]:
        if (
            l2_offset & (self._cluster_size - 1)
            or l2_offset + self._cluster_size > self._data_limit()
        ):
            raise ImageFormatError(self._path, f"L2 table at {l2_offset:#x} lies outside the file")
        raw = bytearray(self._cluster_size)
        pread_exact(self._fd, memoryview(raw), l2_offset)
        table = _load_be64(raw)
        if len(self._l2_cache) >= self._l2_cache_limit:
            self._evict_clean_l2()
        self._l2_cache[l2_offset] = table
        return table

    def _evict_clean_l2(self) -> None:
        # Oldest-loaded first: no bookkeeping on the read path, which an LRU would need.
        for offset in list(self._l2_cache):
            if offset not in self._dirty_l2:
                del self._l2_cache[offset]
                if len(self._l2_cache) < self._l2_cache_limit:
                    return

    # -- writing -------------------------------------------------------------------------------

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        self._check_writable()
        view = memoryview(data).cast("B")
        check_range(self._size, offset, len(view))
        with self._lock:
            done = 0
            total = len(view)
            while done < total:
                pos = offset + done
                in_cluster = pos & (self._cluster_size - 1)
                count = min(total - done, self._cluster_size - in_cluster)
                self._write_in_cluster(pos, view[done : done + count])
                done += count
            self._data_dirty = True
            self._after_update(fua)

    def write_zeroes(
        self, offset: int, length: int, *, unmap: bool = True, fua: bool = False
    ) -> None:
        self._check_writable()
        check_range(self._size, offset, length)
        with self._lock:
            pos = offset
            end = offset + length
            while pos < end:
                in_cluster = pos & (self._cluster_size - 1)
                count = min(end - pos, self._cluster_size - in_cluster)
                self._zero_in_cluster(pos, count, unmap=unmap)
                pos += count
            self._after_update(fua)

    def discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length, unmap=True)

    def _after_update(self, fua: bool) -> None:
        too_much_dirty = (len(self._dirty_l2) << self._cluster_bits) > MAX_DIRTY_METADATA_BYTES
        if fua or too_much_dirty:
            self._flush_locked()

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyError(f"{self._path}: opened read-only")

    def _l2_for_write(self, pos: int) -> tuple[array[int], int]:
        """The L2 table mapping ``pos`` and the entry's index, allocating the table if needed."""
        cluster = pos >> self._cluster_bits
        l1_index = cluster >> self._l2_bits
        l1_entry = self._l1[l1_index]
        l2_offset = l1_entry & L1E_OFFSET_MASK
        index = cluster & (self._l2_entries - 1)
        if l2_offset:
            if not l1_entry & OFLAG_COPIED:
                raise ImageFormatError(self._path, f"L2 table at {l2_offset:#x} is shared")
            return self._l2_cache.get(l2_offset) or self._load_l2(l2_offset), index
        l2_offset = self._allocate_cluster()
        table: array[int] = array("Q", bytes(self._cluster_size))
        self._l2_cache[l2_offset] = table
        self._new_l2.add(l2_offset)
        self._dirty_l2.add(l2_offset)
        self._l1[l1_index] = l2_offset | OFLAG_COPIED
        self._dirty_l1.add(l1_index)
        return table, index

    def _mark_dirty(self, table: array[int], pos: int) -> None:
        cluster = pos >> self._cluster_bits
        l2_offset = self._l1[cluster >> self._l2_bits] & L1E_OFFSET_MASK
        self._dirty_l2.add(l2_offset)

    def _allocate_cluster(self) -> int:
        assert self._refcounts is not None
        return self._refcounts.allocate() << self._cluster_bits

    def _free_later(self, descriptor: int) -> None:
        """Drop a reference once the tables that no longer point at it are durable."""
        if descriptor & L2E_COMPRESSED:
            host, length = self._compressed_span(descriptor)
            first = host >> self._cluster_bits
            last = (host + length - 1) >> self._cluster_bits
            self._pending_free.extend(range(first, last + 1))
        else:
            host = descriptor & L2E_OFFSET_MASK
            if host:
                self._pending_free.append(host >> self._cluster_bits)

    def _write_in_cluster(self, pos: int, chunk: memoryview) -> None:
        """Write ``chunk`` (which does not cross a cluster boundary) at guest offset ``pos``."""
        table, index = self._l2_for_write(pos)
        in_cluster = pos & (self._cluster_size - 1)
        if self._extended:
            self._write_extended(table, index, pos, in_cluster, chunk)
            return
        entry = table[index]
        host = entry & L2E_OFFSET_MASK
        zero = bool(entry & L2E_ZERO) and self._zero_flag
        compressed = bool(entry & L2E_COMPRESSED)
        if host and not compressed and not zero and entry & OFLAG_COPIED:
            pwrite_all(self._fd, chunk, self._data_offset(entry, pos) + in_cluster)
            return
        cluster_start = pos - in_cluster
        if compressed:
            base: bytes | None = self._decompress(entry, pos)
        elif zero or (host and not entry & OFLAG_COPIED):
            base = None if zero else os.pread(self._fd, self._cluster_size, host)
        else:
            base = b""  # read the untouched parts from the backing file
        if zero and host and entry & OFLAG_COPIED and not compressed:
            new_host = host  # a preallocated zero cluster keeps its place
        else:
            new_host = self._allocate_cluster()
            if compressed or host:
                self._free_later(entry)
        self._fill_cluster(new_host, cluster_start, in_cluster, chunk, base)
        table[index] = new_host | OFLAG_COPIED
        self._mark_dirty(table, pos)

    def _fill_cluster(
        self,
        host: int,
        cluster_start: int,
        in_cluster: int,
        chunk: memoryview,
        base: bytes | None,
    ) -> None:
        """Write a whole new cluster: ``chunk`` at ``in_cluster``, the rest from ``base``.

        ``base`` is the cluster's previous content, ``None`` for zeros, or ``b""`` for "from the
        backing file". Only the head and tail around ``chunk`` are read or built.
        """
        head_length = in_cluster
        tail_start = in_cluster + len(chunk)
        tail_length = self._cluster_size - tail_start
        if not head_length and not tail_length:
            pwrite_all(self._fd, chunk, host)
            return
        head = self._old_content(base, cluster_start, 0, head_length)
        tail = self._old_content(base, cluster_start, tail_start, tail_length)
        pwrite_all(self._fd, memoryview(head + bytes(chunk) + tail), host)

    def _old_content(
        self, base: bytes | None, cluster_start: int, start: int, length: int
    ) -> bytes:
        if length == 0:
            return b""
        if base is None:
            return bytes(length)
        if base:
            return base[start : start + length]
        buf = bytearray(length)
        self._read_backing_into(cluster_start + start, memoryview(buf))
        return bytes(buf)

    def _read_backing_into(self, pos: int, buf: memoryview) -> None:
        """Guest bytes the backing file supplies for ``pos`` (zeros beyond it or without one)."""
        backing = self._backing
        inside = 0 if backing is None else max(0, min(len(buf), backing.size - pos))
        if inside:
            assert backing is not None
            backing.readinto(pos, buf[:inside])
        if len(buf) > inside:
            buf[inside:] = bytes(len(buf) - inside)

    def _write_extended(
        self, table: array[int], index: int, pos: int, in_cluster: int, chunk: memoryview
    ) -> None:
        descriptor = table[2 * index]
        bitmap = table[2 * index + 1]
        cluster_start = pos - in_cluster
        if descriptor & L2E_COMPRESSED:
            # A compressed cluster becomes a normal, fully allocated one.
            base = self._decompress(descriptor, pos)
            new_host = self._allocate_cluster()
            self._free_later(descriptor)
            self._fill_cluster(new_host, cluster_start, in_cluster, chunk, base)
            table[2 * index] = new_host | OFLAG_COPIED
            table[2 * index + 1] = _ALL_SUBCLUSTERS
            self._mark_dirty(table, pos)
            return
        host = descriptor & L2E_OFFSET_MASK
        if host:
            host = self._data_offset(descriptor, pos)
            if not descriptor & OFLAG_COPIED:
                raise ImageFormatError(self._path, f"data cluster at {host:#x} is shared")
        sub_bits = self._subcluster_bits
        sub_size = 1 << sub_bits
        first = in_cluster >> sub_bits
        last = (in_cluster + len(chunk) - 1) >> sub_bits
        touched = ((1 << (last + 1)) - 1) & ~((1 << first) - 1)
        allocated = bitmap & _ALL_SUBCLUSTERS
        zeros = bitmap >> SUBCLUSTERS_PER_CLUSTER
        if host and touched & allocated == touched:
            pwrite_all(self._fd, chunk, host + in_cluster)
            return
        if not host:
            host = self._allocate_cluster()
            table[2 * index] = host | OFLAG_COPIED
        # Fill only the partial subclusters at either end that hold no data of their own yet.
        head_start = in_cluster
        if in_cluster & (sub_size - 1) and not allocated & (1 << first):
            head_start = first << sub_bits
        end = in_cluster + len(chunk)
        tail_end = end
        if end & (sub_size - 1) and not allocated & (1 << last):
            tail_end = (last + 1) << sub_bits
        head = self._subcluster_content(zeros, first, cluster_start, head_start, in_cluster)
        tail = self._subcluster_content(zeros, last, cluster_start, end, tail_end)
        if head or tail:
            pwrite_all(self._fd, memoryview(head + bytes(chunk) + tail), host + head_start)
        else:
            pwrite_all(self._fd, chunk, host + in_cluster)
        allocated |= touched
        zeros &= ~touched
        table[2 * index + 1] = allocated | (zeros << SUBCLUSTERS_PER_CLUSTER)
        self._mark_dirty(table, pos)

    def _subcluster_content(
        self, zeros: int, subcluster: int, cluster_start: int, start: int, end: int
    ) -> bytes:
        if end <= start:
            return b""
        if zeros & (1 << subcluster):
            return bytes(end - start)
        buf = bytearray(end - start)
        self._read_backing_into(cluster_start + start, memoryview(buf))
        return bytes(buf)

    def _zero_in_cluster(self, pos: int, count: int, *, unmap: bool) -> None:
        """Make ``count`` bytes at ``pos`` (inside one cluster) read as zeros."""
        if self._backing is None and not self._l1[(pos >> self._cluster_bits) >> self._l2_bits]:
            return  # no L2 table and nothing behind it: already zeros
        in_cluster = pos & (self._cluster_size - 1)
        if self._extended:
            self._zero_extended(pos, in_cluster, count, unmap=unmap)
            return
        if count != self._cluster_size or not self._zero_flag:
            if not self._reads_as_zero(pos, count):
                self._write_in_cluster(pos, memoryview(bytes(count)))
                self._data_dirty = True
            return
        table, index = self._l2_for_write(pos)
        entry = table[index]
        host = entry & L2E_OFFSET_MASK
        keep = not unmap and host and not entry & L2E_COMPRESSED and bool(entry & OFLAG_COPIED)
        if keep:
            new_entry = host | OFLAG_COPIED | L2E_ZERO
        else:
            # Without a backing file an unallocated cluster already reads as zeros.
            new_entry = L2E_ZERO if self._backing is not None else 0
            if entry & L2E_COMPRESSED or host:
                self._free_later(entry)
        if new_entry != entry:
            table[index] = new_entry
            self._mark_dirty(table, pos)

    def _zero_extended(self, pos: int, in_cluster: int, count: int, *, unmap: bool) -> None:
        sub_bits = self._subcluster_bits
        sub_size = 1 << sub_bits
        first_full = -(-in_cluster // sub_size)
        end = in_cluster + count
        last_full = end >> sub_bits  # exclusive
        cluster_start = pos - in_cluster
        # Partial subclusters at either end are written as zeros through the data path.
        if first_full >= last_full:
            if not self._reads_as_zero(pos, count):
                self._write_in_cluster(pos, memoryview(bytes(count)))
                self._data_dirty = True
            return
        if in_cluster < first_full << sub_bits:
            length = (first_full << sub_bits) - in_cluster
            if not self._reads_as_zero(pos, length):
                self._write_in_cluster(pos, memoryview(bytes(length)))
                self._data_dirty = True
        if end > last_full << sub_bits:
            start = last_full << sub_bits
            if not self._reads_as_zero(cluster_start + start, end - start):
                self._write_in_cluster(cluster_start + start, memoryview(bytes(end - start)))
                self._data_dirty = True
        table, index = self._l2_for_write(pos)
        descriptor = table[2 * index]
        bitmap = table[2 * index + 1]
        if descriptor & L2E_COMPRESSED:
            # Expand first so the subclusters outside the range keep their data.
            self._write_extended(
                table, index, cluster_start, 0, memoryview(self._decompress(descriptor, pos))
            )
            descriptor = table[2 * index]
            bitmap = table[2 * index + 1]
        full = ((1 << last_full) - 1) & ~((1 << first_full) - 1)
        allocated = bitmap & _ALL_SUBCLUSTERS & ~full
        zeros = (bitmap >> SUBCLUSTERS_PER_CLUSTER) | full
        if self._backing is None:
            zeros &= ~full  # unallocated already reads as zeros; keep the entry minimal
        host = descriptor & L2E_OFFSET_MASK
        if host and not allocated and unmap:
            self._free_later(descriptor)
            descriptor = 0
        new_bitmap = allocated | (zeros << SUBCLUSTERS_PER_CLUSTER)
        if (descriptor, new_bitmap) != (table[2 * index], table[2 * index + 1]):
            table[2 * index] = descriptor
            table[2 * index + 1] = new_bitmap
            self._mark_dirty(table, pos)

    def _reads_as_zero(self, pos: int, length: int) -> bool:
        plan: list[Extent] = []
        self._plan(pos, length, plan)
        return all(isinstance(extent, ZeroExtent) for extent in plan)

    # -- durability ----------------------------------------------------------------------------

    def flush(self) -> None:
        if self._read_only:
            return
        with self._lock:
            self._flush_locked()

    def _barrier(self) -> None:
        if self._sync_enabled:
            os.fdatasync(self._fd)

    def _flush_locked(self) -> None:
        refcounts = self._refcounts
        assert refcounts is not None
        if not (self._dirty_l2 or self._dirty_l1 or self._pending_free or refcounts.dirty):
            if self._data_dirty:
                self._barrier()
                self._data_dirty = False
            return
        # Step 1: data, tables nothing points at yet, refcounts.
        for l2_offset in sorted(self._new_l2):
            self._write_l2(l2_offset)
        refcounts.write_dirty_blocks()
        self._barrier()
        # Step 2: the refcount table may now point at the new blocks.
        if refcounts.has_unwritten_table_entries:
            refcounts.write_table_entries()
            self._barrier()
        # Step 3: tables that reference the counted clusters.
        for l2_offset in sorted(self._dirty_l2 - self._new_l2):
            self._write_l2(l2_offset)
        self._write_dirty_l1()
        self._barrier()
        self._dirty_l2.clear()
        self._new_l2.clear()
        self._data_dirty = False
        # Step 4: nothing on disk references these any more; a crash from here leaks at most.
        if self._pending_free:
            freed = self._pending_free
            self._pending_free = []
            for cluster in freed:
                if refcounts.release(cluster):
                    punch_hole(self._fd, cluster << self._cluster_bits, self._cluster_size)
            refcounts.write_dirty_blocks()

    def _write_l2(self, l2_offset: int) -> None:
        pwrite_all(self._fd, memoryview(_dump_be64(self._l2_cache[l2_offset])), l2_offset)

    def _write_dirty_l1(self) -> None:
        if not self._dirty_l1:
            return
        table_offset = self._header.l1_table_offset
        for l1_index in sorted(self._dirty_l1):
            os.pwrite(self._fd, struct.pack(">Q", self._l1[l1_index]), table_offset + l1_index * 8)
        self._dirty_l1.clear()

    # -- housekeeping --------------------------------------------------------------------------

    def allocated_bytes(self) -> int:
        return os.fstat(self._fd).st_blocks * 512

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            try:
                if not self._read_only:
                    self._flush_locked()
            finally:
                self._release_files()

    def _release_files(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._owns_backing and self._backing is not None:
            self._backing.close()
        self._backing = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
