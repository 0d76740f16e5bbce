"""iPXE boot scripts: a :class:`BootPlan` rendered as the text iPXE runs.

:func:`render_script` is pure: the Jinja2 templates (``boot/templates/*.ipxe.j2``, shipped in the
wheel) are loaded and compiled once, at import, and rendering reads nothing else.

**Why every value is checked, not escaped.** iPXE's script language has no quoting and no escape
character. A line is split on whitespace into words; a word ``||``, ``&&`` or ``;`` ends a
command, a word starting with ``#`` starts a comment, a first argument starting with ``-`` is an
option, and ``${name}`` anywhere in a word is replaced by a setting's value (after splitting, and
again inside the value). So a value from a machine record can only be placed in a script if it
is a *safe word* or *safe text* (:class:`IpxeWord`, :class:`IpxeText`):

* printable ASCII only (``0x20``-``0x7e``): no newline, carriage return, tab or NUL, which would
  start a new command, and nothing a firmware console cannot show;
* never the two characters ``${`` (a lone ``$`` is fine);
* no word that is exactly ``||``, ``&&`` or ``;``, and no word starting with ``#``;
* a single word (a URL, an iSCSI name, a CHAP secret) has no space and does not start with ``-``;
  display text (a menu title or item label) does not start with ``-`` either.

A kernel command line is *text*: any printable ASCII except the above. iPXE joins its words with
single spaces, so runs of spaces collapse; Linux parses quotes itself, so ``a="b c"`` still
arrives intact. iPXE settings (``${net0/ip}``) cannot be used in a command line: what the server
knows about the machine is rendered in already. Paths relative to the HTTP root are
percent-encoded, so any file name is safe; absolute URLs must already be safe words.

The templates enforce this: their ``finalize`` hook refuses to print anything but an
:class:`IpxeWord`, an :class:`IpxeText` or an ``int``, so a template cannot print an unchecked
string by mistake. A record that fails a check raises :class:`ScriptError` naming the field
(never echoing the value), and :func:`render_error_script` gives the client a script that says
so on its console.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import jinja2

from diskless.boot.machines import (
    BootTarget,
    ChainTarget,
    LinuxTarget,
    LocalDiskTarget,
    Machine,
    MenuTarget,
    NetbootXyzTarget,
    SanbootTarget,
    WimbootTarget,
)
from diskless.boot.policy import BootPlan, BootSite, iscsi_names
from diskless.errors import DisklessError

__all__ = [
    "FAILURE_PROMPT_SECONDS",
    "FILES_PREFIX",
    "IpxeText",
    "IpxeWord",
    "ScriptError",
    "check_target",
    "ipxe_text",
    "ipxe_word",
    "render_chain_script",
    "render_error_script",
    "render_script",
]

FILES_PREFIX = "/files/"
"""Where the HTTP boot plane serves the HTTP root: ``kernel = "debian/linux"`` is fetched from
``http://<server>:<port>/files/debian/linux``."""

FAILURE_PROMPT_SECONDS = 10
"""How long a failed boot waits for a key (the iPXE shell) before it tries again."""

WIMBOOT_FILES = (("bootmgr", False), ("BCD", True), ("boot.sdi", True), ("boot.wim", True))
"""The WinPE files wimboot is handed, by their names in the target's folder, and whether each
is required (wimboot takes ``bootmgr`` out of ``boot.wim`` when the folder has none)."""

_TERMINATORS = frozenset({"||", "&&", ";"})
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,63}\Z")
_URL_SCHEMES = {
    "asset": frozenset({"http", "https"}),
    "chain": frozenset({"http", "https", "tftp"}),
}


class ScriptError(DisklessError):
    """A boot record cannot be rendered as a safe iPXE script (the message names the field)."""


class IpxeWord(str):
    """One checked iPXE argument: safe to place anywhere a word goes (see the module docs)."""

    __slots__ = ()


class IpxeText(str):
    """Checked iPXE text of several words: a command line, a label or a message."""

    __slots__ = ()


