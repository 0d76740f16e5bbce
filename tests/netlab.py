"""Throw-away network namespaces for tests that broadcast (DHCP) or boot VMs.

A :class:`NetLab` creates its namespaces (uniquely named per test run), joins them with veth pairs
to a bridge inside a "lan" namespace of its own, runs commands in them with ``nsenter --net``
(network namespace only, so files and mounts are shared with the test), and on close stops the
processes it started, by PID, and deletes every namespace, which removes every interface in them.
Nothing is ever created in, or routed to, the root namespace; addresses come from 198.18.0.0/15.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

_serial = itertools.count()


def require_netns() -> None:
    """Skip outside CI when namespaces cannot be made (not root); fail in CI."""
    problem = None
    if os.geteuid() != 0:
        problem = "network namespace tests need root"
    elif shutil.which("ip") is None or shutil.which("nsenter") is None:
        problem = "network namespace tests need iproute2 and util-linux (nsenter)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


class NetLab:
    """A bridge in its own namespace, and hosts (namespaces) plugged into it."""

    def __init__(self) -> None:
        self.prefix = f"dl{os.getpid() % 100000}x{next(_serial)}"
        self.lan = f"{self.prefix}-lan"
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._add_namespace(self.lan)
        self._ip(
            "-n",
            self.lan,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        )
        self._ip("-n", self.lan, "link", "set", "br0", "up")

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def _add_namespace(self, name: str) -> None:
        self._ip("netns", "add", name)
        self._namespaces.append(name)
        self._ip("-n", name, "link", "set", "lo", "up")
        self.run(name, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        self.run(name, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])

    def host(self, name: str, *, address: str | None = None, mac: str | None = None) -> str:
        """A namespace ``<prefix>-<name>`` with interface ``eth0`` on the bridge; its name."""
        namespace = f"{self.prefix}-{name}"
        self._add_namespace(namespace)
        port = f"p{len(self._namespaces)}"
        self._ip(
            "-n",
            namespace,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.lan,
        )
        if mac is not None:
            self._ip("-n", namespace, "link", "set", "eth0", "address", mac)
        if address is not None:
            self._ip("-n", namespace, "addr", "add", address, "dev", "eth0")
        self._ip("-n", namespace, "link", "set", "eth0", "up")
        self._ip("-n", self.lan, "link", "set", port, "master", "br0", "up")
        return namespace

    def tap(self, name: str = "tap0") -> str:
        """A persistent tap device on the bridge, in the lan namespace, for a VM; its name.

        Run QEMU in :attr:`lan` with ``-netdev tap,ifname=NAME,script=no,downscript=no``; the
        bridge has no STP and no forward delay, so the port forwards as soon as QEMU opens it.
        """
        self._ip("-n", self.lan, "tuntap", "add", "dev", name, "mode", "tap")
        self._ip("-n", self.lan, "link", "set", name, "master", "br0", "up")
        return name

    def router_advertisements(self, log: Path) -> subprocess.Popen[bytes]:
        """An RA-only dnsmasq on the bridge (IPv6 on br0 alone); stopped on close.

        iPXE waits for IPv6 autoconfiguration before it fetches its boot file: about 16 s per boot
        on a LAN without router advertisements. These carry a ULA prefix for SLAAC and router
        lifetime 0 (no default route); no DNS, no DHCPv4, no DHCPv6. The hosts keep IPv6 off.
        """
        self.run(self.lan, ["sysctl", "-qw", "net.ipv6.conf.br0.disable_ipv6=0"])
        self._ip("-n", self.lan, "addr", "add", "fd00:198:18::2/64", "dev", "br0", "nodad")
        return self.start(
            self.lan,
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=br0",
                "--bind-dynamic",
                "--enable-ra",
                "--dhcp-range=::,constructor:br0,ra-only,10m",
                "--ra-param=br0,10,0",
                "--pid-file=",
                f"--dhcp-leasefile={log.with_suffix('.leases')}",
                "--log-facility=-",
                "--user=root",
            ],
            log=log,
        )

    def command(self, namespace: str, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{namespace}", "--", *map(str, argv)]

    def run(
        self,
        namespace: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(namespace, argv),
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(
        self,
        namespace: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in ``namespace``, output to ``log``; stopped on close."""
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.command(namespace, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        """Stop one of our processes (nsenter execs the command, so the PID is the program's)."""
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        return process.returncode

    def close(self) -> None:
        for process in reversed(self._processes):
            self.stop(process)
        for namespace in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
        self._namespaces.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def wait_for_text(
    path: Path, text: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> str:
    """Wait until ``path`` contains ``text``; fail with its content on timeout or process exit."""
    deadline = time.monotonic() + timeout
    content = ""
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"{text!r} never appeared in {path}:\n{content[-4000:]}")
