"""The routes of the HTTP boot plane, as an aiohttp application.

=====================  ========================================================================
``GET /boot.ipxe``     a fixed script that chains to ``/boot/<this client's MAC>.ipxe``, for a
                       DHCP server we do not control that hands every client one URL
``GET /boot/{mac}.ipxe``  the client's own script: :func:`~diskless.boot.decide` then
                       :func:`~diskless.boot.render_script`; the MAC may be spelt
                       ``52:54:00:18:00:10``, ``52-54-00-18-00-10`` or ``525400180010``
``GET /ipxe/{name}``   the configured iPXE programs from ``boot.ipxe_dir`` (UEFI HTTP boot)
``GET /files/{path}``  boot assets under the HTTP root, jailed (:mod:`diskless.http.jail`),
                       with ``sendfile`` and byte ranges
=====================  ========================================================================

HEAD works on every route and has no side effects (no timeline event, no next-boot-once
consumed). A bad request gets a 4xx status with a one-line plain-text reason; an unexpected
exception is logged with its traceback and answered with a bare 500, never the traceback. Every
response is counted in :class:`HttpStats` (for ``/metrics``) as it starts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from aiohttp import web

from diskless.boot import (
    BootEvent,
    BootSite,
    BootStage,
    BootTimeline,
    MachineBook,
    RequestFacts,
    ScriptError,
    decide,
    format_mac,
    parse_mac,
    render_chain_script,
    render_error_script,
    render_script,
)
from diskless.http.jail import FileJail, NoSuchFileError, OutsideRootError
from diskless.http.once import NextBootOnceStore
from diskless.observe.log import get_logger

__all__ = ["BootPlane", "HttpStats", "SiteLookup", "build_app"]

SiteLookup = Callable[[IPv4Address, int], BootSite]
"""The :class:`BootSite` for a request that arrived on this local (address, port)."""

_SCRIPT_TYPE = "text/plain"
_UNKNOWN_LOCAL_ADDRESS = IPv4Address("0.0.0.0")
_log = get_logger("diskless.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Route name (``build_app``) -> the kind of request it counts as in HttpStats.requests.
_ROUTE_KINDS = {"chain": "script", "script": "script", "ipxe": "ipxe", "file": "file"}


@dataclass(slots=True)
class HttpStats:
    """Counters of the boot plane, for the metrics endpoint and the tests.

    A response is counted when it starts (its headers are about to go out), so a file whose
    client hangs up half-way still counts in full in ``bytes_sent``.
    """

    requests: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("script", "ipxe", "file", "other"), 0)
    )
    """By route kind: ``script`` (iPXE scripts), ``ipxe`` (iPXE programs), ``file`` (HTTP
    root), ``other`` (no route matched)."""
    responses: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("1xx", "2xx", "3xx", "4xx", "5xx"), 0)
    )
    """By status class."""
    bytes_sent: int = 0
    """Response bodies (Content-Length; 0 for HEAD)."""
    scripts_rendered: int = 0
    """iPXE scripts rendered (the chain script included)."""

    def count(self, kind: str, status: int, length: int) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1
        status_class = f"{min(max(status // 100, 1), 5)}xx"
        self.responses[status_class] += 1
        self.bytes_sent += length

    def as_dict(self) -> dict[str, int]:
        """The scalar counters (the labelled ones are ``requests`` and ``responses``)."""
        return {"bytes_sent": self.bytes_sent, "scripts_rendered": self.scripts_rendered}


_STATS_KEY = web.AppKey("stats", HttpStats)


def _plain(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=f"{reason}\n", content_type="text/plain")


@dataclass(slots=True)
class BootPlane:
    """What the handlers need: the machines, the site, the files and where events go."""

    machines: Callable[[], MachineBook]
    site_for: SiteLookup
    timeline: BootTimeline
    next_boot_once: NextBootOnceStore
    files: FileJail
    ipxe_dir: Path
    ipxe_programs: frozenset[str]
    clock: Callable[[], float] = time.time
    stats: HttpStats = field(default_factory=HttpStats)

    # -- routes ------------------------------------------------------------------------------

    async def chain_by_mac(self, request: web.Request) -> web.Response:
        self.stats.scripts_rendered += 1
        return web.Response(
            text=render_chain_script(self._site(request)), content_type=_SCRIPT_TYPE
        )

    async def machine_script(self, request: web.Request) -> web.Response:
        spelt = request.match_info["mac"]
        try:
            mac = parse_mac(spelt)
        except ValueError:
            return _plain(400, "not a MAC address (use 52:54:00:18:00:10 or 52-54-00-18-00-10)")
        side_effects = request.method == "GET"
        machine = self.machines().by_mac(mac)
        if machine is not None:
            machine = self.next_boot_once.effective(machine)
        site = self._site(request)
        plan = decide(machine, RequestFacts(mac=mac, ipxe=True), site)
        if machine is None and side_effects:
            detail = "ignored" if plan is None else "served the unknown-client target"
            self._record(mac, BootStage.DISCOVERED, detail, known=False)
        if plan is None:
            return _plain(404, "unknown machine (boot.unknown_clients = ignore)")
        try:
            script = render_script(plan, site)
        except ScriptError as exc:
            _log.error("boot record cannot be rendered", mac=format_mac(mac), error=str(exc))
            script = render_error_script(str(exc), site)
        self.stats.scripts_rendered += 1
        if side_effects:
            self._record(mac, BootStage.HTTP_SCRIPT, plan.target.kind, known=plan.known)
            if plan.once and machine is not None:
                self.next_boot_once.consume(machine)
        return web.Response(text=script, content_type=_SCRIPT_TYPE)

    async def ipxe_program(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.ipxe_programs:
            return _plain(404, "not a configured iPXE program")
        # Configured by the operator, so symbolic links are followed (Debian's ipxe.efi is one).
        path = self.ipxe_dir / name
        if not path.is_file():
            _log.warning("configured iPXE program is missing", path=str(path))
            return _plain(404, "iPXE program missing from boot.ipxe_dir")
        return web.FileResponse(path)

    async def boot_file(self, request: web.Request) -> web.StreamResponse:
        try:
            path = self.files.resolve(request.match_info["path"])
        except OutsideRootError:
            return _plain(403, "outside the HTTP root")
        except NoSuchFileError:
            return _plain(404, "no such file")
        if request.method == "GET":
            self._record_file_fetch(request, path)
        return web.FileResponse(path)

    # -- helpers -----------------------------------------------------------------------------

    def _site(self, request: web.Request) -> BootSite:
        address, port = self._local_address(request)
        return self.site_for(address, port)

    def _local_address(self, request: web.Request) -> tuple[IPv4Address, int]:
        """The address and port this request arrived on: what the client can reach us at."""
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        if not sockname:
            return _UNKNOWN_LOCAL_ADDRESS, 0
        address = ip_address(sockname[0])
        if isinstance(address, IPv6Address):
            address = address.ipv4_mapped or _UNKNOWN_LOCAL_ADDRESS
        return address, int(sockname[1])

    def _record(self, mac: bytes, stage: BootStage, detail: str, *, known: bool) -> None:
        self.timeline.record(BootEvent(mac, stage, self.clock(), detail, known))

    def _record_file_fetch(self, request: web.Request, path: Path) -> None:
        # Files are fetched by address, not MAC: only machines with a reserved address show up.
        try:
            peer = ip_address(request.remote or "")
        except ValueError:
            return
        if not isinstance(peer, IPv4Address):
            return
        machine = self.machines().by_ip(peer)
        if machine is not None:
            detail = path.relative_to(self.files.root).as_posix()
            self._record(machine.mac, BootStage.HTTP_FILE, detail, known=True)


@web.middleware
async def _errors_as_plain_text(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # aiohttp's own 404/405 answers: a status line and a short plain-text body
    except Exception:
        _log.exception("request failed", method=request.method, path=request.path)
        return _plain(500, "internal error (logged by the server)")


async def _count_response(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare runs for every response, aiohttp's own 404/405 answers included, and
    # a FileResponse knows its (range's) length by then: counting here needs no copy of the body.
    route = request.match_info.route.name
    kind = _ROUTE_KINDS.get(route or "", "other")
    length = 0 if request.method == "HEAD" else (response.content_length or 0)
    request.app[_STATS_KEY].count(kind, response.status, length)


def build_app(plane: BootPlane) -> web.Application:
    """The aiohttp application serving ``plane``'s routes, counted in ``plane.stats``."""
    app = web.Application(middlewares=[_errors_as_plain_text], client_max_size=4096)
    app[_STATS_KEY] = plane.stats
    app.on_response_prepare.append(_count_response)
    app.add_routes(
        [
            web.get("/boot.ipxe", plane.chain_by_mac, name="chain"),
            web.get("/boot/{mac}.ipxe", plane.machine_script, name="script"),
            web.get("/ipxe/{name:.+}", plane.ipxe_program, name="ipxe"),
            web.get("/files/{path:.*}", plane.boot_file, name="file"),
        ]
    )
    return app
