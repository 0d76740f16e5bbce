"""``python -m diskless`` runs the command-line interface."""

from diskless.cli.main import app

app()
