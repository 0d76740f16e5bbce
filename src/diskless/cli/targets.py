"""Boot targets on the command line: a kind (``local``) or a JSON object, plus options.

The server validates the target (a bad one is a 422 naming the field, e.g.
``target.linux.kernel``), so this module only builds the JSON object; it checks nothing the
API does not check again. :func:`request_fields` turns the options of an add or set command
(machines, groups), a boot target among them, into the fields of its request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

import typer

from diskless.errors import DisklessError
from diskless.storage.disks import DiskMode

__all__ = [
    "KINDS",
    "CmdlineOpt",
    "DiskOpt",
    "FolderOpt",
    "InitrdOpt",
    "KernelOpt",
    "UrlOpt",
    "parse_target",
    "request_fields",
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


def request_fields(
    values: Mapping[str, object], *, clear: Iterable[str] = (), clearable: Sequence[str] = ()
) -> dict[str, Any]:
    """The options given (``None``: not given) as JSON-ready request fields, ``boot`` parsed as
    a target, and ``null`` for each field named by ``--clear`` (one of ``clearable``)."""
    body: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, DiskMode):
            body[name] = value.value
        elif name == "boot":
            body[name] = parse_target(str(value))
        else:
            body[name] = value
    for given in clear:
        field = given.replace("-", "_")
        if field not in clearable:
            raise DisklessError(f"--clear {given}: not a field that can be cleared")
        body[field] = None
    return body
