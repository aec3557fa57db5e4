"""The PostgreSQL store: many ``keybrake serve`` replicas, one truth (``keybrake[postgres]``).

Same contract as :class:`~keybrake.server.stores.sqlite.store.SQLiteStore`, on an asyncpg
connection pool:

- nothing authoritative is kept in a replica's memory: every request reads the key (so a
  revocation through any replica holds on the very next request through every other) and
  every reservation is one conditional ``INSERT ... ON CONFLICT DO UPDATE ... WHERE
  spent + reserved + x <= cap RETURNING``, atomic under any number of replicas;
- the schema is created and upgraded by ``keybrake migrate``; the server refuses to start on
  a schema version it doesn't know;
- when PostgreSQL can't be reached every call raises
  :class:`~keybrake.server.stores.base.StoreUnavailable` (the server answers 503 and forwards
  nothing); the pool reconnects on its own when the database is back.

The module is long because the class is the whole ``Store`` protocol, one short method per
operation; its SQL and row mapping are in :mod:`~keybrake.server.stores.postgres.sql`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from keybrake._common import format_usd, parse_rate
from keybrake.server.stores.base import (
    KEY_INSERT_COLUMNS,
    PRUNE_CHUNK,
    AdminToken,
    AuditEntry,
    BudgetInactive,
    BudgetRecord,
    IdempotencyConflict,
    IdempotentIssue,
    KeyRecord,
    LedgerEntry,
    PruneResult,
    Reservation,
    ReserveResult,
    Settlement,
    SpendState,
    StoreUnavailable,
    UsageRow,
    audit_row,
    check_revoke_filters,
    key_row,
    like_prefix,
)
from keybrake.server.stores.postgres.sql import (
    _RECORD,
    _RELEASE,
    _RESERVE,
    _RESERVE_BUDGET,
    _RESERVE_KEY,
    _RESERVE_MANY,
    _RESOLVE_ABANDONED,
    _SETTLE,
    _STATUS_FILTERS,
    _audit,
    _budget,
    _key,
)
from keybrake.server.util import utc_day

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "DEFAULT_POOL_SIZE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PostgresStore",
    "SchemaMismatch",
]

log = logging.getLogger("keybrake.store")
T = TypeVar("T")

#: Connections per replica when the URL doesn't say (``?pool_size=N``).
DEFAULT_POOL_SIZE = 10
#: Seconds to wait for a connection or a statement before failing closed.
COMMAND_TIMEOUT = 5.0
MIGRATIONS = (
    "postgres_001_initial.sql",
    "postgres_002_stripe_account.sql",
    "postgres_003_unconfirmed.sql",
    "postgres_004_brakes.sql",
)
#: Seconds a replica's hold on its pending reservations lasts unless renewed (it renews
#: every third of it); ``?lease_seconds=N`` in the URL changes it.
DEFAULT_LEASE_SECONDS = 15.0
#: Past its lease, a pending reservation is left this long more before another replica
#: resolves it: the longest its request could still be reaching the vendor (the server's
#: vendor timeout, when the store is given it).
SWEEP_GRACE_SECONDS = 30.0
#: Most reservations one sweep resolves.
SWEEP_BATCH = 1000
SCHEMA_VERSION = len(MIGRATIONS)


_OURS = ("schema", "pool_size", "lease_seconds")


def _split_url(url: str) -> tuple[str, str | None, int, float]:
    """The DSN for asyncpg, and our own options: ``schema``, ``pool_size`` and
    ``lease_seconds``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OURS}
    rest = [(k, v) for k, v in query if k not in _OURS]
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    pool_size = int(ours.get("pool_size", DEFAULT_POOL_SIZE))
    if not 1 <= pool_size <= 1000:
        raise ValueError("pool_size must be from 1 to 1000")
    lease = float(ours.get("lease_seconds", DEFAULT_LEASE_SECONDS))
    if not 0.1 <= lease <= 3600:
        raise ValueError("lease_seconds must be from 0.1 to 3600")
    return dsn, ours.get("schema") or None, pool_size, lease


class _Refusal(Exception):
    """Rolls a reservation's transaction back: a later step refused what earlier ones wrote."""

    def __init__(self, result: ReserveResult, state: SpendState) -> None:
        super().__init__(result.value)
        self.result, self.state = result, state


class SchemaMismatch(StoreUnavailable):
    """The database's schema is not the one this keybrake knows: run ``keybrake migrate``."""


