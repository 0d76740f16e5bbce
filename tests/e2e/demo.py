"""Watch a virtual machine boot Linux diskless from diskless, on this machine, touching no LAN.

``scripts/lab`` runs this as root: it builds the small golden disk (cached), makes throw-away
network namespaces with a bridge and a tap (198.18.0.0/24, nothing in the root namespace),
starts ``diskless serve`` there as the only DHCP/TFTP/HTTP/iSCSI server, boots a QEMU client
whose NIC ROM is iPXE, streams its console, prints the boot timeline diskless recorded, boots it
a second time to show the disk kept what the first boot wrote, and removes everything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

# Run as a script: its own folder is on sys.path; the shared tests/netlab.py is one level up.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from bootlab import boot_lab, require_e2e
from diskless_stack import DisklessStack, LabMachine
from golden import golden_image
from vm import DEFAULT_MAC, Firmware, VmConfig, boot

from diskless.storage.disks import DiskMode


def follow(path: Path, stop: threading.Event) -> None:
    """Print the serial log as it grows (its lines carry two host timestamps: dropped here)."""
    position = 0
    while not stop.is_set():
        if path.exists():
            with path.open(errors="replace") as log:
                log.seek(position)
                for line in log:
                    print("  | " + line.rstrip("\n").split(" ", 2)[-1], flush=True)
                position = log.tell()
        time.sleep(0.2)


def show_timeline(stack: DisklessStack, mac: str, since: float) -> None:
    print(f"\nboot timeline diskless recorded for {mac}:")
    for line in stack.log.read_text(errors="replace").splitlines():
        if '"boot event"' in line:
            event = json.loads(line)
            if event["mac"] == mac and event["at"] >= since:
                print(f"  +{event['at'] - since:6.2f} s  {event['stage']:<18} {event['detail']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--firmware", choices=[f.value for f in Firmware], default="bios")
    parser.add_argument("--reset-on-boot", action="store_true", help="throw writes away per boot")
    parser.add_argument("--quiet", action="store_true", help="do not stream the VM console")
    args = parser.parse_args()
    require_e2e()
    mode = DiskMode.RESET_ON_BOOT if args.reset_on_boot else DiskMode.PERSISTENT
    machine = LabMachine(mac=DEFAULT_MAC, hostname="demo-pc", ip="198.18.0.170", mode=mode)
    print("building (or reusing) the golden disk...", flush=True)
    golden = golden_image()
    with tempfile.TemporaryDirectory(prefix="diskless-lab-") as scratch:
        work = Path(scratch)
        with boot_lab(work) as lab, DisklessStack(lab, golden, [machine]) as stack:
            print(f"diskless serve is running in namespace {lab.server} ({lab.server_ip})")
            for number in (1, 2):
                print(f"\n== boot {number} of {machine.hostname} ({args.firmware}) ==", flush=True)
                stop = threading.Event()
                workdir = work / f"boot{number}"
                if not args.quiet:
                    threading.Thread(
                        target=follow, args=(workdir / "serial.log", stop), daemon=True
                    ).start()
                since = time.time()
                result = boot(
                    lab.lan, lab.tap, workdir, VmConfig(Firmware(args.firmware), mac=machine.mac)
                )
                stop.set()
                time.sleep(0.3)
                print(f"\nverdict: {result.verdict} ({result.detail})")
                print(f"phases: {result.timings.format()}")
                print(f"the guest read:  {result.read}")
                print(f"the guest wrote: {result.wrote}")
                show_timeline(stack, machine.mac, since)
                if not result.ok:
                    return 1
    print("\nall namespaces and processes are gone again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
