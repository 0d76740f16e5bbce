"""The web console: a static page (HTML, CSS, JavaScript modules shipped in this package) that
shows every machine with its live boot stage, the discovered MACs and a feed of boot events.

The page itself holds no data, so it is served without a token; everything it shows comes from
the REST API, which it calls with the token the operator types in (kept in sessionStorage), and
from ``GET /events`` read with ``fetch`` (EventSource cannot send an Authorization header). The
Content-Security-Policy allows nothing but this origin: no inline script, no external resource.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

__all__ = ["console"]

_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "sse.js": "text/javascript; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new version of the server may ship new assets: revalidate rather than cache blindly.
    "Cache-Control": "no-cache",
}

console = APIRouter(include_in_schema=False)


def _asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "no such console file")
    content = files(__package__).joinpath(name).read_bytes()
    return Response(content, media_type=media_type, headers=_HEADERS)


@console.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@console.get("/console")
async def console_no_slash() -> RedirectResponse:
    # The page's relative asset URLs need the trailing slash.
    return RedirectResponse("/console/", status_code=307)


@console.get("/console/")
async def page() -> Response:
    return _asset("index.html")


@console.get("/console/{name}")
async def asset(name: str) -> Response:
    return _asset(name)
