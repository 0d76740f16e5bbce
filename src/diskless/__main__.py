"""``python -m diskless`` runs the command-line interface."""

from diskless.cli.main import app

# Guarded: worker processes started with "spawn" import this module as __mp_main__.
if __name__ == "__main__":
    app()
