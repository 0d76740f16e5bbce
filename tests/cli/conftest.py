"""Registers the CLI tests' fixtures, which live in ``cli_api_support`` (imported by name)."""

from cli_api_support import clean_environment, served

__all__ = ["clean_environment", "served"]
