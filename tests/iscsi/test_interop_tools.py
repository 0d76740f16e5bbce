"""``diskless export`` against initiators nobody here wrote: libiscsi's utilities and QEMU.

* libiscsi 1.19 (``iscsi-ls``, ``iscsi-inq``, ``iscsi-readcapacity16``): discovery lists exactly our
  target, INQUIRY and the VPD pages parse, the capacity is right.
* QEMU 7.2's iSCSI block driver (``qemu-img``, ``qemu-io``): info, writes and reads, CRC32C header
  digests, and the golden scenario: a qcow2 overlay (64 KiB clusters, and 128 KiB clusters with
  extended L2) over a raw golden image, written through the target with aligned and unaligned
  writes, write-zeroes and discards, must end up byte-identical to the same operations applied by
  qemu-io to a local copy, pass ``qemu-img check``, and leave the golden image untouched.
* Session sharing (the iPXE → OS hand-off): two sessions of one initiator name, different ISIDs,
  see the same disk.

Every process gets a timeout; everything listens on 127.0.0.1 on ports picked at run time.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from libiscsi_support import (
    ISCSI_INQ,
    ISCSI_LS,
    ISCSI_READCAPACITY16,
    QEMU_IMG,
    QEMU_IO,
    ExportServer,
    QemuIo,
    export_server,
    run_tool,
    run_tool_ok,
    tool_env,
)

from diskless.storage.qcow2 import create_qcow2

pytestmark = pytest.mark.skipif(
    not (ISCSI_INQ and ISCSI_LS and ISCSI_READCAPACITY16 and QEMU_IMG and QEMU_IO),
    reason="needs libiscsi-bin (iscsi-ls, iscsi-inq, iscsi-readcapacity16) and qemu-utils",
)

KiB = 1024
MiB = 1024 * KiB
DISK_SIZE = 8 * MiB
BLOCK = 512
TARGET = "iqn.2026-11.org.diskless.test:interop"
SHARED_INITIATOR = "iqn.2026-11.org.diskless.test:ipxe-then-os"


@pytest.fixture(scope="module")
def raw_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("interop") / "disk.raw"
    path.write_bytes(random.Random(7).randbytes(DISK_SIZE))
    return path


@pytest.fixture(scope="module")
def server(raw_disk: Path) -> Iterator[ExportServer]:
    with export_server(raw_disk, target_name=TARGET) as running:
        yield running


@pytest.fixture(autouse=True)
def _server_stays_healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").assert_healthy()


# -- libiscsi utilities ---------------------------------------------------------------------------


def iscsi_ls_size(size: int, block: int = BLOCK) -> str:
    """The ``(Size:...)`` iscsi-ls prints: it multiplies READ CAPACITY(10)'s *last* LBA (not the
    block count) by the block length, then divides by 1024 while above 1024 (utils/iscsi-ls.c)."""
    value = (size // block - 1) * block
    prefix = 0
    while prefix < 4 and value > 1024:
        value //= 1024
        prefix += 1
    return f"{value}{' kMGT'[prefix]}"


def test_iscsi_ls_lists_exactly_our_target(server: ExportServer) -> None:
    out = run_tool_ok([ISCSI_LS, "-s", server.portal_url])
    targets = re.findall(r"^Target:(\S+) Portal:(\S+)$", out, re.MULTILINE)
    assert targets == [(TARGET, f"{server.portal},1")], out
    luns = re.findall(r"^Lun:(\d+)\s+Type:(\S+) \(Size:(\S+)\)$", out, re.MULTILINE)
    assert luns == [("0", "DIRECT_ACCESS", iscsi_ls_size(DISK_SIZE))], out


def test_iscsi_ls_url_format(server: ExportServer) -> None:
    out = run_tool_ok([ISCSI_LS, "--url", server.portal_url])
    assert out.split() == [f"iscsi://{server.portal}/{TARGET}/0"]


def parse_fields(out: str) -> dict[str, str]:
    """``Key:value`` lines of libiscsi's tools (first occurrence wins)."""
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def test_iscsi_inq_standard(server: ExportServer) -> None:
    out = run_tool_ok([ISCSI_INQ, server.url()])
    fields = parse_fields(out)
    assert fields["Peripheral Qualifier"] == "CONNECTED"
    assert fields["Peripheral Device Type"] == "DIRECT_ACCESS"
    assert fields["Removable"] == "0"
    assert fields["ReponseDataFormat"] == "2"  # sic: libiscsi's spelling
    assert fields["Vendor"]
    assert fields["Product"]
    assert fields["Revision"]
    descriptors = re.findall(r"^Version Descriptor:(\w+)", out, re.MULTILINE)
    assert "0960" in descriptors, out  # iSCSI
    assert "04c0" in descriptors, out  # SBC-3: libiscsi's tests key SBC-3 features on it


