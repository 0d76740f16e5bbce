"""The reference boot servers: dnsmasq (DHCP + TFTP), busybox httpd (iPXE script), tgtd (iSCSI).

They prove the golden disk and the harness independently of diskless; ``diskless serve`` replaces
all three by serving the same things on the same addresses (see :func:`ipxe_script` and the
constants below), and a test chooses which servers to start in the lab's server namespace::

    with boot_lab(tmp) as lab, ReferenceStack(lab, golden_image()) as stack:
        result = vm.boot(lab.lan, lab.tap, tmp / "boot1")
        assert result.ok, result.describe()
        read_root_file(stack.disk, "/marker")

What the client sees:

* DHCP from 198.18.0.1, pool .100-.199/24, no router or DNS; boot file by who asks: user class
  ``iPXE`` → ``http://198.18.0.1:8080/boot.ipxe`` (with option 175.176 ``no-pxedhcp`` = 1, which
  saves iPXE's 3 s ProxyDHCP wait); otherwise option 93 = 0 → TFTP ``undionly.kpxe``, 93 = 7/9 →
  TFTP ``ipxe.efi`` (siaddr 198.18.0.1, file name in option 67). No ping check before offers.
* ``boot.ipxe`` sets the initiator name ``iqn.2026-11.lab:client-<mac with hyphens>`` and
  ``sanboot iscsi:198.18.0.1:::1:iqn.2026-11.lab:disk1``.
* tgtd on 198.18.0.1:3260, target ``iqn.2026-11.lab:disk1``, the disk at **LUN 1** (tgt's LUN 0
  is its controller), no CHAP, any initiator. The backing file is a private copy of the golden
  disk (:attr:`ReferenceStack.disk`), never the cached image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
from bootlab import SERVER_INTERFACE, BootLab

from netlab import wait_for_text

HTTP_PORT = 8080
ISCSI_PORT = 3260
IQN_PREFIX = "iqn.2026-11.lab"
TARGET_IQN = f"{IQN_PREFIX}:disk1"
LUN = 1
DHCP_POOL = ("198.18.0.100", "198.18.0.199")
IPXE_DIR = Path("/usr/lib/ipxe")
TGT_SOCKETS = Path("/var/run/tgtd")


def initiator_iqn(mac: str) -> str:
    """The initiator name the script gives a MAC (what the guest then writes as its identity)."""
    return f"{IQN_PREFIX}:client-{mac.lower().replace(':', '-')}"


def ipxe_script(
    server: str, target: str = TARGET_IQN, lun: int = LUN, port: int = ISCSI_PORT
) -> str:
    """The iPXE script served at /boot.ipxe; its echo lines are timing marks in the serial log."""
    port_field = "" if port == ISCSI_PORT else str(port)
    uri = f"iscsi:{server}::{port_field}:{lun}:{target}"
    return f"""#!ipxe
