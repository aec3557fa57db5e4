"""Where state lives: the protocol both stores share, then SQLite and PostgreSQL."""

from __future__ import annotations

from keybrake.server.stores.base import Store, StoreUnavailable
from keybrake.server.stores.sqlite.store import SQLiteStore

__all__ = ["Store", "StoreUnavailable", "open_store"]


def open_store(
    database_url: str, *, serving: bool = False, upstream_timeout: float | None = None
) -> Store:
    """Build the store a database URL names: ``sqlite:///path`` (``sqlite:///:memory:``) or
    ``postgresql://user@host:port/db`` (with optional ``?schema=...&pool_size=...&
    lease_seconds=...``).

    ``serving``: the store is a server's: a SQLite file is then locked against a second
    server, and reservations a stopped server left pending are resolved when it opens (see
    :class:`SQLiteStore`); a PostgreSQL replica keeps leases on its reservations and
    resolves those of replicas that stopped, ``upstream_timeout`` seconds after their lease
    lapsed.

    Raises:
        ValueError: an unsupported or malformed URL.
    """
    if database_url.startswith("sqlite:///"):
        return SQLiteStore(database_url[len("sqlite:///") :], serving=serving)
    if database_url.startswith(("postgresql://", "postgres://")):
        from keybrake.server.stores.postgres.store import PostgresStore

        return PostgresStore(database_url, serving=serving, upstream_timeout=upstream_timeout)
    scheme = database_url.partition(":")[0]
    raise ValueError(f"unsupported database URL scheme {scheme!r} (expected sqlite:///path)")
