"""`diskless serve` as a DHCP server inside throw-away namespaces, against real clients.

Full mode: busybox ``udhcpc`` and ISC ``dhclient`` get leases (and udhcpc renews); crafted
PXE/iPXE probes get the boot program for their architecture. Proxy mode: a foreign ``dnsmasq``
hands out addresses and diskless adds only the PXE answer, on 67 and on 4011. Everything runs
in namespaces the test makes (198.18.0.0/24), never in the root namespace.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import NetLab, require_netns, wait_for_text

PROBE = Path(__file__).parent / "dhcp_probe.py"
CLIENT_MAC = "52:54:00:18:00:10"
SERVER_IP = "198.18.0.1"
pytestmark = pytest.mark.slow


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_netns()
    with NetLab() as made:
        yield made


def _serve(lab: NetLab, namespace: str, tmp_path: Path, mode: str) -> subprocess.Popen[bytes]:
    machines = tmp_path / "machines.toml"
    machines.write_text(
        f'[[machine]]\nmac = "{CLIENT_MAC}"\nhostname = "seat-01"\nip = "198.18.0.170"\n',
        encoding="utf-8",
    )
    config = tmp_path / "diskless.toml"
    pool = 'pool_start = "198.18.0.100"\npool_end = "198.18.0.149"\n' if mode == "full" else ""
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[boot]\nmachines_file = "{machines}"\n'
        f'[dhcp]\ninterface = "eth0"\nmode = "{mode}"\nlease_time = 120\n{pool}'
        'routers = ["198.18.0.254"]\n'
        "[tftp]\nenabled = false\n[http]\nenabled = false\n"
        '[logging]\nformat = "json"\n',
        encoding="utf-8",
    )
    log = tmp_path / "serve.log"
    server = lab.start(
        namespace, [sys.executable, "-m", "diskless", "serve", "--config", config], log=log
    )
    wait_for_text(log, '"event": "dhcp listening"', timeout=30, process=server)
    return server


def _probe(lab: NetLab, namespace: str, *specs: dict[str, object]) -> list[list[dict[str, object]]]:
    result = lab.run(namespace, [sys.executable, PROBE, "eth0", json.dumps(list(specs))])
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _udhcpc_script(tmp_path: Path, *, configure: bool = False) -> tuple[Path, Path]:
    """A udhcpc script logging each event; with ``configure``, it also sets the address."""
    events = tmp_path / "udhcpc.events"
    script = tmp_path / "udhcpc.sh"
    setup = (
        'if [ "$1" = bound ]; then ip addr flush dev "$interface"; '
        'ip addr add "$ip/$mask" dev "$interface"; fi\n'
        if configure
        else ""
    )
    script.write_text(
        f"#!/bin/sh\n{setup}"
        f'echo "$1 ip=$ip subnet=$subnet router=$router hostname=$hostname '
        f'siaddr=$siaddr boot_file=$boot_file lease=$lease" >> {events}\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script, events


def test_full_mode_udhcpc_lease_renew_and_boot_files(lab: NetLab, tmp_path: Path) -> None:
    server_ns = lab.host("srv", address=f"{SERVER_IP}/24")
    client_ns = lab.host("cli", mac=CLIENT_MAC)
    stranger_ns = lab.host("other", mac="52:54:00:18:00:99")
    server = _serve(lab, server_ns, tmp_path, "full")

    script, events = _udhcpc_script(tmp_path, configure=True)
    udhcpc = lab.start(
        client_ns,
        ["udhcpc", "-f", "-i", "eth0", "-s", script, "-t", "5", "-T", "1", "-A", "1"],
        log=tmp_path / "udhcpc.log",
    )
    bound = wait_for_text(events, "bound", timeout=20, process=udhcpc)
    assert "ip=198.18.0.170" in bound  # the reservation
    assert "subnet=255.255.255.0" in bound
    assert "router=198.18.0.254" in bound
    assert "hostname=seat-01" in bound
    assert "lease=120" in bound
    udhcpc.send_signal(signal.SIGUSR1)  # renew now
    renewed = wait_for_text(events, "renew", timeout=20, process=udhcpc)
    assert "renew ip=198.18.0.170" in renewed
    lab.stop(udhcpc)

    # A stranger gets a pool address from ISC dhclient.
    dhclient_events = tmp_path / "dhclient.events"
    dhclient_script = tmp_path / "dhclient.sh"
    dhclient_script.write_text(
        f'#!/bin/sh\necho "$reason $new_ip_address $new_subnet_mask" >> {dhclient_events}\n',
        encoding="utf-8",
    )
    dhclient_script.chmod(0o755)
    dhclient = lab.start(
        stranger_ns,
        [
            "dhclient",
            "-d",
            "-1",
            "-v",
            "-lf",
            tmp_path / "dhclient.leases",
            "-pf",
            tmp_path / "dhclient.pid",
            "-sf",
            dhclient_script,
            "eth0",
        ],
        log=tmp_path / "dhclient.log",
    )
    lease = wait_for_text(dhclient_events, "BOUND", timeout=30, process=dhclient)
    assert "BOUND 198.18.0.100 255.255.255.0" in lease
    lab.stop(dhclient)

    # Crafted firmware and iPXE requests, one per architecture.
    vendors = {
        0: "PXEClient:Arch:00000:UNDI:002001",
        7: "PXEClient:Arch:00007:UNDI:003016",
        9: "PXEClient:Arch:00009:UNDI:003016",
        16: "HTTPClient:Arch:00016:UNDI:003001",
    }
    probes = [
        {"kind": "discover", "mac": CLIENT_MAC, "arch": arch, "vendor": vendor}
        for arch, vendor in vendors.items()
    ]
    probes.append({"kind": "discover", "mac": CLIENT_MAC, "arch": 7, "user_class": "iPXE"})
    results = _probe(lab, client_ns, *probes)
    files = [replies[0]["file"] for replies in results]
    assert files == [
        "undionly.kpxe",
        "ipxe.efi",
        "ipxe.efi",
        f"http://{SERVER_IP}:8080/ipxe/ipxe.efi",
        f"http://{SERVER_IP}:8080/boot/{CLIENT_MAC}.ipxe",
    ]
    assert all(replies[0]["yiaddr"] == "198.18.0.170" for replies in results)
    assert all(len(replies) == 1 for replies in results)

    # The leases were journaled; the server stops cleanly.
    assert lab.stop(server) == 0
    journal = (tmp_path / "data" / "state" / "dhcp-leases.jsonl").read_text()
    assert "198.18.0.170" in journal
    assert "198.18.0.100" in journal


def test_proxy_mode_beside_a_foreign_dnsmasq(lab: NetLab, tmp_path: Path) -> None:
    server_ns = lab.host("srv", address=f"{SERVER_IP}/24")
    router_ns = lab.host("router", address="198.18.0.254/24")
    client_ns = lab.host("cli", mac=CLIENT_MAC)
    lab.start(
        router_ns,
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
            "--no-ping",
            "--log-dhcp",
            "--dhcp-range=198.18.0.200,198.18.0.220,255.255.255.0,10m",
            f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
            "--pid-file=",
            "--log-facility=-",
        ],
        log=tmp_path / "dnsmasq.log",
    )
    server = _serve(lab, server_ns, tmp_path, "proxy")

    # A PXE DISCOVER draws two offers: an address from dnsmasq, boot information from us.
    (offers,) = _probe(
        lab,
        client_ns,
        {
            "kind": "discover",
            "mac": CLIENT_MAC,
            "arch": 0,
            "vendor": "PXEClient:Arch:00000:UNDI:002001",
            "wait": 2.0,
        },
    )
    by_sender = {offer["from"]: offer for offer in offers}
    assert set(by_sender) == {SERVER_IP, "198.18.0.254"}
    ours, theirs = by_sender[SERVER_IP], by_sender["198.18.0.254"]
    assert ours["yiaddr"] == "0.0.0.0"
    assert ours["file"] == "undionly.kpxe"
    assert ours["options"]["43"] == "060108ff"
    assert theirs["yiaddr"].startswith("198.18.0.2")

    # udhcpc (not a PXE client) gets its address from dnsmasq alone; we stay silent.
    script, events = _udhcpc_script(tmp_path)
    result = lab.run(
        client_ns,
        ["udhcpc", "-q", "-n", "-f", "-i", "eth0", "-s", script, "-t", "5", "-T", "1"],
        timeout=30,
    )
    assert result.returncode == 0
    bound = events.read_text()
    assert "bound ip=198.18.0.2" in bound
    bound_line = next(line for line in bound.splitlines() if line.startswith("bound"))
    address = bound_line.split("ip=")[1].split()[0]
    lab.run(client_ns, ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])

    # UEFI firmware and iPXE then ask us on 4011, unicast, and get their boot file.
    uefi, ipxe = _probe(
        lab,
        client_ns,
        {
            "kind": "request",
            "mac": CLIENT_MAC,
            "arch": 7,
            "vendor": "PXEClient:Arch:00007",
            "to": SERVER_IP,
            "port": 4011,
            "bind": address,
            "ciaddr": address,
        },
        {
            "kind": "request",
            "mac": CLIENT_MAC,
            "user_class": "iPXE",
            "to": SERVER_IP,
            "port": 4011,
            "bind": address,
            "ciaddr": address,
        },
    )
    assert [reply["type"] for reply in uefi] == ["ACK"]
    assert uefi[0]["file"] == "ipxe.efi"
    assert ipxe[0]["file"] == f"http://{SERVER_IP}:8080/boot/{CLIENT_MAC}.ipxe"
    assert lab.stop(server) == 0
    assert "proxy" in (tmp_path / "serve.log").read_text()
