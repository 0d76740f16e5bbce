"""The first API token: made directly in the inventory, before any token exists to ask with."""

from __future__ import annotations

from diskless.config import Settings
from diskless.inventory.records import NewToken
from diskless.inventory.repository import Inventory

__all__ = ["bootstrap_token"]


def bootstrap_token(settings: Settings, name: str, *, read_only: bool = False) -> NewToken:
    """Create token ``name`` in the inventory ``settings`` name (migrating it if needed).

    Works whether or not the server runs (the inventory is a database both can use); the
    command line exposes it for the operator's first token. ``NewToken.token`` is the only
    copy of the secret. Raises :class:`InventoryConflictError` if the name is taken.
    """
    if settings.inventory.database_url is None:
        (settings.data_dir / "state").mkdir(parents=True, exist_ok=True)
    inventory = Inventory.from_settings(settings)
    try:
        return inventory.create_token(name, read_only=read_only, actor="bootstrap")
    finally:
        inventory.close()
