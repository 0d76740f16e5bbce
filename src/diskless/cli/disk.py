"""``diskless disk ...``: per-machine copy-on-write disks (owned by the storage lifecycle work)."""

import typer

app = typer.Typer(help="Per-machine copy-on-write disks.", no_args_is_help=True)
