"""The golden disk the end-to-end tests boot: Debian's own kernel, a tiny iSCSI-root initramfs.

Built at test time from the host's Debian packages (no downloads), once per set of inputs, and
cached under ``$DISKLESS_E2E_CACHE`` (default ``/var/tmp/diskless-e2e``)::

    python tests/e2e/golden.py OUT.raw        # build (or take from the cache) and copy to OUT

Layout (128 MiB raw, MBR with syslinux ``mbr.bin``, disk id 0x4e424c31):

* p1, sectors 2048..196607, type 0x83, **active**: ext4 ``labroot`` with ``/boot/vmlinuz``,
  ``/boot/initrd.img``, ``/boot/extlinux/{extlinux.conf,ldlinux.sys,ldlinux.c32}``, ``/marker``
  and ``/boot-history.log``. BIOS: INT13 → mbr.bin → extlinux → Linux.
* p2, the last 32 MiB, type 0xef: FAT ``LABESP`` with ``\\EFI\\BOOT\\BOOTX64.EFI``, a standalone
  GRUB whose embedded config boots the same kernel from ``labroot``. UEFI: OVMF → GRUB → Linux.

The initramfs ``/init`` (busybox) loads virtio-net, ext4, sd_mod and the iSCSI/iBFT modules, logs
in again with ``iscsistart -b`` from the iBFT that iPXE's ``sanboot`` left, mounts ``labroot`` from
the network disk, and talks to the test over the serial console:

====================================  ===================================================
``LAB-T <event> <uptime>``            guest timing point (init-start, modules-loaded,
                                      net-up, iscsi-login, disk-found, mounted, done)
``LAB-READ: <marker or <none>>``      what ``/marker`` held when the guest found it
``LAB-WROTE: <new marker>``           the new marker is on the disk and synced: success
``LAB-FAIL: <reason>``                anything went wrong; the guest powers off
====================================  ===================================================

The marker is ``boot-count=N writer=<identity> ip=<iBFT ip> uptime=<s>``; the identity is the
``lab.id=`` kernel argument if given, else the iBFT initiator name (which the iPXE script sets
per machine). Each boot increments N and appends the line to ``/boot-history.log``.

Loop devices: everything is built into plain files (``mkfs.ext4 -d`` fills the ext4 partition
from a directory, ``mkfs.vfat --offset`` and mtools write the ESP in place) except one step: the
ext4 partition file is loop-mounted (``mount -o loop``, autoclear) once, because ``extlinux
--install`` only works on a mounted file system, and the kernel and initrd are copied in through
that mount (``-d`` would make them sparse, which extlinux cannot load). It is unmounted at once.
There is no extlinux installer for unmounted ext4; a sandbox without loop devices cannot build the
BIOS boot path (``build_golden`` then fails with the mount error).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Bump whenever the recipe below changes in a way the other inputs do not capture.
GOLDEN_SCRIPT_VERSION = "4"

SECTOR = 512
DISK_SECTORS = 262_144  # 128 MiB
P1_START = 2048
ESP_SECTORS = 65_536  # 32 MiB
P2_START = DISK_SECTORS - ESP_SECTORS  # 196608
P1_SECTORS = P2_START - P1_START
DISK_ID = "0x4e424c31"
ROOT_LABEL = "labroot"
ESP_LABEL = "LABESP"
P1_OFFSET = P1_START * SECTOR
P2_OFFSET = P2_START * SECTOR

KERNEL_CMDLINE = f"console=ttyS0,115200 panic=10 lab.label={ROOT_LABEL}"

MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
BUSYBOX = Path("/bin/busybox")
ISCSISTART = Path("/usr/sbin/iscsistart")

# Wanted modules in load order; "?" marks modules that may fail to load (CPU-specific crypto that
# TCG's default CPU model lacks). busybox insmod resolves nothing, so soft dependencies
# (crc32c for ext4/jbd2, crct10dif and crc64-rocksoft for t10-pi) come before their users.
WANTED_MODULES = (
    "virtio_pci",
    "virtio_net",
    "crc32c_generic",
    "?crc32c_intel",
    "crc16",
    "ext4",
    "crct10dif_generic",
    "?crct10dif_pclmul",
    "crc64_rocksoft_generic",
    "sd_mod",
    "scsi_transport_iscsi",
    "libiscsi",
    "libiscsi_tcp",
    "iscsi_tcp",
    "iscsi_boot_sysfs",
    "iscsi_ibft",
)

EXTLINUX_CONF = f"""\
DEFAULT lab
PROMPT 0
TIMEOUT 0
SAY LAB-EXTLINUX: booting /boot/vmlinuz
LABEL lab
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND {KERNEL_CMDLINE}
"""

# No `terminal_output serial`: OVMF already mirrors ConOut to COM1 (characters would double).
GRUB_CFG = f"""\
set timeout=0
echo LAB-GRUB-EFI: searching {ROOT_LABEL}
search --no-floppy --label {ROOT_LABEL} --set=root
linux /boot/vmlinuz {KERNEL_CMDLINE}
initrd /boot/initrd.img
echo LAB-GRUB-EFI: booting
boot
echo LAB-FAIL: grub could not boot /boot/vmlinuz from {ROOT_LABEL}
sleep 2
halt
"""
GRUB_MODULES = (
    "part_msdos ext2 fat search search_label linux serial terminal echo normal sleep halt"
)

INIT_SCRIPT = r"""#!/bin/sh
# diskless e2e guest: log in again from the iBFT, read and write /marker, power off.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /mnt /var/lib/iscsi
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

