"""The root of every error diskless raises on purpose.

Each package derives its own errors from :class:`DisklessError`, so the CLI and services can tell an
expected failure (bad input, missing file, busy disk) from a bug.
"""

from __future__ import annotations


class DisklessError(Exception):
    """An expected failure with a message meant for the operator."""


class ConfigError(DisklessError):
    """The configuration file or environment is invalid."""


class NotFoundError(DisklessError):
    """A named object (image, version, disk, machine) does not exist."""


class ConflictError(DisklessError):
    """The operation conflicts with the current state (in use, already exists)."""
