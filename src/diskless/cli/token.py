"""``diskless token ...``: API tokens.

``token create`` writes straight into the inventory database (:func:`bootstrap_token`), so the
operator can make the first token before any token exists to ask the API with, and whether or
not the server runs; ``list`` and ``revoke`` go through the API like every other command.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from diskless.api.bootstrap import bootstrap_token
from diskless.cli.client import api_client
from diskless.cli.image import say
from diskless.cli.output import JsonOption, emit, emit_one, get_settings

__all__ = ["app"]

app = typer.Typer(help="API tokens.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Token name, e.g. operator.", show_default=False)]


@app.command("create")
def create_token(
    ctx: typer.Context,
    name: NameArg,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="The token may only read (GET).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Make a token in the inventory database and print its secret (shown this once only)."""
    made = bootstrap_token(get_settings(ctx), name, read_only=read_only)
    if as_json:
        emit_one(made.model_dump(mode="json"), as_json=True)
        return
    # The secret alone on stdout, so `TOKEN=$(diskless token create NAME)` captures just it.
    kind = "read-only" if read_only else "read-write"
    typer.echo(
        f"created {kind} token {made.info.name}; its secret is shown only now "
        "(use it as DISKLESS_API__TOKEN or --token):",
        err=True,
    )
    typer.echo(made.token)


@app.command("list")
def list_tokens(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List tokens (names only; secrets are stored hashed)."""
    rows = api_client(ctx).get("/tokens")
    emit(rows, ["name", "read_only", "created", "last_used"], as_json=as_json, title="Tokens")


@app.command("revoke")
def revoke_token(ctx: typer.Context, name: NameArg) -> None:
    """Revoke a token: it stops working at once."""
    api_client(ctx).delete(f"/tokens/{quote(name, safe='')}")
    say(f"revoked token {name}")
