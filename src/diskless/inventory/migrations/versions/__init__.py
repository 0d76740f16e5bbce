"""Alembic revision files (Alembic loads each by path; this marker keeps type checkers happy)."""
