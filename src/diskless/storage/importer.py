"""Reading foreign disk images (raw, qcow2, VHD, VHDX, VMDK, VDI) with ``qemu-img``.

This module owns the two ``qemu-img`` calls of an import: ``qemu-img info`` to learn what the
source is and refuse what we cannot take as a golden image (a backing chain, an external data
file, encryption, extents outside the source's directory), and ``qemu-img convert`` to write it
out as a sparse raw file, reporting progress as it goes. ``qemu-img`` always runs from an argv
list, never a shell, with the source as an absolute path so a name like ``json:{...}`` or
``nbd://`` can never be read as a QEMU protocol.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diskless.storage.errors import StorageError
from diskless.storage.store import Progress

__all__ = [
    "FORMAT_ALIASES",
    "SUPPORTED_FORMATS",
    "SourceImage",
    "SourceImageError",
    "convert_to_raw",
    "find_qemu_img",
    "normalise_format",
    "probe_source",
]

SUPPORTED_FORMATS: Mapping[str, str] = {
    "raw": "raw",
    "qcow2": "QEMU qcow2",
    "vpc": "VHD (Virtual PC / Hyper-V gen 1)",
    "vhdx": "VHDX (Hyper-V)",
    "vmdk": "VMDK (VMware)",
    "vdi": "VDI (VirtualBox)",
}
"""qemu-img driver name → what people call it. Anything else (luks, dmg, nbd, ...) is refused:
those are either not disk images a PC boots or need options an import cannot guess."""

FORMAT_ALIASES: Mapping[str, str] = {"vhd": "vpc", "qcow": "qcow2"}
"""Names operators type for ``--format`` that qemu-img spells differently."""

PROBE_TIMEOUT = 60.0
"""Seconds ``qemu-img info`` may take; it reads only headers, so longer means a hung file system."""

_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
# qemu-img's messages are parsed for nothing but shown to operators; keep them in English.
_QEMU_ENV = {**os.environ, "LC_ALL": "C"}


class SourceImageError(StorageError):
    """The file to import is not something we can turn into a golden image."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True, slots=True)
class SourceImage:
    """What ``qemu-img info`` says about a file to import."""

    path: Path
    format: str
    virtual_size: int
    actual_size: int


def find_qemu_img(name: str = "qemu-img") -> str:
    """The path of the ``qemu-img`` executable; :class:`StorageError` if it is not installed."""
    found = shutil.which(name)
    if found is None:
        raise StorageError(f"{name} not found on PATH; install it (Debian: apt install qemu-utils)")
    return found


def normalise_format(fmt: str) -> str:
    """Map an operator's format name to qemu-img's; :class:`StorageError` for unknown ones."""
    name = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if name not in SUPPORTED_FORMATS:
        known = ", ".join(sorted({*SUPPORTED_FORMATS, *FORMAT_ALIASES}))
        raise StorageError(f"unsupported image format {fmt!r} (supported: {known})")
    return name


def probe_source(path: Path, *, fmt: str | None = None, qemu_img: str = "qemu-img") -> SourceImage:
    """Inspect ``path`` with ``qemu-img info`` and check it can be imported.

    ``fmt`` forces the format instead of letting qemu-img probe it (needed for a raw file whose
    first bytes happen to look like another format). Raises :class:`SourceImageError`.
    """
    source = Path(os.path.abspath(path))
    if not source.exists():
        raise SourceImageError(source, "no such file")
    if source.is_dir():
        raise SourceImageError(source, "is a directory, not a disk image")
    argv = [find_qemu_img(qemu_img), "info", "--output=json"]
    if fmt is not None:
        argv += ["-f", normalise_format(fmt)]
    argv.append(str(source))
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            check=False,
            timeout=PROBE_TIMEOUT,
            env=_QEMU_ENV,
        )
    except subprocess.TimeoutExpired as exc:
        raise SourceImageError(
            source, f"qemu-img info did not answer in {PROBE_TIMEOUT:.0f} s"
        ) from exc
    if done.returncode != 0:
        raise SourceImageError(source, f"qemu-img info failed: {_last_line(done.stderr)}")
    try:
        info = json.loads(done.stdout)
    except ValueError as exc:
        raise SourceImageError(source, f"qemu-img info printed invalid JSON: {exc}") from exc
    return _check_info(source, info)