echo LAB-IPXE-SCRIPT platform=${{platform}} arch=${{buildarch}} mac=${{netX/mac}} ip=${{netX/ip}} next-server=${{next-server}}
set initiator-iqn {IQN_PREFIX}:client-${{netX/mac:hexhyp}}
echo LAB-IPXE-SANBOOT ${{initiator-iqn}} {uri}
sanboot {uri} || goto failed
:failed
echo LAB-IPXE-FAIL sanboot errno=${{errno}}
sleep 2
exit 1
"""  # noqa: E501


def _free_tgt_control_port() -> int:
    """A tgtd control port whose socket file nobody else has (the socket dir is host-wide)."""
    base = 20000 + os.getpid() % 5000 * 2
    for port in range(base, base + 2000):
        if not (TGT_SOCKETS / f"socket.{port}").exists():
            return port
    raise RuntimeError("no free tgtd control port")


class ReferenceStack:
    """dnsmasq, busybox httpd and tgtd in the lab's server namespace; stopped on exit."""

    def __init__(
        self, lab: BootLab, golden: Path, *, name: str = "reference", script_lun: int = LUN
    ) -> None:
        """``script_lun`` other than 1 makes the script ask for the wrong LUN (negative tests)."""
        self.lab = lab
        self.script_lun = script_lun
        self.workdir = lab.workdir / name
        self.disk = self.workdir / "disk1.raw"
        self.script_url = f"http://{lab.server_ip}:{HTTP_PORT}/boot.ipxe"
        self.target = TARGET_IQN
        self._golden = golden
        self._control: int | None = None
        self._tgtd: subprocess.Popen[bytes] | None = None
        self._others: list[subprocess.Popen[bytes]] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._golden, self.disk)
            self._start_tgtd()
            self._start_httpd()
            self._start_dnsmasq()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for process in reversed(self._others):
            self.lab.net.stop(process)
        self._others.clear()
        self._stop_tgtd()

    def reset_disk(self) -> None:
        """Put the golden content back in place (tgtd keeps the file open)."""
        with self._golden.open("rb") as source, self.disk.open("r+b") as target:
            shutil.copyfileobj(source, target, 1 << 20)

    # -- tgtd ------------------------------------------------------------------------------------

    def _tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self._control is not None
        return subprocess.run(
            ["tgtadm", "-C", str(self._control), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def _start_tgtd(self) -> None:
        self._control = _free_tgt_control_port()
        portal = f"portal={self.lab.server_ip}:{ISCSI_PORT}"
        self._tgtd = self.lab.net.start(
            self.lab.server,
            ["tgtd", "-f", "-C", str(self._control), "--iscsi", portal],
            log=self.workdir / "tgtd.log",
        )
        deadline = time.monotonic() + 20
        while self._tgtadm("--op", "show", "--mode", "sys", check=False).returncode != 0:
            if self._tgtd.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "tgtd.log").read_text(errors="replace")
                pytest.fail(f"tgtd did not come up:\n{log}")
            time.sleep(0.1)
        iscsi = ("--lld", "iscsi")
        self._tgtadm(*iscsi, "--op", "new", "--mode", "target", "--tid", "1", "-T", self.target)
        self._tgtadm(
            *iscsi, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(LUN),
            "-b", str(self.disk),
        )  # fmt: skip
        self._tgtadm(*iscsi, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")

    def _stop_tgtd(self) -> None:
        if self._control is None:
            return
        if self._tgtd is not None and self._tgtd.poll() is None:
            # tgtd ignores SIGTERM while targets exist: take them down through tgtadm first.
            iscsi = ("--lld", "iscsi")
            self._tgtadm(*iscsi, "--op", "update", "--mode", "target", "--tid", "1",
                         "-n", "state", "-v", "offline", check=False)  # fmt: skip
            self._tgtadm(*iscsi, "--op", "delete", "--mode", "target", "--tid", "1", "--force",
                         check=False)  # fmt: skip
            self._tgtadm("--op", "delete", "--mode", "system", check=False)
            try:
                self._tgtd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.lab.net.stop(self._tgtd)
        # Only our own control socket: others' tgtd instances share the directory.
        for suffix in ("", ".lock"):
            (TGT_SOCKETS / f"socket.{self._control}{suffix}").unlink(missing_ok=True)
        self._control = None

    # -- HTTP and DHCP/TFTP ----------------------------------------------------------------------

    def _start_httpd(self) -> None:
        docroot = self.workdir / "http"
        docroot.mkdir(exist_ok=True)
        (docroot / "boot.ipxe").write_text(ipxe_script(self.lab.server_ip, lun=self.script_lun))
        address = f"{self.lab.server_ip}:{HTTP_PORT}"
        self._others.append(
            self.lab.net.start(
                self.lab.server,
                ["busybox", "httpd", "-f", "-vv", "-p", address, "-h", docroot],
                log=self.workdir / "httpd.log",
            )
        )
        deadline = time.monotonic() + 20
        while True:
            fetched = self.lab.net.run(
                self.lab.server,
                ["busybox", "wget", "-q", "-O", "-", self.script_url],
                check=False,
                timeout=10,
            )
            if fetched.returncode == 0 and fetched.stdout.startswith("#!ipxe"):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"busybox httpd does not serve {self.script_url}: {fetched.stderr}")
            time.sleep(0.1)

    def _start_dnsmasq(self) -> None:
        tftp = self.workdir / "tftp"
        tftp.mkdir(exist_ok=True)
        for name in ("undionly.kpxe", "ipxe.efi"):
            shutil.copyfile(IPXE_DIR / name, tftp / name)  # ipxe.efi links into /boot
        server = self.lab.server_ip
        log = self.workdir / "dnsmasq.log"
        self._others.append(
            self.lab.net.start(
                self.lab.server,
                [
                    "dnsmasq",
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--port=0",
                    f"--interface={SERVER_INTERFACE}",
                    "--bind-dynamic",
                    "--except-interface=lo",
                    "--dhcp-authoritative",
                    f"--dhcp-range={DHCP_POOL[0]},{DHCP_POOL[1]},255.255.255.0,10m",
                    "--dhcp-option=option:router",
                    "--dhcp-option=option:dns-server",
                    "--no-ping",
                    "--log-dhcp",
                    "--enable-tftp",
                    f"--tftp-root={tftp}",
                    "--pid-file=",
                    f"--dhcp-leasefile={self.workdir / 'dnsmasq.leases'}",
                    "--log-facility=-",
                    "--user=root",
                    "--dhcp-userclass=set:ipxe,iPXE",
                    "--dhcp-match=set:bios,option:client-arch,0",
                    "--dhcp-match=set:efi64,option:client-arch,7",
                    "--dhcp-match=set:efi64,option:client-arch,9",
                    f"--dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe,,{server}",
                    f"--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,{server}",
                    f"--dhcp-boot=tag:ipxe,{self.script_url}",
                    "--dhcp-option=tag:ipxe,encap:175,176,1",
                ],
                log=log,
            )
        )
        wait_for_text(log, "TFTP root is", timeout=20, process=self._others[-1])