def _problem(value: str, *, single_word: bool, dash_allowed: bool) -> str | None:
    """Why ``value`` cannot go into a script as it is, or ``None`` when it can."""
    if not _PRINTABLE.match(value):
        return "only printable ASCII is allowed (no newline, tab or other control character)"
    if "${" in value:
        return "a dollar sign followed by a brace would be expanded by iPXE as a setting"
    words = value.split(" ")
    if single_word:
        if not value:
            return "must not be empty"
        if len(words) > 1:
            return "must be a single word, without spaces"
    if not dash_allowed and value.lstrip(" ").startswith("-"):
        return "must not start with '-' (iPXE would read it as an option)"
    for word in words:
        if word in _TERMINATORS:
            return f"the word {word!r} would end the iPXE command"
        if word.startswith("#"):
            return "a word starting with '#' would start an iPXE comment"
    return None


def ipxe_word(value: str, field: str) -> IpxeWord:
    """``value`` as one script argument; :class:`ScriptError` naming ``field`` if unsafe."""
    problem = _problem(value, single_word=True, dash_allowed=False)
    if problem is not None:
        raise ScriptError(f"{field}: {problem}")
    return IpxeWord(value)


def ipxe_text(value: str, field: str, *, dash_allowed: bool = False) -> IpxeText:
    """``value`` as script text (several words); :class:`ScriptError` naming ``field`` if unsafe.

    ``dash_allowed`` is for text that follows another argument (a kernel command line), where a
    leading ``-`` is not taken for an option.
    """
    problem = _problem(value, single_word=False, dash_allowed=dash_allowed)
    if problem is not None:
        raise ScriptError(f"{field}: {problem}")
    return IpxeText(value)


# --------------------------------------------------------------------------------------------
# What the templates see: one block per boot target, every printed value already checked.


@dataclass(frozen=True, slots=True)
class _SanbootBlock:
    label: IpxeWord
    description: IpxeText
    initiator: IpxeWord
    password: IpxeWord | None
    root_path: IpxeWord
    keep_san: bool
    kind: str = "sanboot"


@dataclass(frozen=True, slots=True)
class _LocalBlock:
    label: IpxeWord
    kind: str = "local"


@dataclass(frozen=True, slots=True)
class _ImageFile:
    name: IpxeWord
    url: IpxeWord
    required: bool = True


@dataclass(frozen=True, slots=True)
class _LinuxBlock:
    label: IpxeWord
    kernel: IpxeWord
    arguments: IpxeText
    initrds: tuple[_ImageFile, ...]
    kind: str = "linux"


@dataclass(frozen=True, slots=True)
class _WimbootBlock:
    label: IpxeWord
    wimboot: IpxeWord
    files: tuple[_ImageFile, ...]
    kind: str = "winpe"


@dataclass(frozen=True, slots=True)
class _ChainBlock:
    label: IpxeWord
    url: IpxeWord
    kind: str = "chain"


@dataclass(frozen=True, slots=True)
class _MenuEntry:
    label: IpxeWord
    text: IpxeText


@dataclass(frozen=True, slots=True)
class _MenuBlock:
    label: IpxeWord
    title: IpxeText
    entries: tuple[_MenuEntry, ...]
    default: IpxeWord
    timeout_ms: int
    kind: str = "menu"


_Block = _SanbootBlock | _LocalBlock | _LinuxBlock | _WimbootBlock | _ChainBlock | _MenuBlock


def _only_checked_values(value: object) -> object:
    # Jinja2 calls this on every {{ expression }}: anything unchecked is a bug in a template.
    if isinstance(value, IpxeWord | IpxeText) or (type(value) is int):
        return value
    raise TypeError(f"template printed an unchecked {type(value).__name__}: {value!r:.40}")


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("diskless.boot", "templates"),
    autoescape=False,
    undefined=jinja2.StrictUndefined,
    finalize=_only_checked_values,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_SCRIPT = _ENVIRONMENT.get_template("script.ipxe.j2")
