# Shared set-up for scripts/serve and scripts/test; sourced, not run.
#
# On a fresh Debian 12 machine, as root, `setup_machine` installs everything diskless needs: the
# Debian packages below (plus Python and pip if the machine lacks them), uv from PyPI, and
# then the caller syncs the locked Python environment into .venv. Each step is skipped when its
# result is already there, so re-running is quick and needs no network.

# Debian packages the server calls at run time; later features append here.
#   qemu-utils: qemu-img, used to import images and check qcow2 overlays.
#   ipxe: the iPXE boot programs (undionly.kpxe, ipxe.efi, snponly.efi) that DHCP/TFTP hand out.
APT_PACKAGES="qemu-utils ipxe"
# Debian packages only the tests need: real initiators and the reference target.
#   libiscsi-bin: iscsi-test-cu (conformance), iscsi-ls/-inq/-readcapacity16/-perf.
#   qemu-block-extra: qemu-img/qemu-io with iscsi:// URLs.
#   tgt: the reference iSCSI target the conformance tests and benchmarks compare against.
#   udhcpc, isc-dhcp-client, dnsmasq-base, kea-admin: DHCP clients, a foreign DHCP server for
#     proxy mode and perfdhcp (all run inside test-made network namespaces only).
#   curl, atftp, tftp-hpa, tftpd-hpa: TFTP clients and the reference TFTP server.
#   nginx-light, wrk: the reference HTTP server and load generator for benchmarks.
#   iproute2: `ip netns` for the namespace labs.
#   End-to-end boots (tests/e2e): qemu-system-x86 (the client; also qemu-storage-daemon),
#     ipxe-qemu (virtio-net's iPXE ROM), ovmf (UEFI firmware); and, to build the golden disk from
#     the host's own packages: linux-image-amd64 (kernel and modules), kmod (modprobe
#     --show-depends), busybox-static and open-iscsi (iscsistart) for the initramfs, cpio,
#     extlinux + syslinux-common (mbr.bin) for BIOS, grub-efi-amd64-bin + grub-common
#     (grub-mkstandalone) for UEFI, fdisk (sfdisk), e2fsprogs, dosfstools and mtools.
#     dnsmasq-base (above) also answers the lab's IPv6 router solicitations.
#   postgresql: initdb/pg_ctl for the throwaway PostgreSQL cluster the inventory tests start
#     (in a temporary directory, unix socket only; the package's own cluster is not used).
#   chromium: the headless browser the web console's test drives (through playwright, never
#     a downloaded browser).
# One line: setup_machine reads this list with `read -r -a`, which stops at the first newline.
APT_TEST_PACKAGES="libiscsi-bin qemu-block-extra tgt udhcpc isc-dhcp-client dnsmasq-base kea-admin curl atftp tftp-hpa tftpd-hpa nginx-light wrk iproute2 qemu-system-x86 ipxe-qemu ovmf open-iscsi linux-image-amd64 busybox-static extlinux syslinux-common grub-efi-amd64-bin grub-common mtools dosfstools fdisk cpio e2fsprogs kmod postgresql chromium"

# Python comes from the machine (Debian 12 ships 3.11); uv must never download one.
export UV_PYTHON_DOWNLOADS=never

# Installs what is missing, then sets UV to the command that runs uv.
setup_machine() {
    local wanted=() missing=() pkg
    read -r -a wanted <<<"$APT_PACKAGES ${1:-}"
    command -v python3 >/dev/null 2>&1 || wanted+=(python3)
    if ! command -v uv >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
        wanted+=(python3-pip)
    fi
    for pkg in "${wanted[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} > 0)); then
        if ((EUID != 0)); then
            echo "missing Debian packages: ${missing[*]}; run this script as root" >&2
            return 1
        fi
        echo "installing Debian packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi

    if ! command -v uv >/dev/null 2>&1; then
        echo "installing uv with pip" >&2
        # Debian marks its Python as externally managed (PEP 668); uv is a standalone tool.
        python3 -m pip install --quiet --root-user-action=ignore --break-system-packages uv
        hash -r
    fi
    if command -v uv >/dev/null 2>&1; then
        UV=(uv)
    else
        # pip put the script somewhere off PATH (e.g. a pyenv version without a rehash).
        UV=(python3 -m uv)
    fi
}
