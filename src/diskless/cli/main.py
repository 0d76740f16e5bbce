"""The ``diskless`` command: the typer application and its sub-commands."""

import typer

from diskless.cli import disk, image

app = typer.Typer(help="diskless: a diskless network-boot server.", no_args_is_help=True)
app.add_typer(image.app, name="image")
app.add_typer(disk.app, name="disk")