_CHAIN_BY_MAC = _ENVIRONMENT.get_template("chain-by-mac.ipxe.j2")
_ERROR = _ENVIRONMENT.get_template("error.ipxe.j2")
for _kind in ("sanboot", "local", "linux", "winpe", "chain", "menu"):
    _ENVIRONMENT.get_template(f"{_kind}.ipxe.j2")  # compiled now: rendering does no file I/O


# --------------------------------------------------------------------------------------------
# Rendering


def render_script(plan: BootPlan, site: BootSite) -> str:
    """The iPXE script that boots ``plan.target`` (raises :class:`ScriptError` if it can't)."""
    blocks = _blocks(plan.target, plan.machine, site, IpxeWord("boot"), "boot")
    subject = plan.machine.hostname if plan.machine is not None else "this unknown machine"
    return _SCRIPT.render(
        subject=ipxe_text(subject, "hostname"),
        blocks=blocks,
        retry_url=_retry_url(site),
        prompt_ms=FAILURE_PROMPT_SECONDS * 1000,
    )


def check_target(target: BootTarget, machine: Machine | None, site: BootSite) -> None:
    """Raise :class:`ScriptError` if ``target`` cannot be rendered (e.g. when a record is saved)."""
    _blocks(target, machine, site, IpxeWord("boot"), "boot")


def render_chain_script(site: BootSite) -> str:
    """The static ``/boot.ipxe``: chain to this client's own script, named by its MAC."""
    return _CHAIN_BY_MAC.render(script_url=_retry_url(site))


def render_error_script(reason: str, site: BootSite) -> str:
    """A script that shows ``reason`` on the client's console, then waits and retries."""
    return _ERROR.render(
        reason=ipxe_text(_displayable(reason), "reason"),
        retry_url=_retry_url(site),
        prompt_ms=FAILURE_PROMPT_SECONDS * 1000,
    )


def _retry_url(site: BootSite) -> IpxeWord:
    # The client's own per-MAC script, named by iPXE itself: netX is the device iPXE booted
    # from, hexhyp spells its MAC 52-54-00-18-00-10 (no colons to confuse a URL parser). The
    # `${` is ours, written here, never taken from a record.
    return IpxeWord(f"{site.http_base}/boot/${{netX/mac:hexhyp}}.ipxe")


