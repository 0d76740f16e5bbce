"""A site run from the command line: the operator's whole loop, in network namespaces.

``diskless serve`` runs on its embedded inventory in a server namespace (198.18.0.1) with DHCP
in full mode; every change is made with the ``diskless`` command through the admin API, and
each client is a namespace of its own with a tool nobody here wrote:

* a machine added with the CLI gets its reserved address and its boot program from ``udhcpc``;
* ``curl`` from that address gets its sanboot script;
* ``iscsi-ls``/``iscsi-inq`` with its initiator name see exactly its own disk, and a second
  machine's initiator name is refused; ``qemu-io`` writes into the disk;
* switching the boot target with the CLI changes the next script; a next-boot-once is served
  once; the machine's boot timeline shows each step;
* an unknown MAC that sends a DISCOVER is listed as discovered and approved with the CLI;
* after a restart of the server, machines, the stranger's lease and the written data are there;
* a super client's disk committed as the image's next version reaches a reset-on-boot machine at
  its next boot, and pinning the old version takes it back (disks made from their assignment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import NetLab, require_netns, wait_for_text

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SERVER_IP = "198.18.0.1"
HTTP_PORT = 8080
PREFIX = "iqn.2026-11.org.diskless"
SEAT1_MAC, SEAT1_IP = "52:54:00:18:00:10", "198.18.0.170"
SEAT2_MAC, SEAT2_IP = "52:54:00:18:00:11", "198.18.0.171"
STRANGER_MAC = "52:54:00:18:00:99"
PXE_VENDOR = "PXEClient:Arch:00000:UNDI:002001"
MiB = 1 << 20
TOOLS = ("udhcpc", "curl", "iscsi-ls", "iscsi-inq", "qemu-io")


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_netns()
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing tools: {missing}")
        pytest.skip(f"missing tools: {missing}")
    with NetLab() as made:
        yield made


class Site:
    """The server's namespace, its configuration, and the ``diskless`` command run inside it."""

    def __init__(self, lab: NetLab, tmp_path: Path) -> None:
        self.lab = lab
        self.tmp_path = tmp_path
        self.namespace = lab.host("srv", address=f"{SERVER_IP}/24")
        self.config = tmp_path / "diskless.toml"
        self.config.write_text(
            f'data_dir = "{tmp_path / "data"}"\n'
            "[inventory]\npoll_interval = 0.5\n"
            '[dhcp]\ninterface = "eth0"\nmode = "full"\nlease_time = 600\n'
            'pool_start = "198.18.0.100"\npool_end = "198.18.0.149"\n'
            f'[http]\nhost = "{SERVER_IP}"\nport = {HTTP_PORT}\n'
            f'[iscsi]\nhost = "{SERVER_IP}"\n'
            "[tftp]\nenabled = false\n"
            '[api]\nhost = "127.0.0.1"\nport = 8081\n'
            '[logging]\nformat = "json"\n',
            encoding="utf-8",
        )
        self.token = ""
        self.server: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def diskless(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``diskless ARGS`` in the server's namespace (the API listens on its loopback)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISKLESS_")}
        env["DISKLESS_CONFIG"] = str(self.config)
        if self.token:
            env["DISKLESS_API__TOKEN"] = self.token
        done = subprocess.run(
            self.lab.command(self.namespace, [sys.executable, "-m", "diskless", *args]),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"diskless {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def json(self, *args: str) -> object:
        return json.loads(self.diskless(*args, "--json").stdout)

    def start(self) -> None:
        self.starts += 1
        log = self.tmp_path / f"serve-{self.starts}.log"
        self.server = self.lab.start(
            self.namespace,
            [sys.executable, "-m", "diskless", "serve", "--config", self.config],
            log=log,
        )
        wait_for_text(log, '"event": "ready"', timeout=60, process=self.server)

    def stop(self) -> None:
        assert self.server is not None
        assert self.lab.stop(self.server) == 0, "serve did not exit cleanly"


def _udhcpc(lab: NetLab, namespace: str, tmp_path: Path, name: str) -> dict[str, str]:
    """One PXE-flavoured lease with busybox udhcpc; the address is set on the interface."""
    events = tmp_path / f"{name}.events"
    script = tmp_path / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = bound ]; then ip addr flush dev "$interface"; '
        'ip addr add "$ip/$mask" dev "$interface"; fi\n'
        f'echo "$1 ip=$ip hostname=$hostname siaddr=$siaddr boot_file=$boot_file" >> {events}\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    done = lab.run(
        namespace,
        [
            "udhcpc",
            "-q",
            "-f",
            "-i",
            "eth0",
            "-s",
            script,
            "-t",
            "8",
            "-T",
            "1",
            "-n",
            "-V",
            PXE_VENDOR,
        ],
        timeout=60,
        check=False,
    )
    text = events.read_text() if events.exists() else ""
    bound = [line for line in text.splitlines() if line.startswith("bound")]
    assert bound, f"udhcpc got no lease: {done.stdout}{done.stderr}{text}"
    return dict(field.split("=", 1) for field in bound[-1].split()[1:])