LABEL=labroot
ID=
SHELL_ON_EXIT=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        lab.label=*) LABEL=${arg#lab.label=} ;;
        lab.id=*) ID=${arg#lab.id=} ;;
        lab.shell=1) SHELL_ON_EXIT=1 ;;
        lab.debug=1) set -x ;;
    esac
done

uptime_s() { read -r up _rest </proc/uptime; echo "$up"; }
mark() { echo "LAB-T $1 $(uptime_s)"; }
power_off() {
    sync
    if [ "$SHELL_ON_EXIT" = 1 ]; then sh; fi
    sleep 1
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 30
}
fail() { echo "LAB-FAIL: $*"; power_off; }

mark init-start
while read -r module; do
    case "$module" in
        "") ;;
        "?"*) insmod "${module#?}" 2>/dev/null || echo "LAB-NOTE: optional ${module#?} absent" ;;
        *) insmod "$module" || fail "insmod $module" ;;
    esac
done </etc/modules.order
mark modules-loaded

IBFT=/sys/firmware/ibft
[ -d "$IBFT/target0" ] || fail "no iBFT target0 (not booted by iPXE sanboot?)"
INITIATOR=$(cat "$IBFT/initiator/initiator-name")
MAC=$(cat "$IBFT/ethernet0/mac")
IP=$(cat "$IBFT/ethernet0/ip-addr")
MASK=$(cat "$IBFT/ethernet0/subnet-mask")
GATEWAY=$(cat "$IBFT/ethernet0/gateway" 2>/dev/null)
TARGET=$(cat "$IBFT/target0/target-name")
echo "LAB-IBFT: initiator=$INITIATOR mac=$MAC ip=$IP/$MASK gw=$GATEWAY target=$TARGET"

IFACE=
i=0
while [ -z "$IFACE" ] && [ $i -lt 50 ]; do
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address" 2>/dev/null)" = "$MAC" ] && IFACE=${dev##*/}
    done
    [ -n "$IFACE" ] || { sleep 0.1; i=$((i + 1)); }
done
[ -n "$IFACE" ] || fail "no network interface with MAC $MAC"
ip link set lo up
ip link set "$IFACE" up || fail "cannot bring $IFACE up"
iscsistart -N >/dev/null 2>&1
if ! ip -4 addr show dev "$IFACE" | grep -q "inet "; then
    ifconfig "$IFACE" "$IP" netmask "$MASK" up || fail "cannot configure $IFACE"
fi
case "$GATEWAY" in
    "" | 0.0.0.0) ;;
    *) ip route add default via "$GATEWAY" 2>/dev/null ;;
esac
mark net-up

iscsistart -b || fail "iscsistart -b (login to $TARGET as $INITIATOR)"
mark iscsi-login

DEV=
i=0
while [ $i -lt 100 ]; do
    DEV=$(findfs "LABEL=$LABEL" 2>/dev/null) && [ -n "$DEV" ] && break
    DEV=
    sleep 0.2
    i=$((i + 1))
done
[ -n "$DEV" ] || fail "no file system labelled $LABEL on the iSCSI disk"
mark disk-found
mount -t ext4 "$DEV" /mnt || fail "cannot mount $DEV"
mark mounted

