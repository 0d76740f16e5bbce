"""libiscsi's conformance suite (iscsi-test-cu) against our target, with tgt as the reference.

Every family named in the iSCSI issue must pass against ours. tgt runs the same families in the
same test session; its results are recorded in the report (not asserted: tgt fails DataSnInvalid).
``bench/iscsi_conformance.py --write-docs`` renders the side-by-side table for docs/.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from libiscsi_support import (
    FAMILIES,
    ISCSI_TEST_CU,
    TGTADM,
    TGTD,
    CuOutcome,
    run_family,
    run_family_counted,
    tgt_reference,
)
from portal_support import portal_in_thread

from diskless.iscsi.discovery import TargetAccess
from diskless.iscsi.target import Target, TargetRegistry, disk_target
from diskless.scsi import LogicalUnit, LuIdentity, naa_locally_assigned
from diskless.storage.images import open_image
from diskless.storage.qcow2 import create_qcow2

pytestmark = pytest.mark.skipif(
    ISCSI_TEST_CU is None, reason="iscsi-test-cu not installed (Debian libiscsi-bin)"
)

DISK_SIZE = 64 << 20
WRITABLE = "iqn.2026-11.org.diskless.test:conformance"
READ_ONLY = "iqn.2026-11.org.diskless.test:conformance-ro"
REMOVABLE = "iqn.2026-11.org.diskless.test:conformance-removable"
REPORT = os.environ.get("DISKLESS_CONFORMANCE_REPORT")


@pytest.fixture(scope="module")
def our_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A qcow2 overlay (128 KiB clusters, extended L2) over a raw golden, and the golden itself
    exported read-only, on one portal."""
    directory = tmp_path_factory.mktemp("conformance")
    golden = directory / "golden.raw"
    golden.write_bytes(random.Random(1).randbytes(1 << 20) * (DISK_SIZE >> 20))
    overlay = directory / "overlay.qcow2"
    create_qcow2(
        overlay, backing=golden.name, backing_format="raw", cluster_size=131072, extended_l2=True
    )
    writable = open_image(overlay)
    read_only = open_image(golden, read_only=True)
    removable_disk = directory / "removable.qcow2"
    create_qcow2(removable_disk, size=DISK_SIZE)
    removable = open_image(removable_disk)
    identity = LuIdentity(serial="removable01", naa=naa_locally_assigned(b"removable"))
    targets = TargetRegistry(
        [
            Target(
                TargetAccess(name=REMOVABLE),
                LogicalUnit(removable, identity, removable=True),
            ),
            disk_target(writable, TargetAccess(name=WRITABLE), identity_seed="conformance"),
            disk_target(
                read_only,
                TargetAccess(name=READ_ONLY),
                identity_seed="conformance-ro",
                read_only=True,
            ),
        ]
    )
    try:
        with portal_in_thread(targets) as (_, port):
            yield {
                "writable": f"iscsi://127.0.0.1:{port}/{WRITABLE}/0",
                "read_only": f"iscsi://127.0.0.1:{port}/{READ_ONLY}/0",
                "removable": f"iscsi://127.0.0.1:{port}/{REMOVABLE}/0",
            }
    finally:
        writable.close()
        read_only.close()
        removable.close()


@pytest.fixture(scope="module")
def tgt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    if TGTD is None or TGTADM is None:
        yield None
        return
    backing = tmp_path_factory.mktemp("tgt") / "disk.raw"
    backing.write_bytes(random.Random(1).randbytes(1 << 20) * (DISK_SIZE >> 20))
    with tgt_reference(backing, "iqn.2026-11.org.diskless.test:tgt") as url:
        yield url


def _record(family: str, server: str, outcomes: list[CuOutcome]) -> None:
    if not REPORT:
        return
    path = Path(REPORT)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(family, {})[server] = [[o.name, o.result] for o in outcomes]
    path.write_text(json.dumps(data, indent=1))


def _failures(outcomes: list[CuOutcome]) -> list[str]:
    return [f"{o.name}: {o.detail}" for o in outcomes if o.result == "failed"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_passes_against_our_target(
    family: str, our_urls: dict[str, str], tgt_url: str | None
) -> None:
    outcomes = run_family(our_urls["writable"], family)
    _record(family, "diskless", outcomes)
    if tgt_url is not None:
        _record(family, "tgt", run_family(tgt_url, family))
    assert outcomes, f"iscsi-test-cu ran no test of {family}"
    assert not _failures(outcomes), "\n".join(_failures(outcomes))


@pytest.mark.parametrize("family", ["ReadOnly", "Read10", "Inquiry", "ModeSense6"])
def test_read_only_lun(family: str, our_urls: dict[str, str]) -> None:
    # tgt's LUN is writable, so on it ReadOnly only skips; ours is also tested write-protected.
    outcomes, asserted = run_family_counted(our_urls["read_only"], family)
    _record(f"{family} (read-only LUN)", "diskless", outcomes)
    assert outcomes
    assert not _failures(outcomes), "\n".join(_failures(outcomes))
    assert asserted > 0, f"every {family} test skipped"


@pytest.mark.parametrize("family", ["PreventAllow", "NoMedia", "StartStopUnit"])
def test_removable_lun(family: str, our_urls: dict[str, str]) -> None:
    # A boot disk is not removable, so on it these families only skip; a removable LU runs them.
    outcomes, asserted = run_family_counted(our_urls["removable"], family)
    _record(f"{family} (removable LUN)", "diskless", outcomes)
    assert outcomes
    assert not _failures(outcomes), "\n".join(_failures(outcomes))
    assert asserted > 0, f"every {family} test skipped"
