"""Bearer-token authentication: every route but ``/health`` and ``/openapi.json`` needs a token.

Tokens are made by the inventory (:meth:`Inventory.create_token`; the first one by
:func:`diskless.api.bootstrap_token`), which stores only their SHA-256. A missing, unknown or
revoked token gets 401 with ``WWW-Authenticate: Bearer``; a read-only token may only read
(GET/HEAD), anything else gets 403.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .context import ApiContext, context

__all__ = ["Caller", "CallerDep", "authorize"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CHALLENGE = {"WWW-Authenticate": "Bearer"}

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token (made with POST /tokens, or the bootstrap token)",
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the token's name, and whether it may change anything."""

    name: str
    read_only: bool

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"api:{self.name}"


async def authorize(
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Caller:
    if credentials is None:
        raise HTTPException(
            401, "missing token: send 'Authorization: Bearer <token>'", headers=_CHALLENGE
        )
    info = await asyncio.to_thread(ctx.inventory.verify_token, credentials.credentials)
    if info is None:
        raise HTTPException(401, "invalid or revoked token", headers=_CHALLENGE)
    if info.read_only and request.method not in _SAFE_METHODS:
        raise HTTPException(403, f"token {info.name!r} is read-only: it may only read")
    return Caller(info.name, info.read_only)


CallerDep = Annotated[Caller, Depends(authorize)]