def inq_page(server: ExportServer, page: int) -> str:
    # iscsi-inq parses --pagecode with popt as a decimal int: "0x80" silently becomes 0 (the
    # supported-pages list), so page codes must be passed in decimal.
    return run_tool_ok([ISCSI_INQ, "-e", "1", "-c", str(page), server.url()])


def test_iscsi_inq_supported_pages(server: ExportServer) -> None:
    pages = re.findall(r"^Page:0x([0-9a-f]{2}) ", inq_page(server, 0x00), re.MULTILINE)
    assert {"00", "80", "83", "b0"} <= set(pages), pages
    assert pages == sorted(pages), "SPC-4 §7.8.13: supported VPD pages in ascending order"


def test_iscsi_inq_unit_serial_number(server: ExportServer) -> None:
    first = re.search(r"^Unit Serial Number:\[(.+)\]$", inq_page(server, 0x80), re.MULTILINE)
    assert first is not None
    assert first.group(1).strip()
    again = re.search(r"^Unit Serial Number:\[(.+)\]$", inq_page(server, 0x80), re.MULTILINE)
    assert again is not None
    assert again.group(1) == first.group(1), "the serial number must be stable"


def test_iscsi_inq_device_identification(server: ExportServer) -> None:
    out = inq_page(server, 0x83)
    assert "Page Code:(0x83) DEVICE_IDENTIFICATION" in out
    # iscsi-inq prints the binary NAA designator raw, so its value may hold any byte, a newline
    # included: read the designator types line by line, and only the text designator's value.
    kinds = set(re.findall(r"^Designator Type:\(\d+\) (\w+)$", out, re.MULTILINE))
    assert {"SCSI_NAME_STRING", "NAA"} <= kinds, out
    names = re.findall(r"Designator Type:\(8\) SCSI_NAME_STRING\nDesignator:\[([^\]\n]*)\]", out)
    assert names == [TARGET], out


def test_iscsi_inq_block_limits(server: ExportServer) -> None:
    out = inq_page(server, 0xB0)
    fields = {key: int(value) for key, value in parse_fields(out).items() if value.isdigit()}
    assert fields["maximum transfer length"] > 0, out
    assert fields["optimal transfer length granularity"] > 0, out
    assert fields["maximum unmap lba count"] > 0, out
    assert fields["maximum unmap block descriptor count"] > 0, out


def test_iscsi_readcapacity16(server: ExportServer) -> None:
    fields = parse_fields(run_tool_ok([ISCSI_READCAPACITY16, server.url()]))
    assert int(fields["RETURNED LOGICAL BLOCK ADDRESS"]) == DISK_SIZE // BLOCK - 1
    assert int(fields["LOGICAL BLOCK LENGTH IN BYTES"]) == BLOCK
    assert int(fields["Total size"]) == DISK_SIZE
    size_only = run_tool_ok([ISCSI_READCAPACITY16, "-s", server.url()])
    assert int(size_only) == DISK_SIZE


# -- QEMU's iSCSI driver --------------------------------------------------------------------------


def test_qemu_img_info(server: ExportServer) -> None:
    info = json.loads(run_tool_ok([QEMU_IMG, "info", "--output=json", server.url()]))
    assert info["virtual-size"] == DISK_SIZE
    assert info["format"] == "raw"


def test_qemu_io_write_then_read(server: ExportServer) -> None:
    out = run_tool_ok(
        [
            QEMU_IO,
            "-f",
            "raw",
            "-c",
            "write -P 0xab 1M 4M",
            "-c",
            "read -P 0xab 1M 4M",
            "-c",
            "read -P 0xab 1M 512",
            "-c",
            "read -P 0xab 5119k 1k",
            server.url(),
        ]
    )
    assert "Pattern verification failed" not in out
    assert out.count("read ") == 3, out


