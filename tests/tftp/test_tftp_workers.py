"""``tftp.workers``: transfers spread over processes sharing the port, and reported as one."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tftp_support import tftp_in_thread

from diskless.boot.events import BootStage, BootTimeline

CURL = shutil.which("curl")
MAC = bytes.fromhex("525400180010")
CLIENTS = 32


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_two_processes_serve_the_clients_and_count_as_one_service(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    payload = os.urandom(300 * 1024)
    (root / "file").write_bytes(payload)
    timeline = BootTimeline()
    with tftp_in_thread(
        root, timeline=timeline, mac_for_address=lambda address: MAC, workers=2
    ) as server:
        assert CURL is not None
        outs = [tmp_path / f"out{i}" for i in range(CLIENTS)]
        clients = [
            subprocess.Popen(
                [CURL, "-sS", f"tftp://127.0.0.1:{server.port}/file", "-o", str(out)],
                stderr=subprocess.DEVNULL,
            )
            for out in outs
        ]
        assert [client.wait(60) for client in clients] == [0] * CLIENTS
        assert {hashlib.sha256(out.read_bytes()).digest() for out in outs} == {
            hashlib.sha256(payload).digest()
        }
        # The worker reports its counters once a second; together they are every transfer.
        assert server.wait_for(
            lambda service: service.counters()["transfers_completed"] == CLIENTS, 10
        )
        own = server.on_loop(lambda: server.service.stats.transfers_completed)
        # The kernel spread the clients by their ports: both processes served some (all 32 on
        # one side has a chance of 2**-31).
        assert 0 < own < CLIENTS
        workers = list(server.service._workers)
        assert len(workers) == 1
        # Transfers a worker finished reach the main process's boot timeline too.
        assert server.wait_for(
            lambda _: (
                sum(event.stage is BootStage.TFTP_SENT for event in timeline.events(MAC)) == CLIENTS
            ),
            5,
        )
    process, _ = workers[0]
    assert not process.is_alive()  # stopped with the service
