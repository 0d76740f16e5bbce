"""CHAP and initiator access lists of ``diskless export``, checked with libiscsi and QEMU.

libiscsi 1.19 speaks one-way CHAP from the URL (``iscsi://user%secret@host/iqn/lun``) and mutual
CHAP when it is also given the target's credentials, either as URL arguments
(``?target_user=U&target_password=S``, parsed by ``iscsi_parse_url`` in lib/init.c) or through
``LIBISCSI_CHAP_TARGET_USERNAME``/``LIBISCSI_CHAP_TARGET_PASSWORD``; it then checks the target's
``CHAP_N`` and ``CHAP_R``. QEMU 7.2's iSCSI driver only passes ``user``/``password`` on (one-way
CHAP) and ignores target credentials, so against a target with mutual credentials it logs in
one-way, which the target must allow (mutual CHAP is the initiator's choice, RFC 7143 §12.1.3).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from libiscsi_support import (
    ISCSI_INQ,
    ISCSI_LS,
    QEMU_IMG,
    ExportServer,
    export_server,
    run_tool,
    run_tool_ok,
    tool_env,
)

pytestmark = pytest.mark.skipif(
    not (ISCSI_INQ and ISCSI_LS and QEMU_IMG),
    reason="needs libiscsi-bin (iscsi-ls, iscsi-inq) and qemu-utils",
)

DISK_SIZE = 4 << 20
TARGET = "iqn.2026-11.org.diskless.test:chap"
USER = "initiator-user"
SECRET = "initiator-secret-12"
TARGET_USER = "target-user"
TARGET_SECRET = "target-secret-3456"
ALLOWED = "iqn.2026-11.org.diskless.test:allowed-client"
FOREIGN = "iqn.2026-11.org.diskless.test:other-client"


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chap") / "disk.raw"
    path.write_bytes(random.Random(3).randbytes(DISK_SIZE))
    return path


@pytest.fixture(scope="module")
def chap_server(disk: Path) -> Iterator[ExportServer]:
    """One-way and mutual CHAP credentials configured; any initiator name."""
    with export_server(
        disk,
        target_name=TARGET,
        chap_user=USER,
        chap_secret=SECRET,
        mutual_chap_user=TARGET_USER,
        mutual_chap_secret=TARGET_SECRET,
        read_only=True,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def acl_server(disk: Path) -> Iterator[ExportServer]:
    """Only ``ALLOWED`` may log in (and discover the target); no CHAP."""
    with export_server(
        disk, target_name=TARGET, allow_initiator=[ALLOWED], read_only=True
    ) as running:
        yield running


@pytest.fixture(scope="module")
def acl_chap_server(disk: Path) -> Iterator[ExportServer]:
    """Both: the allowed initiator name and the CHAP secret."""
    with export_server(
        disk,
        target_name=TARGET,
        allow_initiator=[ALLOWED],
        chap_user=USER,
        chap_secret=SECRET,
        read_only=True,
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def _servers_stay_healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for name in ("chap_server", "acl_server", "acl_chap_server"):
        if name in request.fixturenames:
            request.getfixturevalue(name).assert_healthy()


def inq(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    done = run_tool([ISCSI_INQ, *args, url], env=env, timeout=20)
    return done.returncode, done.stdout + done.stderr


# -- one-way CHAP ---------------------------------------------------------------------------------


def test_chap_login_with_the_right_secret(chap_server: ExportServer) -> None:
    code, out = inq(chap_server.url(user=USER, secret=SECRET))
    assert code == 0, out
    assert "Peripheral Device Type:DIRECT_ACCESS" in out


def test_chap_credentials_from_libiscsi_environment(chap_server: ExportServer) -> None:
    env = tool_env(LIBISCSI_CHAP_USERNAME=USER, LIBISCSI_CHAP_PASSWORD=SECRET)
    code, out = inq(chap_server.url(), env=env)
    assert code == 0, out


@pytest.mark.parametrize(
    ("user", "secret"),
    [(USER, "wrong-secret-000"), ("someone-else", SECRET), (USER, SECRET[:-1])],
    ids=["wrong-secret", "wrong-user", "truncated-secret"],
)
def test_chap_bad_credentials_refused(chap_server: ExportServer, user: str, secret: str) -> None:
    before = len(chap_server.log())
    code, out = inq(chap_server.url(user=user, secret=secret))
    assert code != 0, out
    assert "Authentication failure" in out, out
    log = chap_server.wait_for_log("refused (0201)", since=before)
    assert "refused (0201)" in log, log
    assert "CHAP authentication failed" in log, log
    assert "iSCSI login:" not in log, log


def test_chap_missing_credentials_refused(chap_server: ExportServer) -> None:
    before = len(chap_server.log())
    code, out = inq(chap_server.url())
    assert code != 0, out
    log = chap_server.wait_for_log("refused (0201)", since=before)
    assert "refused (0201)" in log, log
    assert "CHAP is required" in log, log


def test_chap_iscsi_ls_with_credentials(chap_server: ExportServer) -> None:
    """Discovery, then a normal CHAP login per target to list its LUNs."""
    portal = f"iscsi://{USER}%{SECRET}@{chap_server.portal}"
    out = run_tool_ok([ISCSI_LS, "-s", portal], timeout=20)
    assert f"Target:{TARGET} Portal:{chap_server.portal},1" in out, out
    assert re.search(r"^Lun:0\s+Type:DIRECT_ACCESS", out, re.MULTILINE), out


# -- mutual CHAP ----------------------------------------------------------------------------------


def test_mutual_chap_from_url_arguments(chap_server: ExportServer) -> None:
    query = f"target_user={TARGET_USER}&target_password={TARGET_SECRET}"
    code, out = inq(chap_server.url(user=USER, secret=SECRET, query=query))
    assert code == 0, out
    assert "Peripheral Device Type:DIRECT_ACCESS" in out


def test_mutual_chap_from_environment(chap_server: ExportServer) -> None:
    env = tool_env(
        LIBISCSI_CHAP_TARGET_USERNAME=TARGET_USER, LIBISCSI_CHAP_TARGET_PASSWORD=TARGET_SECRET
    )
    code, out = inq(chap_server.url(user=USER, secret=SECRET), env=env)
    assert code == 0, out


def test_mutual_chap_wrong_target_secret_detected(chap_server: ExportServer) -> None:
    """The initiator, not the target, notices: the target's CHAP_R does not match its secret."""
    query = f"target_user={TARGET_USER}&target_password=not-the-target-secret"
    code, out = inq(chap_server.url(user=USER, secret=SECRET, query=query))
    assert code != 0, out
    assert "Invalid CHAP_R response from the target" in out, out