class PostgresStore:
    """The store on PostgreSQL. ``url``: ``postgresql://user@host:port/db?schema=s&pool_size=n``.

    ``schema`` (optional) puts keybrake's tables in their own schema (its ``search_path``);
    ``pool_size`` sets the connections of this replica's pool.

    Rate limits are timed by the database's clock, which every replica shares (a replica
    whose clock runs ahead would otherwise see its key's window as already past);
    ``database_clock=False`` times them by the ``now`` each call passes instead (tests with a
    fake clock).
    """

    def __init__(
        self,
        url: str,
        *,
        serving: bool = False,
        upstream_timeout: float | None = None,
        database_clock: bool = True,
    ) -> None:
        self.database_clock = database_clock
        self._dsn, self.schema, self.pool_size, self.lease_seconds = _split_url(url)
        self._pool: asyncpg.Pool | None = None
        #: This replica, as the owner of the reservations it makes.
        self.replica = "rpl_" + secrets.token_hex(8)
        #: A serving replica keeps its leases and resolves what dead replicas left pending.
        self.serving = serving
        self._leases: asyncio.Task[None] | None = None
        self.sweep_grace = SWEEP_GRACE_SECONDS if upstream_timeout is None else upstream_timeout

    def __repr__(self) -> str:
        host = urlsplit(self._dsn).hostname
        return f"PostgresStore(host={host!r}, schema={self.schema!r})"

    # -- plumbing -------------------------------------------------------------------------

    @staticmethod
    def _asyncpg() -> Any:
        try:
            import asyncpg
        except ImportError:
            raise StoreUnavailable(
                "the PostgreSQL store needs asyncpg: pip install 'keybrake[postgres]'"
            ) from None
        return asyncpg

    def _settings(self) -> dict[str, str]:
        return {"search_path": self.schema} if self.schema else {}

    async def open(self, *, check_schema: bool = True) -> None:
        asyncpg = self._asyncpg()
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self.pool_size,
                command_timeout=COMMAND_TIMEOUT,
                timeout=COMMAND_TIMEOUT,
                server_settings=self._settings(),
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"can't reach PostgreSQL: {exc}") from exc
        if check_schema:
            version = await self.schema_version()
            if version != SCHEMA_VERSION:
                await self.close()
                raise SchemaMismatch(
                    f"the database has schema version {version}, this keybrake needs"
                    f" {SCHEMA_VERSION}: run 'keybrake migrate --database ...'"
                )
        if self.serving:
            self._leases = asyncio.create_task(self._keep_leases(), name="keybrake-pg-leases")

    async def close(self) -> None:
        task, self._leases = self._leases, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _keep_leases(self) -> None:
        """Renew this replica's leases, and resolve reservations whose lease has lapsed,
        every third of a lease, for as long as the replica serves."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            now = time.time_ns() // 1000
            try:
                await self.renew_leases(now)
                count, total = await self.resolve_abandoned(now)
            except StoreUnavailable:
                log.warning("can't renew leases or resolve abandoned reservations; will retry")
                continue
            if count:
                log.warning(
                    "%d reservations (%s USD) were left pending by a replica that stopped;"
                    " counted at their bounds, marked unconfirmed",
                    count,
                    format_usd(total),
                )

    async def renew_leases(self, now: int) -> None:
        """Extend the lease of every reservation this replica has in flight."""
        until = now + int(self.lease_seconds * 1_000_000)
        await self._run(
            lambda c: c.execute(
                "UPDATE reservations SET lease_until = $1 WHERE owner = $2 AND state = 'pending'",
                until,
                self.replica,
            )
        )

    async def resolve_abandoned(self, now: int) -> tuple[int, int]:
        """Count at its bound, marked unconfirmed, every pending reservation whose lease
        lapsed more than :attr:`sweep_grace` seconds ago (its replica stopped without settling
        it; the request may have reached the vendor).

        Returns:
            How many reservations, and how many micro-dollars, this call resolved.
        """
        before = now - int(self.sweep_grace * 1_000_000)
        row = await self._run(
            lambda c: c.fetchrow(_RESOLVE_ABANDONED, now, before, SWEEP_BATCH),
            transaction=True,
        )
        return int(row[0]), int(row[1])

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; any failure to reach or use the database fails closed."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is not open")
        try:
            async with pool.acquire() as conn:
                yield conn
        except (IdempotencyConflict, BudgetInactive, StoreUnavailable, _Refusal):
            raise
        except Exception as exc:
            # Refused or reset connections, a server shutting down, a connection left in a
            # broken state by one (asyncpg's InternalClientError): all fail closed.
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def _run(self, fn: Callable[[Any], Awaitable[T]], *, transaction: bool = False) -> T:
        async with self._connection() as conn:
            if not transaction:
                return await fn(conn)
            async with conn.transaction():
                return await fn(conn)

    async def ping(self) -> None:
        await self._run(lambda c: c.fetchval("SELECT 1"))

    # -- schema ---------------------------------------------------------------------------

    async def schema_version(self) -> int:
        async def read(c: Any) -> int:
            exists = await c.fetchval("SELECT to_regclass('keybrake_schema_version')")
            if exists is None:
                return 0
            return int(await c.fetchval("SELECT max(version) FROM keybrake_schema_version"))

        return await self._run(read)

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, in order; return the versions applied."""

        async def apply(c: Any) -> list[int]:
            if self.schema:
                await c.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await c.execute(
                "CREATE TABLE IF NOT EXISTS keybrake_schema_version"
                " (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            # One migrator at a time, whatever the number of replicas started together.
            await c.execute("SELECT pg_advisory_xact_lock(hashtext('keybrake_migrate'))")
            current = await c.fetchval(
                "SELECT coalesce(max(version), 0) FROM keybrake_schema_version"
            )
            if current > SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"the database has schema version {current}, newer than this keybrake's"
                    f" {SCHEMA_VERSION}"
                )
            applied = []
            for version, name in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                sql = (
                    resources.files("keybrake.server.stores.postgres.migrations")
                    .joinpath(name)
                    .read_text()
                )
                await c.execute(sql)
                await c.execute(
                    "INSERT INTO keybrake_schema_version (version) VALUES ($1)", version
                )
                applied.append(version)
            return applied

        return await self._run(apply, transaction=True)

    # -- admin tokens ---------------------------------------------------------------------

    async def add_admin_token(self, token_id: str, token_hash: str, tenant: str, now: int) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT INTO admin_tokens (token_hash, id, tenant, created_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                token_hash,
                token_id,
                tenant,
                now,
            )
        )

    async def list_admin_tokens(self) -> list[AdminToken]:
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT id, tenant, created_at, revoked_at FROM admin_tokens"
                " ORDER BY created_at, id"
            )
        )
        return [
            AdminToken(r["id"], r["tenant"], int(r["created_at"]), r["revoked_at"]) for r in rows
        ]

    async def revoke_admin_token(self, token_id: str, now: int) -> bool:
        async def revoke(c: Any) -> bool:
            await c.execute(
                "UPDATE admin_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                now,
                token_id,
            )
            return (
                await c.fetchval("SELECT 1 FROM admin_tokens WHERE id = $1", token_id) is not None
            )

        return await self._run(revoke)

    async def count_admin_tokens(self) -> int:
        return int(await self._run(lambda c: c.fetchval("SELECT count(*) FROM admin_tokens")))

    async def tenant_for_admin_token(self, token_hash: str) -> str | None:
        tenant = await self._run(
            lambda c: c.fetchval(
                "SELECT tenant FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                token_hash,
            )
        )
        return None if tenant is None else str(tenant)

    # -- keys -----------------------------------------------------------------------------

    async def insert_key(
        self, key: KeyRecord, *, idempotency: tuple[str, IdempotentIssue] | None = None
    ) -> None:
        async def insert(c: Any) -> None:
            if key.budget_id is not None:
                # FOR SHARE: a revocation of the budget waits for this key, then revokes it.
                active = await c.fetchval(
                    "SELECT 1 FROM budgets WHERE id = $1 AND tenant = $2 AND revoked_at IS NULL"
                    " AND expires_at > $3 FOR SHARE",
                    key.budget_id,
                    key.tenant,
                    key.created_at,
                )
                if active is None:
                    raise BudgetInactive(key.budget_id)
            await c.execute(
                f"INSERT INTO keys ({KEY_INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                " $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                *key_row(key),
            )
            if idempotency is not None:
                idem_hash, issue = idempotency
                claimed = await c.fetchval(
                    "INSERT INTO issue_idempotency"
                    " (tenant, idem_hash, key_id, fingerprint, sealed_token, created_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
                    key.tenant,
                    idem_hash,
                    key.id,
                    issue.fingerprint,
                    issue.sealed_token,
                    key.created_at,
                )
                if claimed is None:
                    raise IdempotencyConflict

        await self._run(insert, transaction=True)

    async def find_idempotent_issue(self, tenant: str, idem_hash: str) -> IdempotentIssue | None:
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT key_id, fingerprint, sealed_token FROM issue_idempotency"
                " WHERE tenant = $1 AND idem_hash = $2",
                tenant,
                idem_hash,
            )
        )
        return None if row is None else IdempotentIssue(row[0], row[1], row[2])

    async def get_key(self, tenant: str, key_id: str) -> KeyRecord | None:
        row = await self._run(
            lambda c: c.fetchrow("SELECT * FROM keys WHERE tenant = $1 AND id = $2", tenant, key_id)
        )
        return None if row is None else _key(row)

    async def get_key_by_token_hash(self, token_hash: str) -> KeyRecord | None:
        row = await self._run(
            lambda c: c.fetchrow("SELECT * FROM keys WHERE token_hash = $1", token_hash)
        )
        return None if row is None else _key(row)

    async def list_keys(
        self,
        tenant: str,
        *,
        status: str | None,
        limit: int,
        starting_after: str | None,
        now: int,
        label_prefix: str | None = None,
    ) -> list[KeyRecord]:
        where, args = ["tenant = $1"], [tenant]
        if status is not None:
            condition = _STATUS_FILTERS[status]
            if "$now" in condition:
                args.append(now)  # type: ignore[arg-type]
                condition = condition.replace("$now", f"${len(args)}")
            where.append(condition)
        if label_prefix is not None:
            args.append(like_prefix(label_prefix))
            where.append(f"label LIKE ${len(args)} ESCAPE '\\'")
        if starting_after is not None:
            n = len(args) + 1
            where.append(
                f"(created_at, id) < (SELECT created_at, id FROM keys WHERE tenant = $1"
                f" AND id = ${n})"
            )
            args.append(starting_after)
        sql = (
            f"SELECT * FROM keys WHERE {' AND '.join(where)}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(args) + 1}"
        )
        rows = await self._run(lambda c: c.fetch(sql, *args, limit))
        return [_key(row) for row in rows]

    async def revoke_key(self, tenant: str, key_id: str, now: int) -> KeyRecord | None:
        async def revoke(c: Any) -> Any:
            await c.execute(
                "UPDATE keys SET revoked_at = $1 WHERE tenant = $2 AND id = $3"
                " AND revoked_at IS NULL",
                now,
                tenant,
                key_id,
            )
            return await c.fetchrow(
                "SELECT * FROM keys WHERE tenant = $1 AND id = $2", tenant, key_id
            )

        row = await self._run(revoke, transaction=True)
        return None if row is None else _key(row)

    async def revoke_keys(
        self,
        tenant: str,
        now: int,
        *,
        label_prefix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        vendor: str | None = None,
        all: bool = False,
    ) -> list[str]:
        """Revoke every active key of ``tenant`` matching all the filters, in one ``UPDATE``
        (see :meth:`Store.revoke_keys`).

        Under ``READ COMMITTED`` the statement sees the keys committed when it starts; a row
        another transaction changes meanwhile is waited for and checked again, so a key
        revoked (or refreshed) concurrently is revoked once, by whoever got there first.
        """
        check_revoke_filters(label_prefix=label_prefix, metadata=metadata, vendor=vendor, all=all)
        where = ["tenant = $2", "revoked_at IS NULL", "expires_at > $1"]
        args: list[object] = [now, tenant]
        if label_prefix is not None:
            args.append(like_prefix(label_prefix))
            where.append(f"label LIKE ${len(args)} ESCAPE '\\'")
        if metadata is not None:
            # Containment of string values: every given pair, with exactly that value.
            args.append(json.dumps(dict(metadata)))
            where.append(f"metadata::jsonb @> ${len(args)}::jsonb")
        if vendor is not None:
            args.append(vendor)
            where.append(f"vendor = ${len(args)}")
        sql = f"UPDATE keys SET revoked_at = $1 WHERE {' AND '.join(where)} RETURNING id"
        rows = await self._run(lambda c: c.fetch(sql, *args))
        return sorted(str(row["id"]) for row in rows)

    # -- budgets ----------------------------------------------------------------------------

    async def insert_budget(self, budget: BudgetRecord) -> None:
        b = budget
        await self._run(
            lambda c: c.execute(
                "INSERT INTO budgets (id, tenant, label, cap_micros, created_at, expires_at,"
                " revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                b.id,
                b.tenant,
                b.label,
                b.cap_micros,
                b.created_at,
                b.expires_at,
                b.revoked_at,
            )
        )

    async def get_budget(self, tenant: str, budget_id: str) -> BudgetRecord | None:
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT * FROM budgets WHERE tenant = $1 AND id = $2", tenant, budget_id
            )
        )
        return None if row is None else _budget(row)

    async def budget_spend(self, budget_id: str, day: str) -> SpendState:
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT spent, reserved FROM budget_spend WHERE budget_id = $1 AND day = $2",
                budget_id,
                day,
            )
        )
        return SpendState(0, 0) if row is None else SpendState(int(row[0]), int(row[1]))

    async def revoke_budget(self, tenant: str, budget_id: str, now: int) -> BudgetRecord | None:
        """Revoke a budget and its keys in one transaction; a key being issued into it
        meanwhile is waited for (it holds the budget's row), then revoked too."""

        async def revoke(c: Any) -> Any:
            row = await c.fetchrow(
                "UPDATE budgets SET revoked_at = coalesce(revoked_at, $1)"
                " WHERE tenant = $2 AND id = $3 RETURNING *",
                now,
                tenant,
                budget_id,
            )
            await c.execute(
                "UPDATE keys SET revoked_at = $1 WHERE tenant = $2 AND budget_id = $3"
                " AND revoked_at IS NULL",
                now,
                tenant,
                budget_id,
            )
            return row

        row = await self._run(revoke, transaction=True)
        return None if row is None else _budget(row)

    async def extend_key(
        self, tenant: str, key_id: str, now: int, new_expires_at: int
    ) -> KeyRecord | None:
        async def extend(c: Any) -> Any:
            await c.execute(
                "UPDATE keys SET expires_at = least($1, max_expires_at)"
                " WHERE tenant = $2 AND id = $3 AND revoked_at IS NULL AND expires_at > $4",
                new_expires_at,
                tenant,
                key_id,
                now,
            )
            return await c.fetchrow(
                "SELECT * FROM keys WHERE tenant = $1 AND id = $2", tenant, key_id
            )

        row = await self._run(extend, transaction=True)
        return None if row is None else _key(row)

    # -- spend ledger ---------------------------------------------------------------------

    async def counted(self, key_id: str, object_id: str, day: str) -> int:
        value = await self._run(
            lambda c: c.fetchval(
                "SELECT coalesce(sum(CASE WHEN state = 'settled' THEN settled_amount"
                " ELSE amount END), 0)"
                " FROM reservations WHERE key_id = $1 AND object_id = $2 AND day = $3"
                " AND state <> 'released'",
                key_id,
                object_id,
                day,
            )
        )
        return int(value)

    async def spend(self, key_id: str, day: str) -> SpendState:
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT spent, reserved, unconfirmed FROM spend WHERE key_id = $1 AND day = $2",
                key_id,
                day,
            )
        )
        return SpendState(0, 0) if row is None else SpendState(*(int(v) for v in row))

    async def unconfirmed(self, day: str) -> int:
        value = await self._run(
            lambda c: c.fetchval(
                "SELECT coalesce(sum(unconfirmed), 0) FROM spend WHERE day = $1", day
            )
        )
        return int(value)

    async def admit(self, key_id: str, now: int) -> tuple[ReserveResult, SpendState]:
        """Admit a free request of a braked key: one transaction holding the key's row
        (``FOR UPDATE``), so admissions of one key take turns across every replica."""

        async def admit(c: Any) -> tuple[ReserveResult, SpendState]:
            checked = await _check_brakes(c, key_id, now, self.database_clock)
            if not isinstance(checked, _Admitted):
                return checked
            await _count_use(c, checked)
            return ReserveResult.ADMITTED, SpendState(0, 0)

        return await self._run(admit, transaction=True)

    async def _reserve_in_steps(
        self, r: Reservation, now: int, replay_after: int, lease: int
    ) -> tuple[ReserveResult, SpendState]:
        """A reservation with brakes or a budget: one transaction that holds the key's row
        (brakes), the key's spend row, then the budget's, checking each as it goes; a
        refusal rolls back whatever the steps before it wrote."""

        async def steps(c: Any) -> tuple[ReserveResult, SpendState]:
            admitted = None
            if r.braked:
                checked = await _check_brakes(c, r.key_id, now, self.database_clock)
                if not isinstance(checked, _Admitted):
                    return checked
                admitted = checked
            else:
                key_row = await c.fetchrow(
                    "SELECT revoked_at, expires_at FROM keys WHERE id = $1", r.key_id
                )
                inactive = None if key_row is None else _key_inactive(key_row, now)
                if inactive is not None:
                    return inactive
            if r.idem_hash is not None:
                await c.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1::text || ':' || $2::text))",
                    r.key_id,
                    r.idem_hash,
                )
                earlier = await c.fetchval(
                    "SELECT 1 FROM reservations WHERE key_id = $1 AND idem_hash = $2"
                    " AND state = 'settled' AND created_at >= $3 LIMIT 1",
                    r.key_id,
                    r.idem_hash,
                    replay_after,
                )
                if earlier is not None:
                    if admitted is not None:
                        await _count_use(c, admitted)
                    return ReserveResult.REPLAY, SpendState(0, 0)
            key = await c.fetchrow(_RESERVE_KEY, r.key_id, r.day, r.amount)
            if key is None:
                return ReserveResult.CAP_EXHAUSTED, SpendState(0, 0)
            if (
                r.budget_id is not None
                and await c.fetchrow(_RESERVE_BUDGET, r.budget_id, r.day, r.amount) is None
            ):
                cap = await c.fetchval("SELECT cap_micros FROM budgets WHERE id = $1", r.budget_id)
                used = await c.fetchval(
                    "SELECT spent + reserved FROM budget_spend WHERE budget_id = $1 AND day = $2",
                    r.budget_id,
                    r.day,
                )
                raise _Refusal(
                    ReserveResult.BUDGET_EXHAUSTED,
                    SpendState(0, 0, budget_cap=int(cap or 0), budget_spent=int(used or 0)),
                )
            await c.execute(
                _RECORD,
                r.id,
                r.key_id,
                r.day,
                r.amount,
                r.idem_hash,
                now,
                self.replica,
                lease,
                r.budget_id,
            )
            if admitted is not None:
                await _count_use(c, admitted)
            return ReserveResult.RESERVED, SpendState(int(key["spent"]), int(key["reserved"]))

        try:
            result, state = await self._run(steps, transaction=True)
        except _Refusal as refusal:
            return refusal.result, refusal.state
        if result in (ReserveResult.CAP_EXHAUSTED, ReserveResult.REPLAY):
            return result, await self.spend(r.key_id, r.day)
        return result, state

    async def reserve(
        self, reservation: Reservation, now: int, *, replay_after: int = 0
    ) -> tuple[ReserveResult, SpendState]:
        """Reserve in one statement (one round trip), committed durably before it answers.

        Concurrent reservations on the same key and day wait for each other on the spend
        row and re-check the cap against what is committed. A reservation with a budget or
        brakes takes a few statements in one transaction instead
        (:meth:`_reserve_in_steps`).
        """
        r = reservation
        lease = now + int(self.lease_seconds * 1_000_000)
        if r.budget_id is not None or r.braked:
            return await self._reserve_in_steps(r, now, replay_after, lease)
        args = (
            r.key_id,
            r.day,
            r.amount,
            r.id,
            r.idem_hash,
            replay_after,
            now,
            self.replica,
            lease,
        )
        if r.idem_hash is None:
            row = await self._run(lambda c: c.fetchrow(_RESERVE, *args))
        else:

            async def serialised(c: Any) -> Any:
                # Replays of one idempotency key take turns, so only the first reserves.
                await c.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1::text || ':' || $2::text))",
                    r.key_id,
                    r.idem_hash,
                )
                return await c.fetchrow(_RESERVE, *args)

            row = await self._run(serialised, transaction=True)
        if row["expires_at"] is not None:
            inactive = _key_inactive(row, now)
            if inactive is not None:
                return inactive
        if row["replay"]:
            return ReserveResult.REPLAY, await self.spend(r.key_id, r.day)
        if row["spent"] is None:
            return ReserveResult.CAP_EXHAUSTED, await self.spend(r.key_id, r.day)
        return ReserveResult.RESERVED, SpendState(int(row["spent"]), int(row["reserved"]))

    async def reserve_many(
        self, reservations: Sequence[Reservation], now: int
    ) -> tuple[ReserveResult, SpendState] | None:
        """Reserve several plain reservations of one key and day (see
        :attr:`Reservation.plain`) in one statement and one commit, all or none.

        Returns:
            ``(RESERVED, the spend row after)`` if all were reserved; the refusal of a key
            revoked or expired meanwhile; None if their sum doesn't fit under the cap, and
            nothing was written (reserve them one by one to find which fit).
        """
        first = reservations[0]
        if not all(
            r.plain and (r.key_id, r.day) == (first.key_id, first.day) for r in reservations
        ):
            raise ValueError("reserve_many takes plain reservations of one key and day")
        lease = now + int(self.lease_seconds * 1_000_000)
        amounts = [r.amount for r in reservations]
        ids = [r.id for r in reservations]
        args = (first.key_id, first.day, amounts, ids, now, self.replica, lease)
        row = await self._run(lambda c: c.fetchrow(_RESERVE_MANY, *args))
        if row["expires_at"] is not None:
            inactive = _key_inactive(row, now)
            if inactive is not None:
                return inactive
        if row["spent"] is None:
            return None
        return ReserveResult.RESERVED, SpendState(int(row["spent"]), int(row["reserved"]))

    async def _finish(self, sql: str, *args: Any) -> bool:
        """Settle or release in one statement, committed durably before it returns: a
        settlement acknowledged is never lost to a database crash."""
        return await self._run(lambda c: c.fetchval(sql, *args)) is not None

    async def settle(self, reservation_id: str, settlement: Settlement, now: int) -> bool:
        s = settlement
        return await self._finish(
            _SETTLE, s.actual, s.final, s.vendor_request_id, s.object_id, now, reservation_id
        )

    async def release(self, reservation_id: str, now: int) -> bool:
        return await self._finish(_RELEASE, now, reservation_id)

    async def correct_price(self, object_id: str, actual: int, now: int) -> bool:
        async def correct(c: Any) -> bool:
            row = await c.fetchrow(
                "SELECT id, key_id, day, settled_amount, budget_id FROM reservations"
                " WHERE object_id = $1 AND NOT final AND state = 'settled'"
                " LIMIT 1 FOR UPDATE",
                object_id,
            )
            if row is None:
                return False
            await c.execute(
                "UPDATE reservations SET settled_amount = $1, final = TRUE, finished_at = $2"
                " WHERE id = $3",
                actual,
                now,
                row["id"],
            )
            await c.execute(
                "UPDATE spend SET spent = spent - $1 + $2 WHERE key_id = $3 AND day = $4",
                row["settled_amount"],
                actual,
                row["key_id"],
                row["day"],
            )
            if row["budget_id"] is not None:
                await c.execute(
                    "UPDATE budget_spend SET spent = spent - $1 + $2"
                    " WHERE budget_id = $3 AND day = $4",
                    row["settled_amount"],
                    actual,
                    row["budget_id"],
                    row["day"],
                )
            return True

        return await self._run(correct, transaction=True)

    async def ledger(self, key_id: str) -> list[LedgerEntry]:
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT id, key_id, day, amount, state, settled_amount, final, object_id"
                " FROM reservations WHERE key_id = $1 ORDER BY created_at, id",
                key_id,
            )
        )
        return [
            LedgerEntry(
                r["id"],
                r["key_id"],
                r["day"],
                int(r["amount"]),
                r["state"],
                None if r["settled_amount"] is None else int(r["settled_amount"]),
                bool(r["final"]),
                r["object_id"],
            )
            for r in rows
        ]

    # -- audit and usage ------------------------------------------------------------------

    async def write_audit(self, entries: list[AuditEntry]) -> None:
        rows = [audit_row(e) for e in entries]
        await self._run(
            lambda c: c.executemany(
                "INSERT INTO audit (at, tenant, key_id, label, vendor, method, path, decision,"
                " status, reserved, settled, upstream_ms, vendor_request_id)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                rows,
            )
        )

    async def list_audit(
        self,
        tenant: str,
        *,
        key_id: str | None,
        decision: str | None,
        limit: int,
        starting_after: int | None,
    ) -> list[AuditEntry]:
        where, args = ["tenant = $1"], [tenant]
        for column, value in (("key_id", key_id), ("decision", decision)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if starting_after is not None:
            args.append(starting_after)  # type: ignore[arg-type]
            where.append(f"id < ${len(args)}")
        sql = (
            f"SELECT * FROM audit WHERE {' AND '.join(where)}"
            f" ORDER BY id DESC LIMIT ${len(args) + 1}"
        )
        rows = await self._run(lambda c: c.fetch(sql, *args, limit))
        return [_audit(row) for row in rows]

    async def usage(
        self,
        tenant: str,
        *,
        key_id: str | None,
        day: str | None,
        limit: int,
        starting_after: tuple[str, str] | None,
    ) -> list[UsageRow]:
        where, args = ["k.tenant = $1"], [tenant]
        for column, value in (("s.key_id", key_id), ("s.day", day)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if starting_after is not None:
            args.extend(starting_after)
            where.append(f"(s.day, s.key_id) < (${len(args) - 1}, ${len(args)})")
        sql = (
            "SELECT s.key_id, k.label, s.day, s.spent, s.reserved, k.cap_micros, s.unconfirmed,"
            " k.budget_id FROM spend s JOIN keys k ON k.id = s.key_id"
            f" WHERE {' AND '.join(where)} ORDER BY s.day DESC, s.key_id DESC"
            f" LIMIT ${len(args) + 1}"
        )
        rows = await self._run(lambda c: c.fetch(sql, *args, limit))
        return [
            UsageRow(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), r[7])
            for r in rows
        ]

    async def count_active_keys(self, now: int) -> int:
        return int(
            await self._run(
                lambda c: c.fetchval(
                    "SELECT count(*) FROM keys WHERE revoked_at IS NULL AND expires_at > $1", now
                )
            )
        )

    # -- retention ------------------------------------------------------------------------

    async def prune(self, before: int) -> PruneResult:
        """Delete what is older than ``before`` (see :meth:`Store.prune`), in statements of
        at most :data:`~keybrake.server.stores.base.PRUNE_CHUNK` rows, each its own transaction.

        Any number of replicas may run it at once: audit entries are walked by ``id``, and
        a range another replica is deleting is waited for, then found gone; reservations
        and spend rows are taken with ``FOR UPDATE SKIP LOCKED``, so two never take the
        same rows. A reservation being corrected meanwhile is skipped until the next pass.
        """
        audit = await self._prune_audit(before)
        reservations = await self._prune_where(
            "reservations", "state <> 'pending' AND finished_at < $1", before
        )
        spend = await self._prune_where("spend", "day < $1 AND reserved = 0", utc_day(before))
        spend += await self._prune_where(
            "budget_spend", "day < $1 AND reserved = 0", utc_day(before)
        )
        # The rate-limit hits of keys long revoked or expired: they can never be read again.
        await self._prune_where(
            "key_hits",
            "key_id IN (SELECT id FROM keys WHERE coalesce(revoked_at, expires_at) < $1)",
            before,
        )
        return PruneResult(audit, reservations, spend)

    async def _prune_audit(self, before: int) -> int:
        """Audit entries, chunk by chunk of ids, only as far as entries older than
        ``before`` go (entries are written in time order): no scan of the whole table."""
        deleted = 0
        after: int | None = 0
        while after is not None:
            n, after = await self._run(
                functools.partial(_prune_audit_chunk, after=after, before=before)
            )
            deleted += n
        return deleted

    async def _prune_where(self, table: str, condition: str, bound: int | str) -> int:
        """Rows of ``table`` matching ``condition`` (on ``$1``), a chunk at a time."""
        sql = (
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {condition} LIMIT $2 FOR UPDATE SKIP LOCKED))"
        )
        deleted = 0
        while True:
            status = await self._run(lambda c: c.execute(sql, bound, PRUNE_CHUNK))
            n = int(status.split()[-1])
            deleted += n
            if n < PRUNE_CHUNK:
                return deleted