def _displayable(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9 .,:_/()'=-]", "?", text).lstrip("-")


def _blocks(
    target: BootTarget, machine: Machine | None, site: BootSite, label: IpxeWord, field: str
) -> list[_Block]:
    match target:
        case SanbootTarget():
            return [_sanboot(target, machine, site, label, field)]
        case LocalDiskTarget():
            return [_LocalBlock(label=label)]
        case LinuxTarget():
            return [_linux(target, site, label, field)]
        case WimbootTarget():
            return [_wimboot(target, site, label, field)]
        case ChainTarget():
            return [_ChainBlock(label=label, url=_url(target.url, f"{field}.url", "chain"))]
        case NetbootXyzTarget():
            return [_ChainBlock(label=label, url=_url(target.url, f"{field}.url", "chain"))]
        case MenuTarget():
            return _menu(target, machine, site, label, field)


def _sanboot(
    target: SanbootTarget, machine: Machine | None, site: BootSite, label: IpxeWord, field: str
) -> _SanbootBlock:
    if machine is None:
        raise ScriptError(f"{field}: a sanboot target needs a known machine (its disk is named)")
    names = iscsi_names(machine, site.iqn_prefix, target.disk)
    target_name = ipxe_word(names.target, f"{field}.disk")
    password = None
    if machine.chap_secret is not None:
        password = ipxe_word(machine.chap_secret, "chap_secret")
    return _SanbootBlock(
        label=label,
        description=ipxe_text(f"disk {target_name}", f"{field}.disk"),
        initiator=ipxe_word(names.initiator, "initiator_name"),
        password=password,
        root_path=ipxe_word(
            f"iscsi:{site.server}::{site.portal_port(target_name)}:0:{target_name}", f"{field}.disk"
        ),
        keep_san=target.keep_san,
    )


def _linux(target: LinuxTarget, site: BootSite, label: IpxeWord, field: str) -> _LinuxBlock:
    initrds: list[_ImageFile] = []
    used: set[str] = set()
    for index, path in enumerate(target.initrd):
        url = _asset(path, site, f"{field}.initrd[{index}]")
        name = _image_name(path, index, used)
        initrds.append(_ImageFile(name=name, url=url))
    # UEFI's Linux stub loads each initrd by the name given in `initrd=`; BIOS ignores these.
    words = [f"initrd={initrd.name}" for initrd in initrds]
    cmdline = ipxe_text(target.cmdline, f"{field}.cmdline", dash_allowed=True)
    if cmdline.strip():
        words.append(cmdline.strip())
    return _LinuxBlock(
        label=label,
        kernel=_asset(target.kernel, site, f"{field}.kernel"),
        arguments=ipxe_text(" ".join(words), f"{field}.cmdline", dash_allowed=True),
        initrds=tuple(initrds),
    )


def _image_name(path: str, index: int, used: set[str]) -> IpxeWord:
    """The iPXE image name of an initrd: its file name when plain and unique, else initrdN."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    name = base if _PLAIN_NAME.match(base) and base not in used else f"initrd{index}"
    while name in used:
        name = f"_{name}"
    used.add(name)
    return IpxeWord(name)


def _wimboot(target: WimbootTarget, site: BootSite, label: IpxeWord, field: str) -> _WimbootBlock:
    folder = target.folder.strip("/")
    files = tuple(
        _ImageFile(
            name=IpxeWord(name),
            url=_asset(f"{folder}/{name}" if folder else name, site, f"{field}.folder"),
            required=required,
        )
        for name, required in WIMBOOT_FILES
    )
    return _WimbootBlock(
        label=label, wimboot=_asset(target.wimboot, site, f"{field}.wimboot"), files=files
    )


def _menu(
    target: MenuTarget, machine: Machine | None, site: BootSite, label: IpxeWord, field: str
) -> list[_Block]:
    if not target.items:
        raise ScriptError(f"{field}.items: a menu needs at least one item")
    if target.default >= len(target.items):
        raise ScriptError(f"{field}.default: there is no item {target.default}")
    entries: list[_MenuEntry] = []
    bodies: list[_Block] = []
    for index, item in enumerate(target.items):
        item_label = IpxeWord(f"{label}-{index}")
        item_field = f"{field}.items[{index}]"
        entries.append(_MenuEntry(item_label, ipxe_text(item.label, f"{item_field}.label")))
        bodies.extend(_blocks(item.target, machine, site, item_label, f"{item_field}.target"))
    timeout = target.timeout if target.timeout is not None else site.menu_timeout
    menu = _MenuBlock(
        label=label,
        title=ipxe_text(target.title, f"{field}.title"),
        entries=tuple(entries),
        default=entries[target.default].label,
        timeout_ms=timeout * 1000,
    )
    return [menu, *bodies]


def _asset(path: str, site: BootSite, field: str) -> IpxeWord:
    """A boot file: an absolute http(s) URL as it is, or a path under the HTTP root."""
    if "://" in path:
        return _url(path, field, "asset")
    segments = path.strip("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise ScriptError(f"{field}: must be a path inside the HTTP root (no '..' or empty parts)")
    encoded = "/".join(quote(segment, safe="") for segment in segments)
    return ipxe_word(f"{site.http_base}{FILES_PREFIX}{encoded}", field)


def _url(url: str, field: str, use: str) -> IpxeWord:
    word = ipxe_word(url, field)
    schemes: Sequence[str] = sorted(_URL_SCHEMES[use])
    parts = urlsplit(word)
    if parts.scheme not in schemes or not parts.netloc:
        raise ScriptError(f"{field}: must be an absolute {'/'.join(schemes)} URL")
    return word
