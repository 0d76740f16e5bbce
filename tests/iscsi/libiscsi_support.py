"""Running real iSCSI initiators against a target: libiscsi's test suite and tgt as the reference.

Shared by the conformance tests and ``bench/iscsi_conformance.py``. Everything listens on
127.0.0.1 on ports picked free at run time, and every process started here is stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ISCSI_TEST_CU = shutil.which("iscsi-test-cu")
TGTD = shutil.which("tgtd")
TGTADM = shutil.which("tgtadm")

# The families the iSCSI issue names as the acceptance gate (libiscsi 1.19 names).
FAMILIES = (
    "Inquiry",
    "Mandatory",
    "ModeSense6",
    "Read6",
    "Read10",
    "Read12",
    "Read16",
    "ReadCapacity10",
    "ReadCapacity16",
    "Write10",
    "Write12",
    "Write16",
    "WriteVerify10",
    "WriteVerify12",
    "WriteVerify16",
    "Verify10",
    "Verify12",
    "Verify16",
    "Prefetch10",
    "Prefetch16",
    "TestUnitReady",
    "StartStopUnit",
    "PreventAllow",
    "ReportSupportedOpcodes",
    "ReadOnly",
    "NoMedia",
    "Unmap",
    "WriteSame10",
    "WriteSame16",
    "iSCSIcmdsn",
    "iSCSIdatasn",
    "iSCSIResiduals",
    "iSCSITMF",
)

_TEST_LINE = re.compile(r"^\s+Test: (?P<name>\S+) \.\.\.(?P<rest>.*)$")


@dataclass(frozen=True, slots=True)
class TestOutcome:
    name: str
    result: str  # "passed", "skipped" or "failed"
    detail: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def run_family(url: str, family: str, *, timeout: float = 300.0) -> list[TestOutcome]:
    """Run one ``ALL.<family>`` suite of iscsi-test-cu (destructive tests allowed)."""
    assert ISCSI_TEST_CU is not None
    completed = subprocess.run(
        [ISCSI_TEST_CU, "--dataloss", f"--test=ALL.{family}", url],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return parse_outcomes(completed.stdout + completed.stderr)


def parse_outcomes(output: str) -> list[TestOutcome]:
    """Per-test results from iscsi-test-cu's verbose output."""
    outcomes: list[TestOutcome] = []
    lines = output.splitlines()
    index = 0
    while index < len(lines):
        match = _TEST_LINE.match(lines[index])
        index += 1
        if match is None:
            continue
        name = match.group("name")
        body = [match.group("rest")]
        while index < len(lines) and not _TEST_LINE.match(lines[index]):
            if lines[index].startswith(("Run Summary", "Suite:")):
                break
            body.append(lines[index])
            index += 1
        text = "\n".join(body)
        if "FAILED" in text:
            result = "failed"
        elif "[SKIPPED]" in text:
            result = "skipped"
        elif "passed" in text:
            result = "passed"
        else:
            result = "failed"  # crashed or hung: no verdict line at all
        outcomes.append(TestOutcome(name, result, text.strip()))
    return outcomes


@contextlib.contextmanager
def tgt_reference(backing: Path, target_name: str) -> Iterator[str]:
    """Run Debian's tgtd on a free loopback port exporting ``backing``; yields the LUN URL.

    tgt puts its controller at LUN 0, so the disk is LUN 1.
    """
    assert TGTD is not None
    assert TGTADM is not None
    port = free_port()
    control = str(port % 10000 + 100)  # tgtd's control "port" is a small integer
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [TGTD, "-f", "-C", control, "--iscsi", f"portal=127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        with _stopped(process, control):
            wait_for_port(port)
            adm = [TGTADM, "-C", control, "--lld", "iscsi"]
            for args in (
                ["--op", "new", "--mode", "target", "--tid", "1", "-T", target_name],
                [
                    "--op",
                    "new",
                    "--mode",
                    "logicalunit",
                    "--tid",
                    "1",
                    "--lun",
                    "1",
                    "-b",
                    str(backing),
                ],
                ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"],
            ):
                subprocess.run([*adm, *args], check=True, capture_output=True)
            yield f"iscsi://127.0.0.1:{port}/{target_name}/1"


@contextlib.contextmanager
def _stopped(process: subprocess.Popen[bytes], control: str) -> Iterator[None]:
    """Take tgtd down on the way out, however the block exits."""
    assert TGTADM is not None
    try:
        yield
    finally:
        # tgtd ignores SIGTERM while targets exist: take them down through tgtadm first.
        adm = [TGTADM, "-C", control]
        for args in (
            ["--op", "update", "--mode", "target", "--tid", "1", "-n", "state", "-v", "offline"],
            ["--op", "delete", "--mode", "target", "--tid", "1", "--force"],
            ["--op", "delete", "--mode", "system"],
        ):
            subprocess.run([*adm, *args], check=False, capture_output=True)
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