#: The database's clock in epoch microseconds (the time of the call, not of the transaction).
_DATABASE_NOW = "SELECT (extract(epoch FROM clock_timestamp()) * 1e6)::bigint"


@attrs.frozen
class _Admitted:
    """A request that passed its key's brakes, to count once it is forwarded."""

    key_id: str
    #: When the request goes in the key's ring of hits (None: the key has no rate limit).
    at: int | None = None
    #: The slot of the ring it takes.
    slot: int = 0


def _key_inactive(row: Any, now: int) -> tuple[ReserveResult, SpendState] | None:
    """The refusal of a request whose key was revoked or expired since it was looked up."""
    if row["revoked_at"] is not None:
        return ReserveResult.KEY_REVOKED, SpendState(0, 0)
    if now >= row["expires_at"]:
        return ReserveResult.KEY_EXPIRED, SpendState(0, 0)
    return None


async def _check_brakes(
    c: Any, key_id: str, now: int, database_clock: bool
) -> _Admitted | tuple[ReserveResult, SpendState]:
    """The key's status, its use count, then its rate limit (a ring of its last N hits: see
    ``AdmitOp``), holding the key's row until the transaction ends: one read of the key's
    row and at most one of its ring, whatever N.

    With ``database_clock``, the rate limit is timed by the database's clock, read once
    the key's row is held (``clock_timestamp()``: the time now, not the transaction's
    start), so every replica logs on one clock.

    Returns:
        What to count once the request is admitted, or a refusal.
    """
    row = await c.fetchrow(
        "SELECT rate_limit, max_requests, requests_used, rate_hits, last_hit_at, revoked_at,"
        " expires_at FROM keys WHERE id = $1 FOR UPDATE",
        key_id,
    )
    if row is None:
        return _Admitted(key_id)
    inactive = _key_inactive(row, now)
    if inactive is not None:
        return inactive
    if row["max_requests"] is not None and row["requests_used"] >= row["max_requests"]:
        return ReserveResult.USES_EXHAUSTED, SpendState(0, 0)
    if row["rate_limit"] is None:
        return _Admitted(key_id)
    limit, seconds = parse_rate(row["rate_limit"])
    window = seconds * 1_000_000
    if database_clock:
        now = int(await c.fetchval(_DATABASE_NOW))
    last = row["last_hit_at"]
    at = now if last is None else max(now, int(last))  # the ring never goes backwards
    slot = int(row["rate_hits"]) % limit
    held = await c.fetchval("SELECT at FROM key_hits WHERE key_id = $1 AND slot = $2", key_id, slot)
    if held is not None and held > at - window:  # the N-th latest hit is in the window
        return ReserveResult.RATE_LIMITED, SpendState(0, 0, retry_after=held + window - now)
    return _Admitted(key_id, at, slot)