def _script(lab: NetLab, namespace: str, mac: str) -> str:
    return lab.run(
        namespace, ["curl", "-sf", f"http://{SERVER_IP}:{HTTP_PORT}/boot/{mac}.ipxe"]
    ).stdout


def _commands(script: str) -> str:
    """The script without its comment lines."""
    return "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))


def _initiator(host: str) -> str:
    return f"{PREFIX}:client.{host}"


def _target(host: str) -> str:
    return f"{PREFIX}:disk.{host}"


def _qemu_io(
    lab: NetLab, namespace: str, host: str, command: str
) -> subprocess.CompletedProcess[str]:
    options = ",".join(
        (
            "driver=iscsi",
            "transport=tcp",
            f"portal={SERVER_IP}:3260",
            f"target={_target(host)}",
            "lun=0",
            f"initiator-name={_initiator(host)}",
        )
    )
    return lab.run(namespace, ["qemu-io", "--image-opts", options, "-c", command], check=False)


def _wait(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.timeout(600)
def test_an_operator_runs_a_site_from_the_command_line(lab: NetLab, tmp_path: Path) -> None:
    site = Site(lab, tmp_path)
    golden = tmp_path / "golden.raw"
    golden.write_bytes(b"golden!\n" * (8 * MiB // 8))
    site.diskless("image", "import", "debian", str(golden))
    created = site.json("token", "create", "operator")
    assert isinstance(created, dict)
    site.token = str(created["token"])
    site.start()

    # -- enrol two machines -------------------------------------------------------------------
    site.diskless(
        "machine",
        "add",
        SEAT1_MAC,
        "seat-01",
        "--ip",
        SEAT1_IP,
        "--image",
        "debian",
        "--mode",
        "persistent",
    )
    # Neither disk is created by hand: the server makes each from the machine's assignment.
    site.diskless(
        "machine",
        "add",
        SEAT2_MAC,
        "seat-02",
        "--ip",
        SEAT2_IP,
        "--image",
        "debian",
        "--mode",
        "reset-on-boot",
    )

    def disk_of(host: str) -> dict[str, object]:
        shown = site.json("machine", "disk", "show", host)
        assert isinstance(shown, dict)
        return shown

    _wait(
        lambda: site.diskless("machine", "disk", "show", "seat-02", check=False).returncode == 0,
        "seat-02's disk",
    )
    assert disk_of("seat-01")["mode"] == "persistent"
    assert disk_of("seat-02")["mode"] == "reset-on-boot"
    assert disk_of("seat-02")["image"] == "debian"
    listed = site.json("machine", "list")
    assert isinstance(listed, list)
    assert sorted(machine["hostname"] for machine in listed) == ["seat-01", "seat-02"]

    seat1 = lab.host("seat1", mac=SEAT1_MAC)
    seat2 = lab.host("seat2", mac=SEAT2_MAC)
    stranger = lab.host("stranger", mac=STRANGER_MAC)

    # -- DHCP: the reservation and the boot program ---------------------------------------------
    lease = _udhcpc(lab, seat1, tmp_path, "seat1")
    assert lease["ip"] == SEAT1_IP
    assert lease["hostname"] == "seat-01"
    assert lease["boot_file"] == "undionly.kpxe"
    assert lease["siaddr"] == SERVER_IP
    assert _udhcpc(lab, seat2, tmp_path, "seat2")["ip"] == SEAT2_IP

    # -- HTTP: its sanboot script ---------------------------------------------------------------
    script = _commands(_script(lab, seat1, SEAT1_MAC))
    assert f"iscsi:{SERVER_IP}::3260:0:{_target('seat-01')}" in script, script
    assert "sanboot" in script
    assert _initiator("seat-01") in script

    # -- iSCSI: its own disk, and nobody else's -------------------------------------------------
    listing = lab.run(
        seat1, ["iscsi-ls", "-i", _initiator("seat-01"), f"iscsi://{SERVER_IP}:3260"]
    ).stdout
    targets = [line.split()[0] for line in listing.splitlines() if line.startswith("Target:")]
    assert targets == [f"Target:{_target('seat-01')}"], listing
    url = f"iscsi://{SERVER_IP}:3260/{_target('seat-01')}/0"
    inquiry = lab.run(seat1, ["iscsi-inq", "-i", _initiator("seat-01"), url])
    assert "Peripheral Device Type" in inquiry.stdout or "DIRECT_ACCESS" in inquiry.stdout.upper()
    foreign = lab.run(seat2, ["iscsi-inq", "-i", _initiator("seat-02"), url], check=False)
    assert foreign.returncode != 0, foreign.stdout
    own = lab.run(
        seat2, ["iscsi-ls", "-i", _initiator("seat-02"), f"iscsi://{SERVER_IP}:3260"]
    ).stdout
    assert [line.split()[0] for line in own.splitlines() if line.startswith("Target:")] == [
        f"Target:{_target('seat-02')}"
    ], own
    written = _qemu_io(lab, seat1, "seat-01", "write -P 0x5a 1M 64k")
    assert written.returncode == 0, written.stdout + written.stderr

    # -- boot target and next-boot-once, through the CLI ----------------------------------------
    site.diskless("machine", "boot", "seat-01", "local")
    _wait(lambda: "local disk" in _script(lab, seat1, SEAT1_MAC), "the new boot target")
    assert "sanboot" not in _commands(_script(lab, seat1, SEAT1_MAC))
    site.diskless("machine", "once", "seat-01", "netbootxyz")
    shown_once = site.json("machine", "show", "seat-01")
    assert isinstance(shown_once, dict)
    assert shown_once["next_boot_once"] is not None
    _wait(lambda: "netboot.xyz" in _script(lab, seat1, SEAT1_MAC), "the once script")
    assert "local disk" in _script(lab, seat1, SEAT1_MAC)  # consumed: the usual target again
    assert "local disk" in _script(lab, seat1, SEAT1_MAC)

    # -- the boot timeline -----------------------------------------------------------------------
    def stages() -> set[str]:
        events = site.json("machine", "events", "seat-01")
        assert isinstance(events, list)
        return {event["stage"] for event in events}

    wanted = {"dhcp-offer", "dhcp-ack", "http-script", "iscsi-login", "iscsi-first-write"}
    _wait(lambda: wanted <= stages(), f"timeline stages {sorted(wanted)}")

    # -- an unknown MAC is discovered and approved ---------------------------------------------
    stranger_lease = _udhcpc(lab, stranger, tmp_path, "stranger")
    assert stranger_lease["ip"].startswith("198.18.0.1")  # from the pool, 100-149

    def discovered() -> list[str]:
        found = site.json("discovered", "list")
        assert isinstance(found, list)
        return [entry["mac"] for entry in found]

    _wait(lambda: STRANGER_MAC in discovered(), "the stranger to be discovered")
    site.diskless("discovered", "approve", STRANGER_MAC, "--hostname", "seat-03")
    assert STRANGER_MAC not in discovered()
    shown = site.json("machine", "show", "seat-03")
    assert isinstance(shown, dict)
    assert shown["mac"] == STRANGER_MAC

    # -- a restart loses nothing ---------------------------------------------------------------
    site.stop()
    site.start()
    after = site.json("machine", "list")
    assert isinstance(after, list)
    assert sorted(machine["hostname"] for machine in after) == ["seat-01", "seat-02", "seat-03"]
    assert _udhcpc(lab, stranger, tmp_path, "stranger-again")["ip"] == stranger_lease["ip"]
    site.diskless("machine", "boot", "seat-01", "sanboot")
    _wait(lambda: "sanboot" in _commands(_script(lab, seat1, SEAT1_MAC)), "sanboot again")
    read = _qemu_io(lab, seat1, "seat-01", "read -P 0x5a 1M 64k")
    assert read.returncode == 0, read.stdout + read.stderr
    assert "Pattern verification failed" not in read.stdout
    untouched = _qemu_io(lab, seat1, "seat-01", "read -P 0x67 0 1")  # 'g' of golden!
    assert untouched.returncode == 0
    assert "Pattern verification failed" not in untouched.stdout

    # -- a golden image updated through a super client, then rolled back ------------------------
    # seat-01 (persistent, its machine off) is the super client: what it wrote becomes version 2
    # of the image; seat-02 (reset-on-boot, on the latest version) boots it at its next boot.
    committed = site.json("machine", "disk", "commit", "seat-01", "--note", "pattern 5a")
    assert isinstance(committed, dict)
    assert committed["version"]["version"] == 2
    assert disk_of("seat-02")["version"] == 1
    _udhcpc(lab, seat2, tmp_path, "seat2-update")  # seat-02 reboots
    _wait(lambda: disk_of("seat-02")["version"] == 2, "seat-02 on version 2")
    updated = _qemu_io(lab, seat2, "seat-02", "read -v 1M 4")
    assert "5a 5a 5a 5a" in updated.stdout, updated.stdout + updated.stderr
    site.diskless("machine", "image", "seat-02", "debian", "--version", "1")
    _udhcpc(lab, seat2, tmp_path, "seat2-rollback")
    _wait(lambda: disk_of("seat-02")["version"] == 1, "seat-02 back on version 1")
    rolled_back = _qemu_io(lab, seat2, "seat-02", "read -v 1M 4")
    assert "67 6f 6c 64" in rolled_back.stdout, rolled_back.stdout + rolled_back.stderr  # "gold"
    site.stop()
