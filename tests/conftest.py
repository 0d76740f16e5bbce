"""Project-wide test configuration.

In CI (``CI`` set) the interop tests must run, not skip: a missing external tool (qemu-img,
libiscsi's initiators, tgt, curl, the TFTP clients) fails the session at once instead of
silently skipping the tests that prove we interoperate. ``scripts/test`` installs all of them.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED_TOOLS = (
    "qemu-img",
    "qemu-io",
    "iscsi-test-cu",
    "iscsi-inq",
    "iscsi-ls",
    "tgtd",
    "tgtadm",
    "curl",  # TFTP clients the interop tests run
    "atftp",
    "tftp",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not os.environ.get("CI"):
        return
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(
            f"CI run without {', '.join(missing)}: run the tests through scripts/test, "
            "which installs them"
        )