def test_qemu_io_with_crc32c_header_digest(server: ExportServer) -> None:
    """qemu offers ``HeaderDigest=CRC32C`` alone; the target must take it and check digests."""
    done = run_tool(
        [
            QEMU_IO,
            "--image-opts",
            server.image_opts(**{"header-digest": "crc32c"}),
            "-c",
            "write -P 0x3c 64k 1M",
            "-c",
            "read -P 0x3c 64k 1M",
        ],
        env=tool_env(LIBISCSI_DEBUG="6"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TargetLoginReply: HeaderDigest=CRC32C" in done.stderr, done.stderr
    assert "Pattern verification failed" not in done.stdout
    assert done.stdout.count("read 1048576/1048576") == 1, done.stdout


def test_qemu_block_status_without_errors(server: ExportServer) -> None:
    """READ CAPACITY(16) says LBPME=1, so qemu asks GET LBA STATUS for every block-status query
    (qemu-img map/convert, qemu-io reads); a target that refuses it makes qemu log
    ``iSCSI GET_LBA_STATUS failed`` each time and treat every range as allocated."""
    done = run_tool([QEMU_IMG, "map", "-f", "raw", "--output=json", server.url()])
    assert done.returncode == 0, done.stderr
    assert "GET_LBA_STATUS failed" not in done.stderr, done.stderr


def test_read_only_export(tmp_path: Path) -> None:
    """qemu sees the MODE SENSE write-protect bit and refuses to open read-write; a read-only
    open reads; the file is never written."""
    path = tmp_path / "ro.raw"
    path.write_bytes(random.Random(5).randbytes(2 * MiB))
    digest = sha256(path)
    with export_server(path, target_name=TARGET, read_only=True) as running:
        done = run_tool([QEMU_IO, "-f", "raw", "-c", "write -P 1 0 64k", running.url()])
        assert done.returncode != 0, done.stdout
        assert "write protected" in done.stderr, done.stderr
        out = run_tool_ok([QEMU_IO, "-f", "raw", "-r", "-c", "read 0 2M", running.url()])
        assert "read 2097152/2097152" in out, out
        running.assert_healthy()
    assert sha256(path) == digest


# -- the golden scenario: qcow2 overlay over a raw golden, written through the target --------------

GOLDEN_SIZE = 6 * MiB + 24 * KiB  # the last cluster of every layout is partial


@dataclass(frozen=True)
class Op:
    kind: str  # "write", "zero", "zero-unmap", "discard"
    offset: int
    length: int
    pattern: int = 0

    def qemu(self) -> str:
        command = {
            "write": f"write -P {self.pattern:#x}",
            "zero": "write -z",
            "zero-unmap": "write -z -u",
            "discard": "discard",
        }[self.kind]
        return f"{command} {self.offset} {self.length}"

    def apply(self, model: bytearray) -> None:
        # UNMAP and WRITE SAME with UNMAP read back as zeros: the target reports LBPRZ=1.
        model[self.offset : self.offset + self.length] = bytes([self.pattern]) * self.length


OPS = [
    Op("write", 0, 64 * KiB, 0x11),  # one whole 64 KiB cluster
    Op("write", 100 * KiB, 10 * KiB, 0x22),  # inside a cluster
    Op("write", 60 * KiB, 140 * KiB, 0x33),  # across cluster boundaries, unaligned both ends
    Op("write", 1 * MiB + 100, 1000, 0x44),  # not even sector-aligned: qemu read-modify-writes
    Op("write", 2 * MiB - 4 * KiB, 200 * KiB + 512, 0x55),  # across a 128 KiB boundary
    Op("zero", 3 * MiB, 256 * KiB),  # WRITE SAME, cluster-aligned
    Op("zero", 3 * MiB + 300 * KiB, 70 * KiB),  # WRITE SAME, cluster-unaligned
    Op("zero-unmap", 4 * MiB, 128 * KiB),  # WRITE SAME with UNMAP
    Op("write", 4 * MiB + 64 * KiB, 8 * KiB, 0x77),  # back into the unmapped range
    Op("discard", 5 * MiB, 128 * KiB),  # UNMAP, aligned
    Op("discard", 5 * MiB + 192 * KiB + 512, 33 * KiB),  # UNMAP, cluster-unaligned
    Op("write", 6 * MiB, 24 * KiB, 0x66),  # the partial last cluster
    Op("write", 5 * MiB + 200 * KiB, 4 * KiB, 0x88),  # inside the discarded range
    Op("write", 0, 4 * KiB, 0x99),  # rewrite a written cluster
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_io_args(ops: list[Op]) -> list[str]:
    args: list[str] = []
    for op in ops:
        args += ["-c", op.qemu()]
    return args


def assert_no_io_errors(out: str) -> None:
    assert "Pattern verification failed" not in out, out
    assert " failed: " not in out, out


@pytest.mark.parametrize(
    ("cluster_size", "extended_l2"),
    [(64 * KiB, False), (128 * KiB, True)],
    ids=["64k-clusters", "128k-extended-l2"],
)
def test_golden_overlay_through_the_target(
    tmp_path: Path, cluster_size: int, extended_l2: bool
) -> None:
    golden = tmp_path / "golden.raw"
    golden_bytes = random.Random(cluster_size).randbytes(GOLDEN_SIZE)
    golden.write_bytes(golden_bytes)
    golden_digest = sha256(golden)
    overlay = tmp_path / "overlay.qcow2"
    create_qcow2(
        overlay,
        backing=golden.name,
        backing_format="raw",
        cluster_size=cluster_size,
        extended_l2=extended_l2,
    )

    # The reference: the same operations applied by qemu-io to a local copy of the golden image,
    # cross-checked with an in-memory model.
    reference = tmp_path / "reference.raw"
    shutil.copyfile(golden, reference)
    assert_no_io_errors(run_tool_ok([QEMU_IO, "-f", "raw", *qemu_io_args(OPS), str(reference)]))
    model = bytearray(golden_bytes)
    for op in OPS:
        op.apply(model)
    assert reference.read_bytes() == model, "qemu-io and the model disagree on the expected disk"

    via_iscsi = tmp_path / "via-iscsi.raw"
    with export_server(overlay, target_name=TARGET) as running:
        url = running.url()
        out = run_tool_ok([QEMU_IO, "-f", "raw", *qemu_io_args(OPS), url])
        assert_no_io_errors(out)
        # Read back online, in a new session: every written range holds its pattern.
        checks = [
            f"read -P {op.pattern:#x} {op.offset} {op.length}"
            for op in OPS[-3:]
            if op.kind == "write"
        ]
        checks += ["read -P 0 3M 256k", "read -P 0 5M 64k"]
        out = run_tool_ok([QEMU_IO, "-f", "raw", *[a for c in checks for a in ("-c", c)], url])
        assert_no_io_errors(out)
        run_tool_ok([QEMU_IMG, "convert", "-f", "raw", "-O", "raw", url, via_iscsi])
        running.assert_healthy()

    check = run_tool([QEMU_IMG, "check", "-f", "qcow2", overlay])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout, check.stdout
    compare = run_tool([QEMU_IMG, "compare", "-f", "qcow2", "-F", "raw", overlay, reference])
    assert compare.returncode == 0, compare.stdout + compare.stderr
    local = tmp_path / "local.raw"
    run_tool_ok([QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", overlay, local])
    assert local.read_bytes() == model
    assert via_iscsi.read_bytes() == model
    assert sha256(golden) == golden_digest, "the golden image was written to"


# -- session sharing: iPXE's session and the OS's session of one initiator -------------------------


def test_two_sessions_of_one_initiator_share_the_disk(server: ExportServer) -> None:
    opts = server.image_opts(**{"initiator-name": SHARED_INITIATOR})
    with QemuIo(["--image-opts", opts]) as first, QemuIo(["--image-opts", opts]) as second:
        first.check("write -P 0x61 6M 128k")
        second.check("read -P 0x61 6M 128k")
        second.check("write -P 0x62 7M 64k")
        first.check("read -P 0x62 7M 64k")
        # A third, short-lived session of the same initiator (libiscsi picks a random ISID) while
        # both stay logged in.
        run_tool_ok([ISCSI_INQ, "-i", SHARED_INITIATOR, server.url()])
        first.check("write -P 0x63 6M 4k")
        second.check("read -P 0x63 6M 4k")
        second.check("read -P 0x61 6148k 124k")
    logins = re.findall(
        rf"iSCSI login: initiator={re.escape(SHARED_INITIATOR)} target=\S+ isid=(\w+)",
        server.log(),
    )
    assert len(logins) == 3, server.log()
    assert len(set(logins)) == 3, f"expected three different ISIDs, got {logins}"
