"""The admin API as the CLI sees it: where the server is, which token to send, and what failed.

:class:`ApiClient` is a thin synchronous wrapper over :mod:`httpx`. The base URL comes from
``--api`` / ``DISKLESS_API_URL``, else from the ``api.host`` and ``api.port`` settings; the token
from ``--token``, else from the ``api.token`` setting (``DISKLESS_API__TOKEN``). Every failure,
an HTTP error answer or a server that cannot be reached, becomes an :class:`ApiError` (a
:class:`~diskless.errors.DisklessError`) whose message is one line an operator can act on, so
the root command prints it and exits 1 like any other expected failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import typer

from diskless.cli.output import get_state
from diskless.config import Settings
from diskless.errors import DisklessError

__all__ = [
    "ApiClient",
    "ApiError",
    "ServerEvent",
    "api_client",
    "api_path",
    "base_url_from_settings",
    "error_message",
    "parse_sse",
]

_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_TOKEN_HINT = "give one with --token or DISKLESS_API__TOKEN; `diskless token create NAME` makes one"


class ApiError(DisklessError):
    """The API refused a request or could not be reached; ``status`` is 0 for the latter."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One server-sent event: its type (``event:``) and its data, parsed as JSON."""

    kind: str
    data: Any


def api_path(*parts: str) -> str:
    """``/a/b/c`` from path parts, each escaped (a hostname or MAC never needs it; junk might)."""
    return "".join("/" + quote(part, safe=":") for part in parts)


def base_url_from_settings(settings: Settings) -> str:
    """``http://HOST:PORT`` of the API ``settings`` describe; a wildcard host means this host."""
    host = settings.api.host
    if host in {"", "0.0.0.0"}:
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.port}"


def _validation_message(detail: list[Any]) -> str:
    """FastAPI's 422 ``detail`` list as ``field: message`` parts, ``body``/``query`` dropped."""
    parts = []
    for error in detail:
        if not isinstance(error, Mapping):
            parts.append(str(error))
            continue
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in {"body", "query", "path"}:
            loc = loc[1:]
        where = ".".join(loc)
        message = str(error.get("msg", "invalid value"))
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def error_message(response: httpx.Response) -> str:
    """One line saying why the API answered ``response`` with an error status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, Mapping) else None
    if isinstance(detail, list):
        text = _validation_message(detail)
    elif detail is not None:
        text = str(detail)
    else:
        text = response.text.strip().splitlines()[0] if response.text.strip() else ""
        text = text or response.reason_phrase
    if response.status_code == 401:
        return f"the API refused the token: {text} ({_TOKEN_HINT})"
    return text


class ApiClient:
    """Requests to one diskless API server, with one token."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=_TIMEOUT if timeout is None else httpx.Timeout(timeout),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError):
            reason = "connection refused" if "refused" in reason.lower() else reason
        return ApiError(
            f"cannot reach the diskless API at {self.base_url}: {reason} (is `diskless serve` "
            "running? set --api URL, DISKLESS_API_URL or api.host/api.port)"
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one request; the JSON answer (``None`` for 204), or :class:`ApiError`."""
        query = {key: value for key, value in (params or {}).items() if value is not None}
        try:
            response = self._http.request(
                method,
                path,
                json=body,
                params=query or None,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            raise ApiError(error_message(response), response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                f"the API at {self.base_url} answered {method} {path} with something that is "
                "not JSON (is --api the diskless admin API?)"
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: object = None) -> Any:
        return self.request("POST", path, body=body)

    def put(self, path: str, body: object = None) -> Any:
        return self.request("PUT", path, body=body)

    def patch(self, path: str, body: object = None) -> Any:
        return self.request("PATCH", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def events(self, path: str = "/events", **params: Any) -> Iterator[ServerEvent]:
        """The server-sent events of ``path`` as they arrive, until the server ends the stream.

        Comments (keep-alives, dropped-event notes) are skipped; so is an event whose data is
        not JSON, which the diskless API never sends.
        """
        query = {key: value for key, value in params.items() if value is not None}
        # No read timeout: a quiet stream is a keep-alive comment every 15 s, or nothing at all.
        timeout = httpx.Timeout(None, connect=5.0)
        try:
            with self._http.stream("GET", path, params=query, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise ApiError(error_message(response), response.status_code)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc


def parse_sse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """Server-sent events from the stream's lines (comments and non-JSON data skipped)."""
    kind = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            parsed = _json_or_none("\n".join(data)) if data else None
            if parsed is not None:
                yield ServerEvent(kind, parsed)
            kind, data = "message", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def api_client(ctx: typer.Context) -> ApiClient:
    """A client for this invocation's server and token (see the module docstring)."""
    state = get_state(ctx)
    url = state.api_url
    token = state.api_token
    if url is None or token is None:
        settings = state.settings
        url = url or base_url_from_settings(settings)
        if token is None and settings.api.token is not None:
            token = settings.api.token.get_secret_value()
    client = ApiClient(url, token)
    ctx.call_on_close(client.close)
    return client
