"""The virtual LAN an end-to-end boot runs on, whoever serves it.

::

    netns <prefix>-srv                       netns <prefix>-lan
    eth0 198.18.0.1/24  <--veth-->  pN --+-- br0 (IPv6 here only: RA responder)
                                          +-- tap0 <-- qemu-system-x86_64 (vm.boot)

:func:`boot_lab` builds it on :class:`netlab.NetLab` and tears it down (every process it started,
by PID, then the namespaces, which removes the veths, the bridge and the tap). The servers under
test (:mod:`reference_stack`, or ``diskless serve``) run in :attr:`BootLab.server` on ``eth0``;
:func:`vm.boot` runs QEMU in :attr:`BootLab.lan` on :attr:`BootLab.tap`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netlab import NetLab, require_netns

SERVER_IP = "198.18.0.1"
PREFIX_LENGTH = 24
SERVER_INTERFACE = "eth0"  # inside the server namespace; never the host's

# What any end-to-end boot needs on the host, whichever server it runs against.
E2E_TOOLS = (
    "qemu-system-x86_64",
    "nsenter",
    "ip",
    "dnsmasq",  # the RA responder, and the reference DHCP/TFTP server
    "sfdisk",
    "mkfs.ext4",
    "e2fsck",
    "debugfs",
    "extlinux",
    "mkfs.vfat",
    "mmd",
    "mcopy",
    "grub-mkstandalone",
    "cpio",
    "modprobe",
    "iscsistart",
)
E2E_FILES = (
    "/bin/busybox",
    "/usr/lib/syslinux/mbr/mbr.bin",
    "/usr/lib/ipxe/undionly.kpxe",
    "/usr/lib/ipxe/ipxe.efi",
    "/usr/lib/ipxe/ipxe.lkrn",
    "/usr/lib/ipxe/qemu/efi-virtio.rom",
    "/usr/lib/grub/x86_64-efi",
    "/usr/share/ovmf/OVMF.fd",
)


def require_e2e(*tools: str) -> None:
    """Skip locally, fail in CI (``CI`` set), when the host cannot run an end-to-end boot."""
    require_netns()
    missing = [tool for tool in (*E2E_TOOLS, *tools) if shutil.which(tool) is None]
    missing += [path for path in E2E_FILES if not Path(path).exists()]
    if not any(Path("/boot").glob("vmlinuz-*")):
        missing.append("/boot/vmlinuz-* (linux-image-amd64)")
    if missing:
        problem = (
            f"end-to-end boot tests need {', '.join(missing)} (scripts/setup.sh installs them)"
        )
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


@dataclass(frozen=True)
class BootLab:
    net: NetLab
    server: str  # namespace of the boot servers; SERVER_IP on SERVER_INTERFACE
    lan: str  # namespace of the bridge and the tap, where QEMU runs
    tap: str
    workdir: Path
    server_ip: str = SERVER_IP


@contextlib.contextmanager
def boot_lab(workdir: Path, *, router_advertisements: bool = True) -> Iterator[BootLab]:
    """A server namespace and a tap on one bridge; RA responder on by default (saves ~16 s)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with NetLab() as net:
        server = net.host("srv", address=f"{SERVER_IP}/{PREFIX_LENGTH}")
        tap = net.tap("tap0")
        if router_advertisements:
            net.router_advertisements(workdir / "ra-dnsmasq.log")
        yield BootLab(net=net, server=server, lan=net.lan, tap=tap, workdir=workdir)