async def _count_use(c: Any, admitted: _Admitted) -> None:
    key_id = admitted.key_id
    if admitted.at is None:
        await c.execute("UPDATE keys SET requests_used = requests_used + 1 WHERE id = $1", key_id)
        return
    await c.execute(
        "UPDATE keys SET requests_used = requests_used + 1, rate_hits = rate_hits + 1,"
        " last_hit_at = $2 WHERE id = $1",
        key_id,
        admitted.at,
    )
    await c.execute(
        "INSERT INTO key_hits (key_id, slot, at) VALUES ($1, $2, $3)"
        " ON CONFLICT (key_id, slot) DO UPDATE SET at = EXCLUDED.at",
        key_id,
        admitted.slot,
        admitted.at,
    )


async def _prune_audit_chunk(c: Any, *, after: int, before: int) -> tuple[int, int | None]:
    """Delete the entries older than ``before`` among the next chunk of ids after ``after``.

    Returns:
        How many were deleted, and the id to go on from, or None when the chunk reached
        entries of ``before`` or later (or the end of the table).
    """
    end = await c.fetchrow(
        "SELECT id, at FROM audit WHERE id > $1 ORDER BY id OFFSET $2 LIMIT 1",
        after,
        PRUNE_CHUNK - 1,
    )
    if end is None:
        last = await c.fetchval("SELECT max(id) FROM audit")
        if last is None or last <= after:
            return 0, None
        upto, more = int(last), False
    else:
        upto, more = int(end["id"]), end["at"] < before
    status = await c.execute(
        "DELETE FROM audit WHERE id > $1 AND id <= $2 AND at < $3", after, upto, before
    )
    return int(status.split()[-1]), upto if more else None
