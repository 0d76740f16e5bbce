"""The qcow2 on-disk format: header, header extensions and table-entry layouts.

Pure functions over bytes, following ``docs/interop/qcow2.rst`` in QEMU's tree field by field (all
integers big-endian). Parsing validates every invariant the spec states next to a field, so the
image code can trust a :class:`Header` it is handed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

__all__ = [
    "COMPRESSION_DEFLATE",
    "EXT_BACKING_FORMAT",
    "EXT_END",
    "EXT_EXTERNAL_DATA_FILE",
    "EXT_FEATURE_TABLE",
    "HEADER_V3_LENGTH",
    "INCOMPAT_COMPRESSION",
    "INCOMPAT_CORRUPT",
    "INCOMPAT_DIRTY",
    "INCOMPAT_EXTENDED_L2",
    "INCOMPAT_EXTERNAL_DATA",
    "L1E_OFFSET_MASK",
    "L2E_COMPRESSED",
    "L2E_OFFSET_MASK",
    "L2E_ZERO",
    "MAGIC",
    "MAX_BACKING_FILE_NAME",
    "MAX_CLUSTER_BITS",
    "MIN_CLUSTER_BITS",
    "OFLAG_COPIED",
    "REFT_OFFSET_MASK",
    "SUBCLUSTERS_PER_CLUSTER",
    "Header",
    "HeaderError",
    "build_header_cluster",
    "parse_header",
]

MAGIC = b"QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21  # QEMU refuses larger clusters, so images we write must stay within it
MAX_BACKING_FILE_NAME = 1023
# QEMU's QCOW_MAX_L1_SIZE: an L1 table beyond 32 MiB is taken as a corrupt header, not a real disk.
MAX_L1_BYTES = 32 << 20
# QEMU's QCOW_MAX_REFTABLE_SIZE (8 MiB).
MAX_REFCOUNT_TABLE_BYTES = 8 << 20
HEADER_V2_LENGTH = 72
HEADER_V3_LENGTH = 104
# The length QEMU writes since it added the compression_type byte (104 + 1, padded to 8).
HEADER_V3_WRITE_LENGTH = 112

# Incompatible feature bits (qcow2.rst "Header", bytes 72-79).
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_EXTERNAL_DATA = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
_KNOWN_INCOMPAT = (
    INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_EXTERNAL_DATA
    | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTENDED_L2
)
COMPAT_LAZY_REFCOUNTS = 1 << 0

COMPRESSION_DEFLATE = 0
COMPRESSION_ZSTD = 1

# Header extension types (qcow2.rst "Header extensions").
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_FULL_DISK_ENCRYPTION = 0x0537BE77
EXT_EXTERNAL_DATA_FILE = 0x44415441

# Table entries (qcow2.rst "Cluster mapping" and "Host cluster management").
OFLAG_COPIED = 1 << 63  # refcount is exactly one: the cluster may be written in place
L1E_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L2E_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L2E_COMPRESSED = 1 << 62
L2E_ZERO = 1 << 0  # v3 standard clusters only: the cluster reads as zeros
REFT_OFFSET_MASK = 0xFFFF_FFFF_FFFF_FE00
SUBCLUSTERS_PER_CLUSTER = 32  # extended L2: one allocation and one zero bit per subcluster

_FIXED = struct.Struct(">4sIQIIQIIQQIIQ")  # the 72 bytes common to v2 and v3
_V3 = struct.Struct(">QQQII")  # bytes 72-103
_EXTENSION = struct.Struct(">II")

# The feature-name table QEMU writes into every new image whose clusters exceed 4 KiB, so
# `qemu-img info` can name bits it does not know: (type, bit, name); type 0 incompatible,
# 1 compatible, 2 autoclear.
_FEATURE_NAMES: tuple[tuple[int, int, bytes], ...] = (
    (0, 0, b"dirty bit"),
    (0, 1, b"corrupt bit"),
    (0, 2, b"external data file"),
    (0, 3, b"compression type"),
    (0, 4, b"extended L2 entries"),
    (1, 0, b"lazy refcounts"),
    (2, 0, b"bitmaps"),
    (2, 1, b"raw external data"),
)
_FEATURE_ENTRY = struct.Struct(">BB46s")


class HeaderError(ValueError):
    """The header violates the format; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded, validated qcow2 header (plus the extensions this engine understands)."""

    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = HEADER_V3_WRITE_LENGTH
    compression_type: int = COMPRESSION_DEFLATE
    crypt_method: int = 0
    backing_file: str | None = None
    backing_format: str | None = None
    unknown_extensions: tuple[int, ...] = field(default=())

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_EXTENDED_L2)

    @property
    def l2_entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.l2_entry_size

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    def with_features(self, *, incompatible: int, autoclear: int) -> Header:
        return replace(self, incompatible_features=incompatible, autoclear_features=autoclear)


def required_l1_entries(size: int, cluster_bits: int, l2_entries: int) -> int:
    """How many L1 entries a disk of ``size`` bytes needs (qcow2.rst "Cluster mapping")."""
    bytes_per_l2 = l2_entries << cluster_bits
    return (size + bytes_per_l2 - 1) // bytes_per_l2


def parse_header(cluster0: bytes, file_size: int) -> Header:
    """Decode and validate the header found in the first cluster of an image.

    ``cluster0`` holds at least the first cluster (or the whole file, if shorter); ``file_size``
    bounds every offset. Raises :class:`HeaderError`.
    """
    if len(cluster0) < _FIXED.size:
        raise HeaderError(f"file is {len(cluster0)} bytes, shorter than a qcow2 header")
    (
        magic,
        version,
        backing_file_offset,
        backing_file_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = _FIXED.unpack_from(cluster0)
    if magic != MAGIC:
        raise HeaderError("not a qcow2 image (bad magic)")
    if version not in (2, 3):
        raise HeaderError(f"unsupported qcow2 version {version}")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise HeaderError(
            f"cluster_bits {cluster_bits} outside {MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}"
        )
    cluster_size = 1 << cluster_bits
    if version == 2:
        incompatible = compatible = autoclear = 0
        refcount_order = 4
        header_length = HEADER_V2_LENGTH
    else:
        if len(cluster0) < HEADER_V3_LENGTH:
            raise HeaderError("truncated version 3 header")
        incompatible, compatible, autoclear, refcount_order, header_length = _V3.unpack_from(
            cluster0, _FIXED.size
        )
        if header_length < HEADER_V3_LENGTH or header_length % 8 or header_length > cluster_size:
            raise HeaderError(f"invalid header_length {header_length}")
        if refcount_order > 6:
            raise HeaderError(f"refcount_order {refcount_order} exceeds 6")
    if len(cluster0) < header_length:
        raise HeaderError("file ends inside the header")
    unknown = incompatible & ~_KNOWN_INCOMPAT
    if unknown:
        raise HeaderError(f"unknown incompatible feature bits {unknown:#x}")
    if incompatible & INCOMPAT_EXTERNAL_DATA:
        raise HeaderError("images with an external data file are not supported")
    compression_type = COMPRESSION_DEFLATE
    if header_length > HEADER_V3_LENGTH:
        compression_type = cluster0[HEADER_V3_LENGTH]
    if (compression_type != COMPRESSION_DEFLATE) != bool(incompatible & INCOMPAT_COMPRESSION):
        raise HeaderError("compression_type and its incompatible feature bit disagree")
    if compression_type not in (COMPRESSION_DEFLATE, COMPRESSION_ZSTD):
        raise HeaderError(f"unknown compression_type {compression_type}")
    if compression_type == COMPRESSION_ZSTD:
        raise HeaderError("zstd-compressed images are not supported; convert with qemu-img")
    if crypt_method != 0:
        raise HeaderError("encrypted images are not supported")
    if incompatible & INCOMPAT_EXTENDED_L2 and cluster_bits < 14:
        raise HeaderError("extended L2 entries need clusters of at least 16 KiB")

    entry_size = 16 if incompatible & INCOMPAT_EXTENDED_L2 else 8
    l2_entries = cluster_size // entry_size
    if size > (1 << 62):
        raise HeaderError(f"virtual size {size} is absurd")
    needed = required_l1_entries(size, cluster_bits, l2_entries)
    if l1_size < needed:
        raise HeaderError(f"L1 table has {l1_size} entries, size {size} needs {needed}")
    if l1_size * 8 > MAX_L1_BYTES:
        raise HeaderError(f"L1 table of {l1_size} entries is too large")
    if l1_size:
        _check_table("L1 table", l1_table_offset, l1_size * 8, cluster_size, file_size)
    if (
        refcount_table_clusters == 0
        or refcount_table_clusters * cluster_size > MAX_REFCOUNT_TABLE_BYTES
    ):
        raise HeaderError(f"invalid refcount_table_clusters {refcount_table_clusters}")
    _check_table(
        "refcount table",
        refcount_table_offset,
        refcount_table_clusters * cluster_size,
        cluster_size,
        file_size,
    )
    if nb_snapshots:
        _check_table("snapshot table", snapshots_offset, 1, cluster_size, file_size)

    backing_file: str | None = None
    if backing_file_offset:
        if backing_file_size == 0 or backing_file_size > MAX_BACKING_FILE_NAME:
            raise HeaderError(f"backing file name length {backing_file_size} invalid")
        if backing_file_offset + backing_file_size > min(len(cluster0), cluster_size):
            raise HeaderError("backing file name lies outside the first cluster")
        raw_name = cluster0[backing_file_offset : backing_file_offset + backing_file_size]
        try:
            backing_file = raw_name.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HeaderError("backing file name is not valid UTF-8") from exc
        if "\0" in backing_file:
            raise HeaderError("backing file name contains a NUL byte")

    backing_format, unknown_exts = _parse_extensions(
        cluster0,
        header_length if version == 3 else HEADER_V2_LENGTH,
        backing_file_offset or min(len(cluster0), cluster_size),
    )
    return Header(
        version=version,
        cluster_bits=cluster_bits,
        size=size,
        l1_size=l1_size,
        l1_table_offset=l1_table_offset,
        refcount_table_offset=refcount_table_offset,
        refcount_table_clusters=refcount_table_clusters,
        nb_snapshots=nb_snapshots,
        snapshots_offset=snapshots_offset,
        incompatible_features=incompatible,
        compatible_features=compatible,
        autoclear_features=autoclear,
        refcount_order=refcount_order,
        header_length=header_length,
        compression_type=compression_type,
        crypt_method=crypt_method,
        backing_file=backing_file,
        backing_format=backing_format,
        unknown_extensions=unknown_exts,
    )


def _check_table(name: str, offset: int, length: int, cluster_size: int, file_size: int) -> None:
    if offset == 0 or offset % cluster_size:
        raise HeaderError(
            f"{name} offset {offset:#x} is not a non-zero multiple of the cluster size"
        )
    if offset + length > file_size:
        raise HeaderError(f"{name} at {offset:#x} (+{length}) lies past the end of the file")


def _parse_extensions(buf: bytes, start: int, end: int) -> tuple[str | None, tuple[int, ...]]:
    backing_format: str | None = None
    unknown: list[int] = []
    offset = start
    while offset + _EXTENSION.size <= end:
        ext_type, length = _EXTENSION.unpack_from(buf, offset)
        offset += _EXTENSION.size
        if ext_type == EXT_END:
            break
        if offset + length > end:
            raise HeaderError(f"header extension {ext_type:#x} runs past its space")
        data = buf[offset : offset + length]
        if ext_type == EXT_BACKING_FORMAT:
            if length > 15:
                raise HeaderError("backing format name too long")
            backing_format = data.decode("ascii", errors="replace")
        elif ext_type == EXT_EXTERNAL_DATA_FILE:
            raise HeaderError("images with an external data file are not supported")
        elif ext_type == EXT_FULL_DISK_ENCRYPTION:
            raise HeaderError("encrypted images are not supported")
        elif ext_type not in (EXT_FEATURE_TABLE, EXT_BITMAPS):
            unknown.append(ext_type)
        offset += (length + 7) & ~7
    return backing_format, tuple(unknown)


def _extension(ext_type: int, data: bytes) -> bytes:
    padded = data + bytes(-len(data) % 8)
    return _EXTENSION.pack(ext_type, len(data)) + padded


def build_header_cluster(header: Header, *, feature_table: bool) -> bytes:
    """Encode a v3 header, its extensions and the backing file name, as QEMU lays them out.

    Returns the bytes from offset 0 up to the end of the backing file name (or the end extension).
    """
    if header.version != 3:
        raise HeaderError("only version 3 headers are written")
    backing = (header.backing_file or "").encode("utf-8")
    fixed_without_backing = _FIXED.pack(
        MAGIC,
        3,
        0,
        0,
        header.cluster_bits,
        header.size,
        0,
        header.l1_size,
        header.l1_table_offset,
        header.refcount_table_offset,
        header.refcount_table_clusters,
        header.nb_snapshots,
        header.snapshots_offset,
    )
    v3 = _V3.pack(
        header.incompatible_features,
        header.compatible_features,
        header.autoclear_features,
        header.refcount_order,
        HEADER_V3_WRITE_LENGTH,
    )
    tail = bytes([header.compression_type]) + bytes(HEADER_V3_WRITE_LENGTH - HEADER_V3_LENGTH - 1)
    extensions = b""
    if header.backing_format:
        extensions += _extension(EXT_BACKING_FORMAT, header.backing_format.encode("ascii"))
    if feature_table:
        table = b"".join(_FEATURE_ENTRY.pack(kind, bit, name) for kind, bit, name in _FEATURE_NAMES)
        extensions += _extension(EXT_FEATURE_TABLE, table)
    extensions += _EXTENSION.pack(EXT_END, 0)
    body = fixed_without_backing + v3 + tail + extensions
    if backing:
        if len(backing) > MAX_BACKING_FILE_NAME:
            raise HeaderError("backing file name longer than 1023 bytes")
        # backing_file_offset and backing_file_size live at bytes 8-19 of the fixed header.
        body = body[:8] + struct.pack(">QI", len(body), len(backing)) + body[20:] + backing
    if len(body) > header.cluster_size:
        raise HeaderError("header, extensions and backing file name do not fit in one cluster")
    return body
