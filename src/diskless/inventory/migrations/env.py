"""Alembic environment: runs on the connection :class:`Database` hands over, never from an ini.

Batch mode is on so that later migrations can ALTER tables on SQLite (which rebuilds them).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from diskless.inventory.model import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "the inventory migrations run through diskless.inventory.Database.upgrade(), "
        "which passes its connection"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
