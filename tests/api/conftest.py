"""Registers the API tests' fixtures, which live in ``api_support`` (imported by name there)."""

from api_support import api, database_url, postgres_database, postgres_server

__all__ = ["api", "database_url", "postgres_database", "postgres_server"]
