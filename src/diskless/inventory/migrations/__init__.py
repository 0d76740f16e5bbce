"""Alembic migrations of the inventory schema, run by :meth:`Database.upgrade` at start."""
