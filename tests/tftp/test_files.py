"""The jail and the byte sources: what may be served, from where, and how it is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diskless.errors import ConfigError
from diskless.tftp import ClientAddress, ErrorCode, FileCatalog, FileRefused, normalize_name
from diskless.tftp.files import BlockSource, BytesSource, FileSource, NetasciiSource

CLIENT = ("192.0.2.10", 2000)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("undionly.kpxe", "undionly.kpxe"),
        ("/undionly.kpxe", "undionly.kpxe"),
        ("//boot/./grub//x.cfg", "boot/grub/x.cfg"),
        ("\\boot\\bcd", "boot/bcd"),
        ("a/b/", "a/b"),
    ],
)
def test_names_are_normalised(requested: str, expected: str) -> None:
    assert normalize_name(requested) == expected


@pytest.mark.parametrize(
    ("requested", "code"),
    [
        ("../etc/passwd", ErrorCode.ACCESS_VIOLATION),
        ("/../../etc/passwd", ErrorCode.ACCESS_VIOLATION),
        ("a/../../b", ErrorCode.ACCESS_VIOLATION),
        ("..\\..\\windows", ErrorCode.ACCESS_VIOLATION),
        ("a\0b", ErrorCode.ACCESS_VIOLATION),
        ("/", ErrorCode.FILE_NOT_FOUND),
        ("./", ErrorCode.FILE_NOT_FOUND),
    ],
)
def test_names_that_are_refused(requested: str, code: ErrorCode) -> None:
    with pytest.raises(FileRefused) as refused:
        normalize_name(requested)

    assert refused.value.code is code


class _Layout:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "tftp"
        self.ipxe = tmp_path / "ipxe"
        self.outside = tmp_path / "secret"
        self.boot = tmp_path / "boot"
        for folder in (self.root, self.ipxe, self.boot, self.root / "sub"):
            folder.mkdir()
        self.outside.write_bytes(b"secret")
        (self.boot / "ipxe.efi").write_bytes(b"EFI program")
        # Like Debian's ipxe package: ipxe.efi is a symlink into /boot.
        (self.ipxe / "ipxe.efi").symlink_to(self.boot / "ipxe.efi")
        (self.ipxe / "undionly.kpxe").write_bytes(b"BIOS program")
        (self.ipxe / "ipxe.lkrn").write_bytes(b"not configured")
        (self.root / "menu.cfg").write_bytes(b"menu")
        (self.root / "sub" / "inner").write_bytes(b"inner")
        (self.root / "link-inside").symlink_to(self.root / "sub" / "inner")
        (self.root / "link-outside").symlink_to(self.outside)
        (self.root / "dir-outside").symlink_to(self.boot)
        os.mkfifo(self.root / "fifo")

    def catalog(self, virtual: object = None) -> FileCatalog:
        return FileCatalog(
            root=self.root,
            ipxe_dir=self.ipxe,
            loader_names=["undionly.kpxe", "ipxe.efi", None, "absent.efi"],
            virtual=virtual,  # type: ignore[arg-type]
        )


def _read_all(source: BlockSource) -> bytes:
    buffer = bytearray(1 << 16)
    try:
        return bytes(buffer[: source.fill([memoryview(buffer)])])
    finally:
        source.close()


def test_configured_loaders_are_served_through_symlinks(tmp_path: Path) -> None:
    layout = _Layout(tmp_path)
    served = layout.catalog().open("/ipxe.efi", CLIENT)

    assert served.origin == "ipxe"
    assert _read_all(served.source) == b"EFI program"
    assert _read_all(layout.catalog().open("undionly.kpxe", CLIENT).source) == b"BIOS program"


def test_other_files_of_the_ipxe_directory_are_not_served(tmp_path: Path) -> None:
    layout = _Layout(tmp_path)

    with pytest.raises(FileRefused) as refused:
        layout.catalog().open("ipxe.lkrn", CLIENT)

    assert refused.value.code is ErrorCode.FILE_NOT_FOUND


def test_root_files_and_symlinks_that_stay_inside(tmp_path: Path) -> None:
    layout = _Layout(tmp_path)
    catalog = layout.catalog()

    assert _read_all(catalog.open("menu.cfg", CLIENT).source) == b"menu"
    assert _read_all(catalog.open("\\sub\\inner", CLIENT).source) == b"inner"
    assert _read_all(catalog.open("link-inside", CLIENT).source) == b"inner"


@pytest.mark.parametrize(
    ("requested", "code"),
    [
        ("link-outside", ErrorCode.ACCESS_VIOLATION),
        ("dir-outside/ipxe.efi", ErrorCode.ACCESS_VIOLATION),
        ("../secret", ErrorCode.ACCESS_VIOLATION),
        ("sub", ErrorCode.FILE_NOT_FOUND),
        ("fifo", ErrorCode.FILE_NOT_FOUND),
        ("missing", ErrorCode.FILE_NOT_FOUND),
        ("menu.cfg/x", ErrorCode.FILE_NOT_FOUND),
        ("absent.efi", ErrorCode.FILE_NOT_FOUND),
    ],
)
def test_what_the_root_refuses(tmp_path: Path, requested: str, code: ErrorCode) -> None:
    layout = _Layout(tmp_path)

    with pytest.raises(FileRefused) as refused:
        layout.catalog().open(requested, CLIENT)

    assert refused.value.code is code


def test_a_loader_name_that_climbs_out_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be served"):
        FileCatalog(root=tmp_path, ipxe_dir=tmp_path, loader_names=["../ipxe.efi"])


def test_a_missing_root_serves_only_the_loaders(tmp_path: Path) -> None:
    layout = _Layout(tmp_path)
    catalog = FileCatalog(
        root=tmp_path / "nowhere", ipxe_dir=layout.ipxe, loader_names=["undionly.kpxe"]
    )

    assert _read_all(catalog.open("undionly.kpxe", CLIENT).source) == b"BIOS program"
    with pytest.raises(FileRefused):
        catalog.open("menu.cfg", CLIENT)


class _PerClient:
    def __init__(self) -> None:
        self.asked: list[tuple[str, ClientAddress]] = []

    def lookup(self, name: str, client: ClientAddress) -> bytes | None:
        self.asked.append((name, client))
        return f"#!ipxe for {client[0]}\n".encode() if name == "boot.ipxe" else None


def test_virtual_files_come_first_and_see_the_normalised_name(tmp_path: Path) -> None:
    layout = _Layout(tmp_path)
    virtual = _PerClient()
    catalog = layout.catalog(virtual)

    served = catalog.open("/boot.ipxe", CLIENT)

    assert served.origin == "virtual"
    assert _read_all(served.source) == b"#!ipxe for 192.0.2.10\n"
    assert _read_all(catalog.open("menu.cfg", CLIENT).source) == b"menu"
    assert virtual.asked == [("boot.ipxe", CLIENT), ("menu.cfg", CLIENT)]


# -- sources ----------------------------------------------------------------------------------


def _fill_in_blocks(source: BlockSource, block: int, per_fill: int) -> list[bytes]:
    """Read ``source`` as a transfer does: ``per_fill`` blocks per call, until a short block."""
    blocks: list[bytes] = []
    while True:
        buffers = [bytearray(block) for _ in range(per_fill)]
        total = source.fill([memoryview(b) for b in buffers])
        for buffer in buffers:
            take = min(total, block)
            blocks.append(bytes(buffer[:take]))
            total -= take
            if take < block:
                return blocks


def test_file_source_fills_several_blocks_per_read(tmp_path: Path) -> None:
    path = tmp_path / "data"
    data = os.urandom(10_000)
    path.write_bytes(data)
    source = FileSource(os.open(path, os.O_RDONLY), len(data))

    blocks = _fill_in_blocks(source, 1468, 4)
    source.close()

    assert b"".join(blocks) == data
    assert [len(b) for b in blocks] == [1468] * 6 + [10_000 - 6 * 1468]


def test_bytes_source_ends_with_an_empty_block_on_a_whole_block() -> None:
    blocks = _fill_in_blocks(BytesSource(b"x" * 1024), 512, 3)

    assert blocks == [b"x" * 512, b"x" * 512, b""]


@pytest.mark.parametrize("block", [1, 7, 512])
def test_netascii_conversion_across_chunks_and_blocks(block: int) -> None:
    # Long enough to span several of the converter's raw chunks, with CR and LF at the edges.
    raw = (b"line one\nCR alone\rcrlf\r\n" * 2000) + b"\r"

    blocks = _fill_in_blocks(NetasciiSource(BytesSource(raw)), block, 3)

    expected = raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
    assert b"".join(blocks) == expected
    assert expected.count(b"\r\n") == 4000
    assert expected.endswith(b"\r\0")