def _check_info(source: Path, info: dict[str, Any]) -> SourceImage:
    fmt = str(info.get("format", ""))
    if fmt not in SUPPORTED_FORMATS:
        raise SourceImageError(
            source,
            f"format {fmt or 'unknown'!r} cannot be imported "
            f"(supported: {', '.join(sorted(SUPPORTED_FORMATS))})",
        )
    if "backing-filename" in info:
        # A golden version must be self-contained: its digest has to name all of its content.
        raise SourceImageError(
            source,
            f"has a backing file ({info['backing-filename']}); import the backing chain "
            "flattened, e.g. 'qemu-img convert -O qcow2' first, or import the base image",
        )
    specific = info.get("format-specific", {}).get("data", {})
    if specific.get("data-file"):
        raise SourceImageError(source, f"uses an external data file ({specific['data-file']})")
    if info.get("encrypted") or specific.get("encrypt"):
        raise SourceImageError(source, "is encrypted; decrypt it with qemu-img convert first")
    if specific.get("corrupt"):
        raise SourceImageError(source, "is marked corrupt; repair it with 'qemu-img check -r all'")
    for extent in specific.get("extents", []):
        # A VMDK descriptor names its extent files; one outside the source's directory would
        # let a crafted descriptor read any file the operator can read.
        extent_path = Path(os.path.normpath(source.parent / str(extent.get("filename", ""))))
        if extent_path.parent != source.parent:
            raise SourceImageError(source, f"extent {extent_path} lies outside {source.parent}")
    size = int(info.get("virtual-size", 0))
    if size <= 0:
        raise SourceImageError(source, "has a virtual size of 0 bytes")
    if size % 512:
        raise SourceImageError(source, f"virtual size {size} is not a multiple of 512 bytes")
    return SourceImage(
        path=source,
        format=fmt,
        virtual_size=size,
        actual_size=int(info.get("actual-size", 0)),
    )


def convert_to_raw(
    source: SourceImage,
    dest: Path,
    *,
    progress: Progress | None = None,
    qemu_img: str = "qemu-img",
) -> None:
    """Write the virtual disk of ``source`` into the existing file ``dest`` as sparse raw.

    ``dest`` is sized first and qemu-img writes into it in place (``-n --target-is-zero``), so
    the file keeps its inode (and any lock the caller holds on it), and zero ranges are never
    written. ``dest`` is not fsynced here. Raises :class:`SourceImageError` if qemu-img fails.
    """
    os.truncate(dest, source.virtual_size)
    argv = [
        find_qemu_img(qemu_img),
        "convert",
        "-p",  # progress "(NN.NN/100%)" on stdout, even when stdout is a pipe
        "-n",
        "--target-is-zero",
        "-f",
        source.format,
        "-O",
        "raw",
        str(source.path),
        str(dest),
    ]
    total = source.virtual_size
    # stderr goes to a file, not a pipe: we only drain stdout, and a chatty qemu-img must not
    # block on a full stderr pipe.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, env=_QEMU_ENV
        )
        assert process.stdout is not None
        try:
            pending = b""
            while chunk := os.read(process.stdout.fileno(), 4096):
                pending += chunk
                *lines, pending = re.split(rb"[\r\n]", pending)
                for line in lines:
                    match = _PROGRESS_RE.search(line)
                    if match and progress is not None:
                        progress(min(total, int(float(match.group(1)) * total / 100)), total)
            returncode = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            process.stdout.close()
        if returncode != 0:
            errors.seek(0)
            raise SourceImageError(
                source.path, f"qemu-img convert failed: {_last_line(errors.read())}"
            )
    if progress is not None:
        progress(total, total)


def _last_line(output: bytes) -> str:
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "no error message"
