"""Boot targets on the command line: a kind (``local``) or a JSON object, plus options.

The server validates the target (a bad one is a 422 naming the field, e.g.
``target.linux.kernel``), so this module only builds the JSON object; it checks nothing the
API does not check again.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from diskless.errors import DisklessError

__all__ = [
    "KINDS",
    "CmdlineOpt",
    "DiskOpt",
    "FolderOpt",
    "InitrdOpt",
    "KernelOpt",
    "UrlOpt",
    "parse_target",
    "target_from_options",
]

KINDS = ("sanboot", "local", "netbootxyz", "linux", "winpe", "chain", "menu")


def parse_target(text: str) -> dict[str, Any]:
    """``local`` → ``{"kind": "local"}``; ``{"kind": "chain", ...}`` → that object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DisklessError(f"boot target: not valid JSON: {exc.msg}") from None
        if not isinstance(value, dict):
            raise DisklessError("boot target: a JSON target must be an object")
        return value
    if text not in KINDS:
        raise DisklessError(
            f"boot target: unknown kind {text!r} (known: {', '.join(KINDS)}, or a JSON object)"
        )
    return {"kind": text}


_HIDE = {"show_default": False}

KernelOpt = Annotated[
    str | None, typer.Option("--kernel", help="linux: kernel path under the HTTP root.", **_HIDE)
]
InitrdOpt = Annotated[
    list[str] | None, typer.Option("--initrd", help="linux: initrd path (repeatable).", **_HIDE)
]
CmdlineOpt = Annotated[
    str | None, typer.Option("--cmdline", help="linux: kernel command line.", **_HIDE)
]
FolderOpt = Annotated[
    str | None, typer.Option("--folder", help="winpe: folder of the WinPE files.", **_HIDE)
]
UrlOpt = Annotated[str | None, typer.Option("--url", help="chain, netbootxyz: URL.", **_HIDE)]
DiskOpt = Annotated[
    str | None, typer.Option("--disk", help="sanboot: disk name (default: hostname).", **_HIDE)
]


def target_from_options(target: str, **options: Any) -> dict[str, Any]:
    """TARGET (a kind or a JSON object) with the options given merged in."""
    value = parse_target(target)
    for name, option in options.items():
        if option is not None and option != []:
            value[name] = option
    return value
