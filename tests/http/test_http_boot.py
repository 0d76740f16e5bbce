"""The HTTP boot plane served for real on 127.0.0.1 and fetched with curl."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from http_support import Served, curl, serving

from diskless.boot import (
    BootPlan,
    BootStage,
    BootTimeline,
    LinuxTarget,
    LocalDiskTarget,
    Machine,
    MachineBook,
    SanbootTarget,
    classify_arch,
    parse_mac,
    render_script,
    site_from_settings,
)
from diskless.config import BootSettings, HttpSettings
from diskless.errors import ConfigError
from diskless.http import ConsumedInMemory, HttpBootService

MAC = parse_mac("52:54:00:18:00:10")
STRANGER = parse_mac("52:54:00:99:99:99")
SEAT = Machine(mac=MAC, hostname="seat-01", ip=IPv4Address("127.0.0.1"))
MiB = 1 << 20


class Book:
    """A swappable machine book, as the inventory will hand the service."""

    def __init__(self, *machines: Machine) -> None:
        self.current = MachineBook(machines)

    def __call__(self) -> MachineBook:
        return self.current

    def replace(self, *machines: Machine) -> None:
        self.current = MachineBook(machines)


@pytest.fixture
def http_root(tmp_path: Path) -> Path:
    root = tmp_path / "http"
    (root / "debian").mkdir(parents=True)
    (root / "debian" / "linux").write_bytes(b"kernel bytes")
    (tmp_path / "secret").write_text("outside the root")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "inside-link").symlink_to(root / "debian" / "linux")
    return root


@pytest.fixture
def ipxe_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ipxe"
    directory.mkdir()
    (directory / "undionly.kpxe").write_bytes(b"\x55\xaa undionly")
    (tmp_path / "elsewhere.efi").write_bytes(b"MZ ipxe.efi")
    (directory / "ipxe.efi").symlink_to(tmp_path / "elsewhere.efi")  # as Debian installs it
    (directory / "snponly.efi").write_bytes(b"MZ not configured")
    return directory


def boot_settings(ipxe_dir: Path, **changes: object) -> BootSettings:
    return BootSettings(ipxe_dir=ipxe_dir, menu_timeout=3, **changes)  # type: ignore[arg-type]


def make_service(
    root: Path,
    ipxe_dir: Path,
    book: Callable[[], MachineBook],
    timeline: BootTimeline,
    **options: object,
) -> HttpBootService:
    boot_changes = options.pop("boot", {})
    assert isinstance(boot_changes, dict)
    return HttpBootService(
        # Port 0 (any free port) is for tests only: the settings model refuses it.
        HttpSettings(host="127.0.0.1").model_copy(update={"port": 0}),
        boot_settings(ipxe_dir, **boot_changes),
        root=root,
        machines=book,
        timeline=timeline,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def timeline() -> BootTimeline:
    return BootTimeline()


@pytest.fixture
def served(
    http_root: Path, ipxe_dir: Path, timeline: BootTimeline
) -> Iterator[tuple[Served, Book]]:
    book = Book(SEAT)
    with serving(make_service(http_root, ipxe_dir, book, timeline)) as where:
        yield where, book


def expected_script(where: Served, target: object, machine: Machine | None = SEAT) -> str:
    site = site_from_settings(boot_settings(Path("/unused")), IPv4Address(where.host), where.port)
    plan = BootPlan(
        machine=machine,
        platform=classify_arch(None),
        loader=None,
        target=target,  # type: ignore[arg-type]
        once=False,
    )
    return render_script(plan, site)


# --------------------------------------------------------------------------------------------
# Scripts


def test_a_known_machine_gets_its_rendered_script(
    served: tuple[Served, Book], timeline: BootTimeline
) -> None:
    where, _ = served

    fetched = curl(f"{where.base}/boot/52:54:00:18:00:10.ipxe")

    assert fetched.status == 200
    assert fetched.body.decode() == expected_script(where, SanbootTarget())
    assert "sanboot iscsi:127.0.0.1::3260:0:" in fetched.body.decode()
    assert fetched.headers["content-type"].startswith("text/plain")
    assert [(e.stage, e.detail, e.known) for e in timeline.events(MAC)] == [
        (BootStage.HTTP_SCRIPT, "sanboot", True)
    ]


@pytest.mark.parametrize(
    "spelling",
    [
        "52:54:00:18:00:10",
        "52-54-00-18-00-10",
        "525400180010",
        "52-54-00-18-00-10".upper(),
        "52%3A54%3A00%3A18%3A00%3A10",
    ],
)
def test_every_mac_spelling_names_the_same_machine(
    served: tuple[Served, Book], spelling: str
) -> None:
    where, _ = served

    fetched = curl(f"{where.base}/boot/{spelling}.ipxe")

    assert fetched.status == 200
    assert fetched.body.decode() == expected_script(where, SanbootTarget())


@pytest.mark.parametrize("spelling", ["nonsense", "52:54:00:18:00", "52:54:00:18:00:10:11"])
def test_a_bad_mac_is_a_400_with_a_reason(served: tuple[Served, Book], spelling: str) -> None:
    where, _ = served

    fetched = curl(f"{where.base}/boot/{spelling}.ipxe")

    assert fetched.status == 400
    assert fetched.body.startswith(b"not a MAC address")
    assert fetched.headers["content-type"].startswith("text/plain")


def test_the_generic_script_leads_to_the_machine_script(served: tuple[Served, Book]) -> None:
    where, _ = served

    generic = curl(f"{where.base}/boot.ipxe")

    assert generic.status == 200
    text = generic.body.decode()
    assert text.startswith("#!ipxe\n")
    chained = next(line for line in text.splitlines() if line.startswith("chain "))
    url = chained.split()[2]
    assert url == f"{where.base}/boot/${{netX/mac:hexhyp}}.ipxe"
    # What iPXE makes of it: ${netX/mac:hexhyp} is the MAC with hyphens.
    resolved = curl(url.replace("${netX/mac:hexhyp}", "52-54-00-18-00-10"))
    assert resolved.body.decode() == expected_script(where, SanbootTarget())


def test_the_machine_book_can_be_swapped_while_serving(served: tuple[Served, Book]) -> None:
    where, book = served
    linux = LinuxTarget(kernel="debian/linux")

    book.replace(SEAT.model_copy(update={"boot": linux}))
    fetched = curl(f"{where.base}/boot/52:54:00:18:00:10.ipxe")

    assert fetched.body.decode() == expected_script(where, linux)


def test_unknown_machines_get_the_menu_and_are_discovered(
    served: tuple[Served, Book], timeline: BootTimeline
) -> None:
    where, _ = served

    fetched = curl(f"{where.base}/boot/52-54-00-99-99-99.ipxe")

    assert fetched.status == 200
    assert "choose --default boot-0 --timeout 3000 " in fetched.body.decode()
    assert timeline.discovered() == [STRANGER]
    stages = [(e.stage, e.known) for e in timeline.events(STRANGER)]
    assert stages == [(BootStage.DISCOVERED, False), (BootStage.HTTP_SCRIPT, False)]


def test_unknown_machines_get_a_404_when_ignored(
    http_root: Path, ipxe_dir: Path, timeline: BootTimeline
) -> None:
    service = make_service(
        http_root, ipxe_dir, Book(SEAT), timeline, boot={"unknown_clients": "ignore"}
    )
    with serving(service) as where:
        fetched = curl(f"{where.base}/boot/52-54-00-99-99-99.ipxe")
        known = curl(f"{where.base}/boot/52-54-00-18-00-10.ipxe")

    assert fetched.status == 404
    assert known.status == 200
    assert [(e.stage, e.detail) for e in timeline.events(STRANGER)] == [
        (BootStage.DISCOVERED, "ignored")
    ]


def test_next_boot_once_is_served_once_then_the_normal_target(
    http_root: Path, ipxe_dir: Path, timeline: BootTimeline
) -> None:
    consumed: list[Machine] = []
    once = SEAT.model_copy(update={"next_boot_once": LocalDiskTarget()})
    book = Book(once)
    service = make_service(
        http_root, ipxe_dir, book, timeline, next_boot_once=ConsumedInMemory(consumed.append)
    )
    url_path = "/boot/52:54:00:18:00:10.ipxe"
    with serving(service) as where:
        peeked = curl(f"{where.base}{url_path}", "--head")
        first = curl(f"{where.base}{url_path}")
        second = curl(f"{where.base}{url_path}")
        # The inventory (later) replaces the record with another override: served once too.
        book.replace(SEAT.model_copy(update={"next_boot_once": SanbootTarget(keep_san=True)}))
        third = curl(f"{where.base}{url_path}")
        fourth = curl(f"{where.base}{url_path}")

    assert peeked.status == 200
    assert first.body.decode() == expected_script(where, LocalDiskTarget())
    assert second.body.decode() == expected_script(where, SanbootTarget())
    assert third.body.decode() == expected_script(where, SanbootTarget(keep_san=True))
    assert fourth.body.decode() == expected_script(where, SanbootTarget())
    assert [m.next_boot_once for m in consumed] == [LocalDiskTarget(), SanbootTarget(keep_san=True)]
    assert len(timeline.events(MAC)) == 4  # HEAD records nothing


def test_a_record_that_cannot_be_rendered_gets_an_explaining_script(
    http_root: Path, ipxe_dir: Path, timeline: BootTimeline
) -> None:
    broken = SEAT.model_copy(update={"boot": LinuxTarget(kernel="k", cmdline="quiet\nshell")})
    with serving(make_service(http_root, ipxe_dir, Book(broken), timeline)) as where:
        fetched = curl(f"{where.base}/boot/52:54:00:18:00:10.ipxe")

    assert fetched.status == 200
    body = fetched.body.decode()
    assert "echo diskless: cannot boot this machine: boot.cmdline: only printable ASCII" in body
    assert "\nshell\n" not in body


def test_a_crash_is_a_plain_500_without_a_traceback(
    http_root: Path, ipxe_dir: Path, timeline: BootTimeline
) -> None:
    def failing_book() -> MachineBook:
        raise RuntimeError("inventory exploded")

    with serving(make_service(http_root, ipxe_dir, failing_book, timeline)) as where:
        fetched = curl(f"{where.base}/boot/52:54:00:18:00:10.ipxe")
        after = curl(f"{where.base}/boot.ipxe")

    assert fetched.status == 500
    assert fetched.body == b"internal error (logged by the server)\n"
    assert after.status == 200


def test_unknown_routes_and_methods_are_short_4xx(served: tuple[Served, Book]) -> None:
    where, _ = served

    missing = curl(f"{where.base}/nothing/here")
    posted = curl(f"{where.base}/boot.ipxe", "--data", "x=1")

    assert missing.status == 404
    assert posted.status == 405
    assert len(missing.body) < 100
    assert b"Traceback" not in missing.body + posted.body


# --------------------------------------------------------------------------------------------
# iPXE programs


def test_only_configured_ipxe_programs_are_served(served: tuple[Served, Book]) -> None:
    where, _ = served

    bios = curl(f"{where.base}/ipxe/undionly.kpxe")
    uefi = curl(f"{where.base}/ipxe/ipxe.efi")
    other = curl(f"{where.base}/ipxe/snponly.efi")

    assert (bios.status, bios.body) == (200, b"\x55\xaa undionly")
    assert (uefi.status, uefi.body) == (200, b"MZ ipxe.efi")
    assert other.status == 404


def test_a_configured_program_missing_on_disk_is_a_404(
    http_root: Path, ipxe_dir: Path, timeline: BootTimeline
) -> None:
    service = make_service(
        http_root, ipxe_dir, Book(SEAT), timeline, boot={"uefi_arm64_file": "arm64/ipxe.efi"}
    )
    with serving(service) as where:
        fetched = curl(f"{where.base}/ipxe/arm64/ipxe.efi")

    assert fetched.status == 404
    assert fetched.body == b"iPXE program missing from boot.ipxe_dir\n"


# --------------------------------------------------------------------------------------------
# Files: ranges, HEAD and the jail


@pytest.fixture(scope="module")
def large_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    root = tmp_path_factory.mktemp("large")
    content = os.urandom(16 * MiB) * 3 + os.urandom(16 * MiB)  # 64 MiB, ranges differ
    (root / "big.img").write_bytes(content)
    return root, content


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "ranged",
    [
        ("0-0", 0, 1),
        ("0-1048575", 0, MiB),
        ("33554431-50331649", 32 * MiB - 1, 48 * MiB + 2),
        ("67108000-", 67108000, 64 * MiB),
        ("-4096", 64 * MiB - 4096, 64 * MiB),
        ("0-", 0, 64 * MiB),
    ],
    ids=lambda ranged: ranged[0],
)
def test_ranges_of_a_large_file_are_byte_identical(
    large_root: tuple[Path, bytes],
    ipxe_dir: Path,
    timeline: BootTimeline,
    ranged: tuple[str, int, int],
) -> None:
    root, content = large_root
    spec, start, stop = ranged
    with serving(make_service(root, ipxe_dir, Book(SEAT), timeline)) as where:
        fetched = curl(f"{where.base}/files/big.img", "--range", spec)

    assert fetched.status == 206
    assert int(fetched.headers["content-length"]) == stop - start
    assert fetched.headers["content-range"] == f"bytes {start}-{stop - 1}/{64 * MiB}"
    assert sha256(fetched.body) == sha256(content[start:stop])


def test_a_whole_file_and_its_head(
    large_root: tuple[Path, bytes], ipxe_dir: Path, timeline: BootTimeline
) -> None:
    root, content = large_root
    with serving(make_service(root, ipxe_dir, Book(SEAT), timeline)) as where:
        whole = curl(f"{where.base}/files/big.img")
        head = curl(f"{where.base}/files/big.img", "--head")

    assert whole.status == 200
    assert int(whole.headers["content-length"]) == len(content)
    assert whole.headers["accept-ranges"] == "bytes"
    assert sha256(whole.body) == sha256(content)
    assert head.status == 200
    assert int(head.headers["content-length"]) == len(content)
    assert head.body == b""
    # The machine whose reserved address fetched it (127.0.0.1) has it in its timeline, once.
    assert [(e.stage, e.detail) for e in timeline.events(MAC)] == [(BootStage.HTTP_FILE, "big.img")]


def test_an_unsatisfiable_range_is_a_416(
    large_root: tuple[Path, bytes], ipxe_dir: Path, timeline: BootTimeline
) -> None:
    root, _ = large_root
    with serving(make_service(root, ipxe_dir, Book(SEAT), timeline)) as where:
        fetched = curl(f"{where.base}/files/big.img", "--range", f"{64 * MiB}-")

    assert fetched.status == 416


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/files/debian/linux", 200),
        ("/files/inside-link", 200),
        ("/files/../secret", 403),
        ("/files/debian/../../secret", 403),
        ("/files/%2e%2e/secret", 403),
        ("/files/%2E%2E%2Fsecret", 403),
        ("/files/debian/%2e%2e/%2e%2e/secret", 403),
        ("/files//etc/passwd", 403),
        ("/files/escape", 403),
        ("/files/debian", 404),
        ("/files/debian/", 404),
        ("/files/", 404),
        ("/files/missing", 404),
        ("/files/debian/linux/more", 404),
    ],
)
def test_the_http_root_is_a_jail(served: tuple[Served, Book], path: str, status: int) -> None:
    where, _ = served

    fetched = curl(f"{where.base}{path}", "--path-as-is")

    assert fetched.status == status
    if status == 200:
        assert fetched.body == b"kernel bytes"
    else:
        assert b"outside the root" not in fetched.body
        assert len(fetched.body) < 100


# --------------------------------------------------------------------------------------------
# The listener


def test_a_port_in_use_is_a_config_error(
    http_root: Path, ipxe_dir: Path, timeline: BootTimeline
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = HttpBootService(
            HttpSettings(host="127.0.0.1", port=port),
            boot_settings(ipxe_dir),
            root=http_root,
            machines=Book(SEAT),
            timeline=timeline,
        )

        with pytest.raises(ConfigError, match=rf"http: cannot listen on 127.0.0.1:{port}: "):
            asyncio.run(asyncio.wait_for(service.run(), 10))


def test_cancel_releases_the_port(http_root: Path, ipxe_dir: Path, timeline: BootTimeline) -> None:
    with serving(make_service(http_root, ipxe_dir, Book(SEAT), timeline)) as where:
        assert curl(f"{where.base}/boot.ipxe").status == 200

    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", where.port))  # nothing listens there any more
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", where.port), timeout=2).close()


# --------------------------------------------------------------------------------------------
# Counters (read by /metrics)


def test_every_response_is_counted_by_route_status_and_bytes(
    http_root: Path, ipxe_dir: Path, timeline: BootTimeline
) -> None:
    service = make_service(http_root, ipxe_dir, Book(SEAT), timeline)
    with serving(service) as where:
        fetched = [
            curl(f"{where.base}{path}", *options)
            for path, *options in [
                (f"/boot/{SEAT.mac.hex()}.ipxe",),
                ("/boot.ipxe",),
                ("/boot/not-a-mac.ipxe",),
                ("/ipxe/undionly.kpxe",),
                ("/files/debian/linux", "--range", "0-5"),
                ("/files/debian/linux", "--head"),
                ("/files/escape",),
                ("/elsewhere",),
            ]
        ]

    stats = service.stats
    assert stats.requests == {"script": 3, "ipxe": 1, "file": 3, "other": 1}
    assert stats.responses == {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 3, "5xx": 0}  # 206 is 2xx
    assert stats.scripts_rendered == 2  # the bad MAC is refused before rendering
    # Bodies only: the range's 6 bytes, nothing for HEAD, every other body in full.
    assert fetched[4].body == b"kernel"
    assert stats.bytes_sent == sum(len(response.body) for response in fetched)
