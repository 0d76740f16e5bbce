"""Our TFTP server against clients we did not write: curl, atftp and tftp-hpa, plus raw UDP.

The server runs in a thread of the test process on 127.0.0.1 (see ``tftp_support``); every file is
compared by SHA-256. The raw-UDP tests play the clients real networks have: one that resends its
request, one that refuses our options and asks again, one that stops ACKing, a stranger writing
to a transfer's port.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tftp_support import RawClient, Running, tftp_in_thread

from diskless.boot.events import BootStage, BootTimeline
from diskless.config import BootSettings, TftpSettings
from diskless.errors import ConfigError
from diskless.tftp import (
    Data,
    ErrorCode,
    ErrorPacket,
    Mode,
    Opcode,
    OptionAck,
    TftpService,
    encode_ack,
    encode_error,
    encode_request,
    endpoint,
    parse_packet,
)

CURL = shutil.which("curl")
ATFTP = shutil.which("atftp")
TFTP_HPA = shutil.which("tftp")
IPXE_DIR = Path("/usr/lib/ipxe")
KiB = 1024
MiB = 1024 * KiB
SIZES = {"f70k": 70 * KiB, "f1m": MiB, "f40m": 40 * MiB}
_TOOL_TIMEOUT = 60

needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
needs_atftp = pytest.mark.skipif(ATFTP is None, reason="atftp is not installed")
needs_tftp_hpa = pytest.mark.skipif(TFTP_HPA is None, reason="tftp-hpa is not installed")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tftp-root")
    for name, size in SIZES.items():
        with open(folder / name, "wb") as out:
            for _ in range(0, size, MiB):
                out.write(os.urandom(min(MiB, size)))
    (folder / "boot").mkdir()
    (folder / "boot" / "menu.txt").write_bytes(b"line one\nline two\r\nbare CR\r end\n" * 300)
    (folder / "escape").symlink_to("/etc/passwd")
    return folder


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Running]:
    with tftp_in_thread(root) as running:
        yield running


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False
    )


def _curl(port: int, name: str, out: Path, block_size: int | None = None) -> list[str]:
    assert CURL is not None
    command = [CURL, "-sS", f"tftp://127.0.0.1:{port}/{name}", "-o", str(out)]
    return command + (["--tftp-blksize", str(block_size)] if block_size else [])


# -- whole files, three clients ---------------------------------------------------------------


@needs_curl
@pytest.mark.parametrize(
    ("name", "block_size"),
    [("f70k", None), ("f70k", 1468), ("f1m", 512), ("f1m", 1468), ("f1m", 8192)],
)
def test_curl_downloads(
    server: Running, root: Path, tmp_path: Path, name: str, block_size: int | None
) -> None:
    out = tmp_path / "out"

    result = _run(_curl(server.port, name, out, block_size))

    assert result.returncode == 0, result.stderr
    assert _sha(out) == _sha(root / name)


@needs_curl
@pytest.mark.slow
def test_curl_rolls_block_numbers_over_past_65535(
    server: Running, root: Path, tmp_path: Path
) -> None:
    # 40 MiB in 512-byte blocks is 81,920 blocks: the block number wraps to 0 once.
    out = tmp_path / "out"

    result = _run(_curl(server.port, "f40m", out, 512))

    assert result.returncode == 0, result.stderr
    assert _sha(out) == _sha(root / "f40m")


@needs_atftp
@pytest.mark.parametrize("name", ["f70k", "f1m"])
@pytest.mark.parametrize("window", [None, 8])
def test_atftp_downloads(
    server: Running, root: Path, tmp_path: Path, name: str, window: int | None
) -> None:
    assert ATFTP is not None
    out = tmp_path / "out"
    options = ["--option", "blksize 1468"]
    if window is not None:
        options += ["--option", f"windowsize {window}"]

    result = _run(
        [ATFTP, "--get", "-r", name, "-l", str(out), *options, "127.0.0.1", str(server.port)]
    )

    assert result.returncode == 0, result.stderr
    assert _sha(out) == _sha(root / name)


@needs_tftp_hpa
@pytest.mark.parametrize("name", ["f70k", "f1m"])
def test_tftp_hpa_downloads(server: Running, root: Path, tmp_path: Path, name: str) -> None:
    assert TFTP_HPA is not None
    out = tmp_path / "out"

    result = _run(
        [TFTP_HPA, "127.0.0.1", str(server.port), "-m", "binary", "-c", "get", name, str(out)]
    )

    assert result.returncode == 0, result.stderr
    assert _sha(out) == _sha(root / name)


@needs_tftp_hpa
def test_tftp_hpa_netascii_round_trips_line_endings(
    server: Running, root: Path, tmp_path: Path
) -> None:
    # tftp-hpa's ascii mode turns CR LF back into LF and CR NUL into CR on arrival, so the text
    # arrives as it was only if we converted it exactly.
    assert TFTP_HPA is not None
    out = tmp_path / "menu.txt"

    result = _run(
        [
            TFTP_HPA,
            "127.0.0.1",
            str(server.port),
            "-m",
            "ascii",
            "-c",
            "get",
            "boot/menu.txt",
            str(out),
        ]
    )

    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (root / "boot" / "menu.txt").read_bytes()


@needs_curl
@pytest.mark.parametrize("loader", ["undionly.kpxe", "ipxe.efi"])
def test_ipxe_programs_are_served_by_bare_name(
    server: Running, tmp_path: Path, loader: str
) -> None:
    # Debian's ipxe.efi is a symlink into /boot: served because the operator configured it.
    out = tmp_path / loader

    result = _run(_curl(server.port, loader, out, 1468))

    assert result.returncode == 0, result.stderr
    assert _sha(out) == _sha(IPXE_DIR / loader)


@needs_curl
def test_32_concurrent_curl_clients(server: Running, root: Path, tmp_path: Path) -> None:
    outs = [tmp_path / f"out{i}" for i in range(32)]
    clients = [
        subprocess.Popen(_curl(server.port, "f1m", out, 1468), stderr=subprocess.PIPE)
        for out in outs
    ]
    codes = [client.wait(_TOOL_TIMEOUT) for client in clients]
    for client in clients:
        assert client.stderr is not None
        client.stderr.close()

    assert codes == [0] * 32
    assert {_sha(out) for out in outs} == {_sha(root / "f1m")}
    assert server.wait_for(lambda service: service.active_transfers == 0, 5)


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../../../../etc/passwd", ErrorCode.ACCESS_VIOLATION),
        ("..\\..\\..\\etc\\passwd", ErrorCode.ACCESS_VIOLATION),
        ("boot/../../f1m", ErrorCode.ACCESS_VIOLATION),
        ("escape", ErrorCode.ACCESS_VIOLATION),
        ("/etc/passwd", ErrorCode.FILE_NOT_FOUND),  # "/" stripped: etc/passwd in the root
        ("missing.efi", ErrorCode.FILE_NOT_FOUND),
        ("boot", ErrorCode.FILE_NOT_FOUND),
    ],
)
def test_traversal_and_missing_files_are_refused(
    server: Running, name: str, code: ErrorCode
) -> None:
    with RawClient(server.port) as client:
        client.send(encode_request(Opcode.READ_REQUEST, name, Mode.OCTET))
        reply, _ = client.receive()

    packet = parse_packet(reply)
    assert isinstance(packet, ErrorPacket)
    assert packet.code == code


@needs_tftp_hpa
def test_tftp_hpa_cannot_climb_out(server: Running, tmp_path: Path) -> None:
    assert TFTP_HPA is not None
    out = tmp_path / "passwd"

    result = _run(
        [
            TFTP_HPA,
            "127.0.0.1",
            str(server.port),
            "-c",
            "get",
            "../../../../../etc/passwd",
            str(out),
        ]
    )

    assert "access violation" in (result.stdout + result.stderr).lower()
    assert not out.exists() or out.read_bytes() == b""


def test_write_requests_are_refused(server: Running) -> None:
    with RawClient(server.port) as client:
        client.send(encode_request(Opcode.WRITE_REQUEST, "upload", Mode.OCTET))
        reply, _ = client.receive()

    assert parse_packet(reply) == ErrorPacket(ErrorCode.ACCESS_VIOLATION, "read-only server")


@needs_tftp_hpa
def test_tftp_hpa_put_is_refused(server: Running, root: Path, tmp_path: Path) -> None:
    assert TFTP_HPA is not None
    local = tmp_path / "upload"
    local.write_bytes(b"data")

    result = _run([TFTP_HPA, "127.0.0.1", str(server.port), "-c", "put", str(local), "upload"])

    assert "read-only server" in result.stdout + result.stderr
    assert not (root / "upload").exists()


def test_garbage_is_dropped_and_counted(server: Running, root: Path) -> None:
    before = server.on_loop(lambda: server.service.stats.packets_malformed)
    with RawClient(server.port) as client:
        for junk in (
            b"",
            b"\x00",
            b"\xff" * 30,
            b"\x00\x01no-terminator",
            b"\x00\x01" + b"a" * 2000,
        ):
            client.send(junk)
        # Still serving: a good request right after the junk is answered.
        client.send(encode_request(Opcode.READ_REQUEST, "f70k", Mode.OCTET))
        reply, tid = client.receive()
        client.send(encode_error(ErrorCode.NOT_DEFINED, "enough"), tid)

    assert parse_packet(reply) == Data(1, (root / "f70k").read_bytes()[:512])
    after = server.on_loop(lambda: server.service.stats.packets_malformed)
    assert after - before == 5


# -- misbehaving clients, by hand -------------------------------------------------------------


def test_a_stranger_gets_error_5_and_the_transfer_goes_on(server: Running, root: Path) -> None:
    data = (root / "f70k").read_bytes()
    with RawClient(server.port) as client, RawClient(server.port) as stranger:
        client.send(encode_request(Opcode.READ_REQUEST, "f70k", Mode.OCTET))
        first, tid = client.receive()
        assert parse_packet(first) == Data(1, data[:512])

        stranger.send(encode_ack(1), tid)
        reply, source = stranger.receive()
        assert source == tid
        assert isinstance(packet := parse_packet(reply), ErrorPacket)
        assert packet.code == ErrorCode.UNKNOWN_TRANSFER_ID

        client.send(encode_ack(1), tid)
        second, _ = client.receive()
        assert parse_packet(second) == Data(2, data[512:1024])
        client.send(encode_error(ErrorCode.NOT_DEFINED, "enough"), tid)


def test_a_repeated_request_gets_one_oack(server: Running) -> None:
    request = encode_request(Opcode.READ_REQUEST, "f70k", Mode.OCTET, {"blksize": "1468"})
    with RawClient(server.port) as client:
        client.send(request)
        client.send(request)
        first, tid = client.receive()
        assert parse_packet(first) == OptionAck({"blksize": "1468"})
        with pytest.raises(socket.timeout):
            client.receive(timeout=0.4)  # the server's own resend is 1 s away
        client.send(encode_error(ErrorCode.NOT_DEFINED, "enough"), tid)


def test_a_client_that_refuses_the_oack_and_asks_again_without_options(
    server: Running, root: Path
) -> None:
    # What PXE ROMs do when they dislike an OACK (fbtftp#51): ERROR to the transfer's port, then
    # a fresh request from the same port. Nothing but DATA may come back: no ERROR, no 2nd OACK.
    data = (root / "f70k").read_bytes()
    with RawClient(server.port) as client:
        client.send(encode_request(Opcode.READ_REQUEST, "f70k", Mode.OCTET, {"tsize": "0"}))
        oack, tid = client.receive()
        assert parse_packet(oack) == OptionAck({"tsize": str(len(data))})
        client.send(encode_error(ErrorCode.OPTION_REFUSED, "no options please"), tid)
        client.send(encode_request(Opcode.READ_REQUEST, "f70k", Mode.OCTET))

        received = bytearray()
        block = 1
        while True:
            datagram, new_tid = client.receive()
            assert new_tid != tid
            packet = parse_packet(datagram)
            assert isinstance(packet, Data), packet
            assert packet.block == block
            received += packet.payload
            client.send(encode_ack(block), new_tid)
            if len(packet.payload) < 512:
                break
            block += 1

    assert bytes(received) == data


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_client_that_stops_acking_is_timed_out_and_cleaned_up(root: Path) -> None:
    with tftp_in_thread(root, retries=1) as running, RawClient(running.port) as client:
        fds_idle = _open_fds()
        client.send(encode_request(Opcode.READ_REQUEST, "f1m", Mode.OCTET, {"timeout": "1"}))
        oack, _ = client.receive()
        assert parse_packet(oack) == OptionAck({"timeout": "1"})
        assert running.on_loop(lambda: running.service.active_transfers) == 1
        assert _open_fds() == fds_idle + 3  # the transfer's two sockets and its file

        # Timeout 1 s, one resend after 1 s, given up 2 s later: 3 s, never ACKed.
        assert running.wait_for(lambda service: service.active_transfers == 0, 6)

        stats = running.on_loop(lambda: running.service.stats)
        assert stats.transfers_timed_out == 1
        assert _open_fds() == fds_idle
        # The one resend arrived, and nothing else (no ERROR after the OACK).
        again, _ = client.receive(timeout=0.1)
        assert again == oack
        with pytest.raises(socket.timeout):
            client.receive(timeout=0.1)


def _tftp_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "tftp"]


def test_stopping_the_service_stops_its_thread_and_closes_every_transfer(root: Path) -> None:
    fds_before = _open_fds()
    threads_before = _tftp_threads()
    with tftp_in_thread(root) as running, RawClient(running.port) as client:
        client.send(encode_request(Opcode.READ_REQUEST, "f1m", Mode.OCTET, {"blksize": "1468"}))
        client.receive()  # the OACK: the transfer holds its sockets and file, never acknowledged
        assert running.on_loop(lambda: running.service.active_transfers) == 1
        assert len(_tftp_threads()) == len(threads_before) + 1
        service = running.service

    # The client's socket is closed too: everything the test opened is gone again.
    assert _open_fds() == fds_before
    assert _tftp_threads() == threads_before
    assert service.active_transfers == 0
    assert service.stats.transfers_failed == 1  # "server stopping"
    assert service.address is None


def test_a_dead_thread_fails_the_service_instead_of_hanging(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: TftpService) -> None:
        raise RuntimeError("broken loop")

    monkeypatch.setattr(TftpService, "_serve_until_stopped", broken)
    settings = TftpSettings(host="127.0.0.1").model_copy(update={"port": 0})
    service = TftpService(settings, BootSettings(ipxe_dir=IPXE_DIR), root)

    async def run() -> None:
        await asyncio.wait_for(service.run(), 5)

    with pytest.raises(RuntimeError, match="broken loop"):
        asyncio.run(run())
    assert service.address is None


def test_too_many_transfers_are_refused_with_busy(root: Path) -> None:
    with (
        tftp_in_thread(root, max_transfers=1) as running,
        RawClient(running.port) as first,
        RawClient(running.port) as second,
    ):
        first.send(encode_request(Opcode.READ_REQUEST, "f70k", Mode.OCTET))
        first.receive()
        second.send(encode_request(Opcode.READ_REQUEST, "f70k", Mode.OCTET))
        reply, _ = second.receive()

        packet = parse_packet(reply)
        assert isinstance(packet, ErrorPacket)
        assert packet.code == ErrorCode.NOT_DEFINED
        assert "busy" in packet.message
        # Closing the service ends the transfer left open by the first client.


@needs_curl
def test_a_finished_transfer_lands_in_the_boot_timeline(root: Path, tmp_path: Path) -> None:
    mac = bytes.fromhex("525400123456")
    timeline = BootTimeline()
    out = tmp_path / "out"

    class PerClientScript:
        def lookup(self, name: str, client: tuple[str, int]) -> bytes | None:
            return f"#!ipxe\necho hello {client[0]}\n".encode() if name == "boot.ipxe" else None

    with tftp_in_thread(
        root,
        timeline=timeline,
        virtual=PerClientScript(),
        mac_for_address=lambda address: mac if address == "127.0.0.1" else None,
    ) as running:
        result = _run(_curl(running.port, "boot.ipxe", out))
        assert result.returncode == 0, result.stderr
        assert running.wait_for(lambda service: service.stats.transfers_completed == 1, 5)
        events = running.on_loop(lambda: timeline.events(mac))

    assert out.read_bytes() == b"#!ipxe\necho hello 127.0.0.1\n"
    assert [(event.stage, event.detail) for event in events] == [(BootStage.TFTP_SENT, "boot.ipxe")]


@needs_atftp
def test_windows_still_go_out_where_the_kernel_refuses_gso(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 4-byte segment size is malformed ancillary data: every GSO send fails with EINVAL, as it
    # does on a route without checksum offload, and the endpoint must fall back to datagrams.
    monkeypatch.setattr(endpoint, "_U16", struct.Struct("=I"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("127.0.0.1", 9))
        with pytest.raises(OSError, match="Invalid argument") as refused:
            probe.sendmsg([bytes(3000)], [(socket.SOL_UDP, 103, struct.pack("=I", 1472))])
        assert refused.value.errno == errno.EINVAL
    assert ATFTP is not None
    out = tmp_path / "out"

    with tftp_in_thread(root) as running:
        result = _run(
            [
                ATFTP,
                "--get",
                "-r",
                "f1m",
                "-l",
                str(out),
                "--option",
                "blksize 1468",
                "--option",
                "windowsize 8",
                "127.0.0.1",
                str(running.port),
            ]
        )

    assert result.returncode == 0, result.stderr
    assert _sha(out) == _sha(root / "f1m")


def test_a_port_already_taken_is_a_config_error(root: Path) -> None:
    # No SO_REUSEADDR: a second TFTP server on the same port must fail, not share the requests.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        service = TftpService(
            TftpSettings(host="127.0.0.1", port=port), BootSettings(ipxe_dir=IPXE_DIR), root
        )

        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            asyncio.run(service.run())
