"""``diskless image ...``: golden images and their versions (owned by the storage lifecycle work)."""

import typer

app = typer.Typer(help="Golden images and their immutable versions.", no_args_is_help=True)
