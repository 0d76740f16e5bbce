"""libiscsi's test suite against diskless and tgt side by side; renders docs/iscsi-conformance.md.

    .venv/bin/python bench/iscsi_conformance.py [--write-docs]

Both targets serve a 64 MiB disk on 127.0.0.1 (ours: a qcow2 overlay with extended L2 over a raw
golden image; tgt: a raw file, its LUN 1). Every family the iSCSI issue names runs against both;
the table lists each test's verdict. "skipped" means the test passed by skipping a command the
target reports as not implemented (libiscsi counts that as a pass).
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "iscsi"))

from libiscsi_support import FAMILIES, CuOutcome, run_family, tgt_reference  # noqa: E402
from portal_support import portal_in_thread  # noqa: E402

from diskless.iscsi.discovery import TargetAccess  # noqa: E402
from diskless.iscsi.target import TargetRegistry, disk_target  # noqa: E402
from diskless.storage.images import open_image  # noqa: E402
from diskless.storage.qcow2 import create_qcow2  # noqa: E402

DISK_SIZE = 64 << 20
DOC = ROOT / "docs" / "iscsi-conformance.md"
_MARK = {"passed": "pass", "skipped": "skip", "failed": "**FAIL**", None: "—"}


def _run_all(url: str) -> dict[str, list[CuOutcome]]:
    results: dict[str, list[CuOutcome]] = {}
    for family in FAMILIES:
        results[family] = run_family(url, family)
        print(f"  {family}: {_summary(results[family])}", flush=True)
    return results


def _summary(outcomes: list[CuOutcome]) -> str:
    counts = {
        kind: sum(o.result == kind for o in outcomes) for kind in ("passed", "skipped", "failed")
    }
    return ", ".join(f"{count} {kind}" for kind, count in counts.items() if count) or "no tests"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diskless-conformance-") as scratch:
        directory = Path(scratch)
        content = random.Random(1).randbytes(1 << 20) * (DISK_SIZE >> 20)
        golden = directory / "golden.raw"
        golden.write_bytes(content)
        overlay = directory / "overlay.qcow2"
        create_qcow2(
            overlay,
            backing=golden.name,
            backing_format="raw",
            cluster_size=131072,
            extended_l2=True,
        )
        device = open_image(overlay)
        name = "iqn.2026-11.org.diskless.bench:conformance"
        targets = TargetRegistry([disk_target(device, TargetAccess(name=name), identity_seed=name)])
        try:
            print("diskless:", flush=True)
            with portal_in_thread(targets) as (_, port):
                ours = _run_all(f"iscsi://127.0.0.1:{port}/{name}/0")
        finally:
            device.close()
        reference = directory / "tgt.raw"
        reference.write_bytes(content)
        print("tgt:", flush=True)
        with tgt_reference(reference, "iqn.2026-11.org.diskless.bench:tgt") as url:
            theirs = _run_all(url)
    rows = []
    totals = {"diskless": 0, "tgt": 0}
    for family in FAMILIES:
        their = {o.name: o.result for o in theirs[family]}
        for outcome in ours[family]:
            rows.append(
                f"| {family} | {outcome.name} | {_MARK[outcome.result]} | "
                f"{_MARK[their.get(outcome.name)]} |"
            )
            totals["diskless"] += outcome.result == "failed"
            totals["tgt"] += their.get(outcome.name) == "failed"
    table = "\n".join(
        [
            "| family | test | diskless | tgt |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    print(f"failures: diskless {totals['diskless']}, tgt {totals['tgt']}")
    if args.write_docs:
        DOC.write_text(
            "# iSCSI conformance: libiscsi's test suite, diskless vs tgt\n\n"
            f"Generated {datetime.date.today().isoformat()} by `.venv/bin/python "
            "bench/iscsi_conformance.py --write-docs` (libiscsi-bin 1.19, Debian tgt "
            "1.0.85) on 127.0.0.1. The same families run in CI "
            "(`tests/iscsi/test_libiscsi_suite.py`), where every diskless failure fails the "
            "build; there they also run against a read-only LUN (ReadOnly really exercised) and a "
            "removable one (PreventAllow, NoMedia, StartStopUnit really exercised), which tgt "
            "only skips here.\n\n"
            '"skip" = passed by skipping a command the target reports as not implemented.\n\n'
            f"Failures: diskless {totals['diskless']}, tgt {totals['tgt']}.\n\n"
            f"{table}\n",
            encoding="utf-8",
        )
    return 1 if totals["diskless"] else 0


if __name__ == "__main__":
    sys.exit(main())
