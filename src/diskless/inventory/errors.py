"""Errors of the inventory, each naming the field or object at fault.

The REST API maps them to status codes: :class:`InvalidFieldError` → 422 (with ``field`` as the
error location), :class:`InventoryNotFoundError` → 404, :class:`InventoryConflictError` → 409.
"""

from __future__ import annotations

from diskless.errors import ConflictError, DisklessError, NotFoundError

__all__ = [
    "InvalidFieldError",
    "InventoryConflictError",
    "InventoryError",
    "InventoryNotFoundError",
]


class InventoryError(DisklessError):
    """Root of the inventory's expected failures."""


class InvalidFieldError(InventoryError, ValueError):
    """A value is not acceptable; ``field`` names it (dotted for nested values)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class InventoryNotFoundError(InventoryError, NotFoundError):
    """No machine, group, discovered MAC or token by that key."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} {key!r}")
        self.kind = kind
        self.key = key


class InventoryConflictError(InventoryError, ConflictError):
    """The change clashes with stored state (a unique value already used, a group in use)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
