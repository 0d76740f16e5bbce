"""Whole-boot benchmark: one BIOS client boots Linux diskless through diskless and through the
reference stack (dnsmasq + busybox httpd + tgt), in one run, interleaved, phase by phase.

Each run boots QEMU (TCG, iPXE ROM) in a namespace lab (tests/e2e) twice per server: boot 1 on a
fresh disk, boot 2 reading what boot 1 wrote. Phases come from the serial log (host timestamps):
firmware → DHCP → script → kernel → init → iSCSI login → marker written. Goal: diskless ≤ 1.0x
the reference's whole-boot time.

    .venv/bin/python bench/boot.py [--runs 3] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from benchdocs import write_section  # noqa: E402
from bootlab import boot_lab  # noqa: E402
from diskless_stack import DisklessStack, LabMachine  # noqa: E402
from golden import golden_image  # noqa: E402
from reference_stack import ReferenceStack  # noqa: E402
from vm import DEFAULT_MAC, BootResult, Firmware, VmConfig, boot  # noqa: E402

PHASES = (
    "firmware→dhcp",
    "dhcp",
    "dhcp→script",
    "script→kernel",
    "kernel→init",
    "init→iscsi-login",
    "iscsi-login→wrote",
    "total (qemu→wrote)",
)


def boot_twice(server: str, work: Path) -> list[BootResult]:
    golden = golden_image()
    results = []
    with boot_lab(work) as lab:
        stack = (
            ReferenceStack(lab, golden)
            if server == "reference"
            else DisklessStack(lab, golden, [LabMachine(mac=DEFAULT_MAC, hostname="seat-01")])
        )
        with stack:
            for index in (1, 2):
                result = boot(lab.lan, lab.tap, work / f"boot{index}", VmConfig(Firmware.BIOS))
                if not result.ok:
                    raise SystemExit(f"{server} boot {index} failed:\n{result.describe()}")
                results.append(result)
                print(f"  {server} boot {index}: {result.timings.format()}", flush=True)
    return results


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(samples: dict[str, list[BootResult]]) -> str:
    lines = [
        "## Whole boot (QEMU client, BIOS iPXE ROM, TCG)",
        "",
        "One client boots Linux from its network disk: DHCP, the iPXE script over HTTP, `sanboot`",
        "over iSCSI, extlinux, the kernel, and the initramfs logging in again from the iBFT and",
        "writing a marker. Reference: dnsmasq (DHCP), busybox httpd (script), tgt (iSCSI, a raw",
        "copy of the disk); diskless: `diskless serve` alone, the disk a qcow2 overlay over the",
        "golden image. Seconds from the serial log, median (min-max) over every boot.",
        "",
        "| phase | diskless | reference | ratio |",
        "|---|---|---|---|",
    ]
    for phase in PHASES:
        ours = [v for r in samples["diskless"] if (v := r.timings.phases()[phase]) is not None]
        theirs = [v for r in samples["reference"] if (v := r.timings.phases()[phase]) is not None]
        ratio = (
            f"{statistics.median(ours) / statistics.median(theirs):.2f}"
            if ours and theirs and statistics.median(theirs) > 0
            else "-"
        )
        lines.append(f"| {phase} | {cell(ours)} | {cell(theirs)} | {ratio} |")
    lines += [
        "",
        f"Boots per server: {len(samples['diskless'])}. Goal: diskless ≤ 1.0x the reference's",
        "whole-boot time. Kernel decompression under TCG dominates both (`kernel→init`).",
        "",
        "<!-- Reproduce: .venv/bin/python bench/boot.py --runs 3 --write-docs -->",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the boot benchmark needs root for its network namespaces")
    samples: dict[str, list[BootResult]] = {"diskless": [], "reference": []}
    with tempfile.TemporaryDirectory(prefix="diskless-bench-boot-") as scratch:
        for run in range(args.runs):
            order = ("diskless", "reference") if run % 2 == 0 else ("reference", "diskless")
            for server in order:
                print(f"run {run + 1}/{args.runs}: {server}", flush=True)
                samples[server] += boot_twice(server, Path(scratch) / f"{server}-{run}")
    text = report(samples)
    print(text)
    if args.write_docs:
        print(f"updated {write_section('boot', text)}")


if __name__ == "__main__":
    main()