OLD=
[ -f /mnt/marker ] && OLD=$(cat /mnt/marker)
echo "LAB-READ: ${OLD:-<none>}"
COUNT=$(echo "$OLD" | sed -n 's/.*boot-count=\([0-9][0-9]*\).*/\1/p')
COUNT=${COUNT:-0}
NEW="boot-count=$((COUNT + 1)) writer=${ID:-$INITIATOR} ip=$IP uptime=$(uptime_s)"
echo "$NEW" >/mnt/marker.tmp || fail "cannot write /marker.tmp"
mv /mnt/marker.tmp /mnt/marker || fail "cannot rename /marker.tmp"
echo "$NEW" >>/mnt/boot-history.log || fail "cannot append /boot-history.log"
sync
umount /mnt || fail "cannot unmount $DEV"
sync
echo "LAB-WROTE: $NEW"
mark done
power_off
"""


class GoldenError(RuntimeError):
    """The golden disk could not be built on this host."""


@dataclass(frozen=True)
class GoldenInputs:
    """Everything the image depends on; its hash names the cached file."""

    kernel_version: str

    @property
    def kernel(self) -> Path:
        return Path(f"/boot/vmlinuz-{self.kernel_version}")

    @property
    def modules(self) -> Path:
        return Path(f"/lib/modules/{self.kernel_version}")

    def key(self) -> str:
        digest = hashlib.sha256()
        for part in (
            GOLDEN_SCRIPT_VERSION,
            self.kernel_version,
            INIT_SCRIPT,
            EXTLINUX_CONF,
            GRUB_CFG,
            GRUB_MODULES,
            "\n".join(WANTED_MODULES),
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        for path in (self.kernel, BUSYBOX, ISCSISTART):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
        return digest.hexdigest()[:16]


def default_kernel_version() -> str:
    """``$DISKLESS_E2E_KERNEL``, else the newest ``/boot/vmlinuz-*`` with its modules."""
    wanted = os.environ.get("DISKLESS_E2E_KERNEL")
    if wanted:
        return wanted
    versions = [
        path.name.removeprefix("vmlinuz-")
        for path in Path("/boot").glob("vmlinuz-*")
        if Path("/lib/modules", path.name.removeprefix("vmlinuz-")).is_dir()
    ]
    if not versions:
        raise GoldenError(
            "no /boot/vmlinuz-KVER with /lib/modules/KVER (install linux-image-amd64)"
        )
    return max(versions, key=_version_key)


def _version_key(version: str) -> list[tuple[int, str]]:
    return [
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.-]", version)
    ]


def cache_dir() -> Path:
    return Path(os.environ.get("DISKLESS_E2E_CACHE", "/var/tmp/diskless-e2e"))


def golden_image(kernel_version: str | None = None, cache: Path | None = None) -> Path:
    """The cached golden disk for these inputs, built on first use (never write to it)."""
    inputs = GoldenInputs(kernel_version or default_kernel_version())
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    image = cache / f"golden-{inputs.kernel_version}-{inputs.key()}.raw"
    with (cache / "golden.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time, the others reuse its result
        if not image.exists():
            partial = image.with_suffix(f".partial-{os.getpid()}")
            try:
                build_golden(partial, inputs)
                partial.rename(image)
            finally:
                partial.unlink(missing_ok=True)
            _prune(cache, keep=image)
        os.utime(image)  # mtime = last use, for pruning
    return image


STALE_AFTER = 7 * 24 * 3600.0


def _prune(cache: Path, keep: Path) -> None:
    """Drop images of other inputs unused for a week (other checkouts may still use newer ones)."""
    now = time.time()
    for old in cache.glob("golden-*.raw"):
        if old != keep and now - old.stat().st_mtime > STALE_AFTER:
            old.unlink(missing_ok=True)


def _run(argv: Sequence[str | os.PathLike[str]], **env: str) -> str:
    result = subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        env={**os.environ, **env} if env else None,
        check=False,
    )
    if result.returncode != 0:
        raise GoldenError(
            f"{' '.join(map(str, argv))} failed ({result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise GoldenError(f"missing tools for the golden disk: {', '.join(missing)}")


def build_golden(out: Path, inputs: GoldenInputs) -> None:
    """Write the golden disk to ``out`` (about 5 s; as root, for the extlinux loop mount)."""
    _need("sfdisk", "mkfs.ext4", "extlinux", "mkfs.vfat", "mmd", "mcopy", "grub-mkstandalone")
    _need("cpio", "modprobe", "mount", "umount")
    for path in (inputs.kernel, inputs.modules, MBR_BIN, BUSYBOX, ISCSISTART):
        if not path.exists():
            raise GoldenError(f"{path} is missing")
    with tempfile.TemporaryDirectory(prefix="golden-", dir=out.parent) as scratch_name:
        scratch = Path(scratch_name)
        initrd = scratch / "initrd.img"
        build_initramfs(initrd, inputs)
        root = _root_tree(scratch / "root")
        part1 = scratch / "p1.ext4"
        _build_root_partition(part1, root, {"vmlinuz": inputs.kernel, "initrd.img": initrd})
        efi = scratch / "BOOTX64.EFI"
        _build_grub_efi(efi, scratch)

        with out.open("wb") as disk:
            disk.truncate(DISK_SECTORS * SECTOR)
        table = (
            f"label: dos\nlabel-id: {DISK_ID}\nunit: sectors\n\n"
            f"start={P1_START}, size={P1_SECTORS}, type=83, bootable\n"
            f"start={P2_START}, size={ESP_SECTORS}, type=ef\n"
        )
        result = subprocess.run(
            ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(out)],
            input=table,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise GoldenError(f"sfdisk failed: {result.stderr.strip()}")
        with out.open("r+b") as disk:
            disk.write(MBR_BIN.read_bytes()[:440])  # boot code only: keep the table and id
            disk.seek(P1_OFFSET)
            with part1.open("rb") as source:
                shutil.copyfileobj(source, disk, 1 << 20)

        _run(["mkfs.vfat", "-n", ESP_LABEL, "--offset", str(P2_START), out, str(ESP_SECTORS // 2)])
        image = f"{out}@@{P2_OFFSET}"
        _run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"], MTOOLS_SKIP_CHECK="1")
        _run(["mcopy", "-i", image, efi, "::/EFI/BOOT/BOOTX64.EFI"], MTOOLS_SKIP_CHECK="1")
        if out.stat().st_size != DISK_SECTORS * SECTOR:
            raise GoldenError(f"{out} has the wrong size after mkfs.vfat")


def _root_tree(root: Path) -> Path:
    (root / "boot" / "extlinux").mkdir(parents=True)
    (root / "boot" / "extlinux" / "extlinux.conf").write_text(EXTLINUX_CONF)
    built = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    seed = f"boot-count=0 writer=build built={built}\n"
    (root / "marker").write_text(seed)
    (root / "boot-history.log").write_text(seed)
    return root


def _build_root_partition(part: Path, root: Path, boot_files: dict[str, Path]) -> None:
    """ext4 from ``root``; then, loop-mounted, the boot files and extlinux.

    The kernel and initrd are copied through the mount, not with ``mkfs.ext4 -d``: ``-d`` turns
    runs of zeros into holes, and extlinux 6.04 fails to load a sparse kernel (``Loading
    /boot/vmlinuz... failed: I/O error``).
    """
    with part.open("wb") as handle:
        handle.truncate(P1_SECTORS * SECTOR)
    # The conservative feature set extlinux 6.04 and GRUB 2.06 understand.
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            ROOT_LABEL,
            "-O",
            "^64bit,^metadata_csum,^orphan_file",
            "-E",
            "root_owner=0:0",
            "-d",
            root,
            part,
        ]
    )
    with _loop_mounted(part, part.with_name("p1.mnt")) as mountpoint:
        for name, source in boot_files.items():
            shutil.copyfile(source, mountpoint / "boot" / name)
        _run(["extlinux", "--install", mountpoint / "boot" / "extlinux"])
    _run(["e2fsck", "-fn", part])


@contextlib.contextmanager
def _loop_mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir()
    try:
        _run(["mount", "-o", "loop", "-t", "ext4", image, mountpoint])
        try:
            yield mountpoint
        finally:
            _run(["umount", mountpoint])
    finally:
        mountpoint.rmdir()


def _build_grub_efi(out: Path, scratch: Path) -> None:
    config = scratch / "grub.cfg"
    config.write_text(GRUB_CFG)
    _run(
        [
            "grub-mkstandalone",
            "-O",
            "x86_64-efi",
            "-o",
            out,
            f"--modules={GRUB_MODULES}",
            f"--install-modules={GRUB_MODULES}",
            "--locales=",
            "--fonts=",
            "--themes=",
            f"boot/grub/grub.cfg={config}",
        ]
    )


# -- initramfs ------------------------------------------------------------------------------------


def resolve_modules(kernel_version: str) -> list[tuple[str, bool]]:
    """``(module path, optional)`` in load order, dependencies first, without duplicates."""
    builtin_file = Path(f"/lib/modules/{kernel_version}/modules.builtin")
    builtin = {
        Path(line).name.removesuffix(".ko").replace("-", "_")
        for line in (builtin_file.read_text().split() if builtin_file.exists() else [])
    }
    seen: set[str] = set()
    ordered: list[tuple[str, bool]] = []
    for wanted in WANTED_MODULES:
        optional = wanted.startswith("?")
        name = wanted.removeprefix("?")
        if name in builtin:
            continue
        result = subprocess.run(
            ["modprobe", "-S", kernel_version, "--show-depends", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            if optional:
                continue
            raise GoldenError(f"modprobe cannot resolve {name}: {result.stderr.strip()}")
        for line in result.stdout.splitlines():
            words = line.split()
            if len(words) < 2 or words[0] != "insmod" or words[1] in seen:
                continue
            path = words[1]
            seen.add(path)
            module = _module_name(path)
            is_optional = module in {w.removeprefix("?") for w in WANTED_MODULES if w[0] == "?"}
            ordered.append((path, is_optional))
    return ordered


def _module_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def build_initramfs(out: Path, inputs: GoldenInputs) -> None:
    """A gzip newc cpio: static busybox, iscsistart and its libraries, modules, ``/init``."""
    with tempfile.TemporaryDirectory(prefix="initramfs-", dir=out.parent) as tree_name:
        tree = Path(tree_name)
        for directory in ("bin", "sbin", "etc/iscsi", "proc", "sys", "dev", "mnt", "run", "tmp"):
            (tree / directory).mkdir(parents=True, exist_ok=True)
        (tree / "var/lib/iscsi").mkdir(parents=True)
        shutil.copyfile(BUSYBOX, tree / "bin/busybox")
        (tree / "bin/busybox").chmod(0o755)
        (tree / "bin/sh").symlink_to("busybox")
        init = tree / "init"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)

        _copy_program(ISCSISTART, tree)
        (tree / "etc/iscsi/iscsid.conf").write_text("")
        (tree / "etc/iscsi/initiatorname.iscsi").write_text(
            "InitiatorName=iqn.2026-11.lab:placeholder\n"
        )

        order = []
        for path, optional in resolve_modules(inputs.kernel_version):
            target = _copy_module(Path(path), tree)
            order.append(("?" if optional else "") + target)
        (tree / "etc/modules.order").write_text("\n".join(order) + "\n")

        listing = subprocess.run(
            ["find", "."], cwd=tree, capture_output=True, text=True, check=True
        ).stdout
        names = "\n".join(sorted(listing.split("\n")[:-1])) + "\n"
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            cwd=tree,
            input=names.encode(),
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise GoldenError(f"cpio failed: {archive.stderr.decode(errors='replace')}")
        out.write_bytes(gzip.compress(archive.stdout, compresslevel=9, mtime=0))


def _copy_program(program: Path, tree: Path) -> None:
    _install(program, tree)
    for line in _run(["ldd", program]).splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            _install(Path(match.group(1)), tree)


def _install(path: Path, tree: Path) -> None:
    target = tree / path.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)  # follows symlinks: the file lands under the listed name
    target.chmod(0o755)


def _copy_module(path: Path, tree: Path) -> str:
    """Copy one module uncompressed (busybox insmod reads plain .ko); its path in the tree."""
    data = path.read_bytes()
    name = str(path)
    if name.endswith(".xz"):
        data, name = lzma.decompress(data), name.removesuffix(".xz")
    elif name.endswith(".gz"):
        data, name = gzip.decompress(data), name.removesuffix(".gz")
    elif name.endswith(".zst"):
        _need("zstd")
        data = subprocess.run(["zstd", "-dc", name], capture_output=True, check=True).stdout
        name = name.removesuffix(".zst")
    target = tree / name.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return name


# -- reading the disk from the host ---------------------------------------------------------------


def read_root_file_bytes(disk: Path, path: str) -> bytes:
    """A file from ``labroot`` inside a raw disk image (debugfs, no mount, read-only)."""
    _need("debugfs")
    result = subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{disk}?offset={P1_OFFSET}"],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0 or b"File not found" in result.stderr:
        raise GoldenError(f"cannot read {path} from {disk}: {result.stderr.decode().strip()}")
    return result.stdout


def read_root_file(disk: Path, path: str) -> str:
    return read_root_file_bytes(disk, path).decode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the diskless e2e golden disk.")
    parser.add_argument("out", type=Path, help="where to copy the 128 MiB raw image")
    parser.add_argument("--kernel-version", help="default: newest /boot/vmlinuz-* with modules")
    parser.add_argument("--cache", type=Path, help="default: $DISKLESS_E2E_CACHE or /var/tmp/...")
    args = parser.parse_args(argv)
    try:
        image = golden_image(args.kernel_version, args.cache)
    except GoldenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    shutil.copyfile(image, args.out)
    print(f"{args.out} (from {image})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