def test_mutual_chap_wrong_target_name_detected(chap_server: ExportServer) -> None:
    query = f"target_user=somebody-else&target_password={TARGET_SECRET}"
    code, out = inq(chap_server.url(user=USER, secret=SECRET, query=query))
    assert code != 0, out
    assert f"Wrong CHAP targetname received: {TARGET_USER}" in out, out


def test_mutual_chap_needs_the_initiator_secret_first(chap_server: ExportServer) -> None:
    query = f"target_user={TARGET_USER}&target_password={TARGET_SECRET}"
    code, out = inq(chap_server.url(user=USER, secret="wrong-secret-000", query=query))
    assert code != 0, out
    assert "Authentication failure" in out, out


# -- QEMU: one-way CHAP only ----------------------------------------------------------------------


def test_qemu_one_way_chap_against_a_mutual_target(chap_server: ExportServer) -> None:
    opts = chap_server.image_opts(
        user=USER, password=SECRET, **{"initiator-name": "iqn.2026-11.org.diskless.test:qemu"}
    )
    out = run_tool_ok([QEMU_IMG, "info", "--image-opts", opts], timeout=20)
    assert f"virtual size: 4 MiB ({DISK_SIZE} bytes)" in out, out


def test_qemu_wrong_chap_secret_refused(chap_server: ExportServer) -> None:
    opts = chap_server.image_opts(user=USER, password="wrong-secret-000")
    done = run_tool([QEMU_IMG, "info", "--image-opts", opts], timeout=20)
    assert done.returncode != 0, done.stdout
    assert "Authentication failure" in done.stderr, done.stderr


# -- initiator access lists -----------------------------------------------------------------------


def test_allowed_initiator_logs_in(acl_server: ExportServer) -> None:
    code, out = inq(acl_server.url(), "-i", ALLOWED)
    assert code == 0, out


def test_initiator_names_compare_case_insensitively(acl_server: ExportServer) -> None:
    code, out = inq(acl_server.url(), "-i", ALLOWED.upper())
    assert code == 0, out


def test_foreign_initiator_refused(acl_server: ExportServer) -> None:
    before = len(acl_server.log())
    code, out = inq(acl_server.url(), "-i", FOREIGN)
    assert code != 0, out
    assert "Authorization failure" in out, out
    log = acl_server.wait_for_log("refused (0202)", since=before)
    assert "refused (0202)" in log, log
    assert FOREIGN in log, log


def test_default_libiscsi_name_refused(acl_server: ExportServer) -> None:
    code, out = inq(acl_server.url())
    assert code != 0, out


def test_discovery_hides_the_target_from_a_foreign_initiator(acl_server: ExportServer) -> None:
    out = run_tool_ok([ISCSI_LS, "-i", FOREIGN, acl_server.portal_url], timeout=20)
    assert TARGET not in out, out
    assert "Target:" not in out, out


def test_discovery_shows_the_target_to_the_allowed_initiator(acl_server: ExportServer) -> None:
    out = run_tool_ok([ISCSI_LS, "-s", "-i", ALLOWED, acl_server.portal_url], timeout=20)
    assert f"Target:{TARGET} Portal:{acl_server.portal},1" in out, out
    assert re.search(r"^Lun:0\s+Type:DIRECT_ACCESS", out, re.MULTILINE), out


def test_access_list_and_chap_both_required(acl_chap_server: ExportServer) -> None:
    good = acl_chap_server.url(user=USER, secret=SECRET)
    assert inq(good, "-i", ALLOWED)[0] == 0
    code, out = inq(good, "-i", FOREIGN)
    assert code != 0, out
    code, out = inq(acl_chap_server.url(user=USER, secret="wrong-secret-000"), "-i", ALLOWED)
    assert code != 0, out
    code, out = inq(acl_chap_server.url(), "-i", ALLOWED)
    assert code != 0, out
