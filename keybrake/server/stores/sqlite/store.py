"""The embedded store: one SQLite file in WAL mode, served by one process.

:class:`SQLiteStore` implements :class:`~keybrake.server.stores.base.Store`. Only SHA-256
hashes of tokens are ever stored.

Spend is kept in integer micro-dollars per key and UTC day, as ``spent`` (settled) plus
``reserved`` (in flight). A reservation is one conditional statement
(``spent + reserved + x <= cap``), never a read-modify-write in Python, so concurrent requests
can't take a key past its cap.

The module is long because the class is the whole ``Store`` protocol, one short method per
operation; its statements on a connection are in :mod:`~keybrake.server.stores.sqlite.rows`
and its schema in :mod:`~keybrake.server.stores.sqlite.schema`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from keybrake._common import format_usd
from keybrake.server.stores.base import (
    KEY_INSERT_COLUMNS,
    AdminToken,
    AuditEntry,
    BudgetInactive,
    BudgetRecord,
    IdempotencyConflict,
    IdempotentIssue,
    KeyRecord,
    LedgerEntry,
    LedgerOp,
    PruneResult,
    Reservation,
    ReserveResult,
    Settlement,
    SpendState,
    StoreUnavailable,
    UsageRow,
    check_revoke_filters,
    key_row,
)
from keybrake.server.stores.sqlite.lock import _ServeLock
from keybrake.server.stores.sqlite.rows import (
    _AUDIT_COLUMNS,
    _BUDGET_COLUMNS,
    _KEY_COLUMNS,
    _STATUS_FILTERS,
    _admit,
    _audit_from_row,
    _Batch,
    _budget_from_row,
    _correct_price,
    _finish,
    _in_transaction,
    _insert_audit,
    _key_from_row,
    _prune_chunk,
    _prune_hits_chunk,
    _reserve,
    _resolve_pending,
    _spend_state,
    _SpendRow,
    _transaction,
)
from keybrake.server.stores.sqlite.schema import (
    _MIGRATIONS,
    _SCHEMA,
    OLDEST_SCHEMA_VERSION,
    SCHEMA_VERSION,
)
from keybrake.server.util import utc_day

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CHECKPOINT_BUSY_TIMEOUT_MS",
    "CHECKPOINT_INTERVAL",
    "JOURNAL_SIZE_LIMIT",
    "KEY_CACHE_SIZE",
    "SPEND_CACHE_SIZE",
    "SQLiteStore",
    "WAL_TRUNCATE_SIZE",
]


T = TypeVar("T")

log = logging.getLogger("keybrake.store")


#: Keys kept in :class:`SQLiteStore`'s look-up cache; it starts over when full.
KEY_CACHE_SIZE = 10_000
#: Spend rows (key and day) a serving store remembers between batches; it starts over beyond.
SPEND_CACHE_SIZE = 10_000
#: Longest a write waits for a lock held by another process before failing closed.
BUSY_TIMEOUT_MS = 250
#: Seconds between background WAL checkpoints.
CHECKPOINT_INTERVAL = 1.0
#: WAL size (bytes) past which the background checkpoint, after its ``PASSIVE`` pass, also
#: restarts the log and truncates the file to nothing (``TRUNCATE``). That needs writers held
#: back for a moment (the frames written since the ``PASSIVE`` pass are copied, the database
#: synced): a write waits for it, well within :data:`BUSY_TIMEOUT_MS`. Below this size a
#: checkpoint never holds a writer back; under steady load the WAL would then never restart,
#: and grow without bound.
WAL_TRUNCATE_SIZE = 16 * 1024 * 1024
#: Largest WAL file (bytes) SQLite leaves behind once it restarts the log
#: (``PRAGMA journal_size_limit``); larger, it is cut to this size.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
#: Longest the background checkpoint waits for a lock before giving up until its next turn:
#: a ``TRUNCATE`` holds writers back while it waits for readers, so this stays well under
#: :data:`BUSY_TIMEOUT_MS`, lest a write held back fail closed.
CHECKPOINT_BUSY_TIMEOUT_MS = 50


class SQLiteStore:
    """The embedded store: one SQLite file in WAL mode, for one server process.

    Statements run on the event loop's own thread: each takes microseconds, far less than a
    hand-off to a worker thread would. What can take long, the WAL checkpoint that writes
    pages back and syncs the file, never runs there: automatic checkpoints are off, and a
    background thread checkpoints every :data:`CHECKPOINT_INTERVAL` seconds (``PASSIVE``,
    which never blocks a writer, then ``TRUNCATE`` once the WAL passes
    :data:`WAL_TRUNCATE_SIZE`, which holds writers back for a moment). A write that finds
    the database locked by another process waits at most :data:`BUSY_TIMEOUT_MS`, then
    fails closed.

    With ``serving=True`` (what ``keybrake serve`` uses) the store claims the file for its
    process: it holds an exclusive lock on the file while open, so a second server on the
    same file (by any path, link or symlink) refuses to start, and it caches keys by token
    hash (see :meth:`get_key_by_token_hash`). Other processes (``keybrake tokens``, backups, a
    reader) may still open the file without ``serving``.
    """

    def __init__(self, path: str | Path, *, serving: bool = False) -> None:
        self.path = str(path)
        self.serving = serving
        self._lock: _ServeLock | None = None
        self._conn: sqlite3.Connection | None = None
        self._keys_by_hash: dict[str, KeyRecord] = {}
        # A serving store's spend rows as its batches last left them (see _Batch).
        self._spend: dict[tuple[str, str], _SpendRow] = {}
        self._checkpointer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._run_now(fn)

    def _run_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("store is not open")
        try:
            return fn(conn)
        except BaseException as exc:
            # Whatever went wrong, never leave a transaction open behind it, nor believe
            # in spend it may have rolled back.
            self._spend.clear()
            if conn.in_transaction:
                conn.rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(f"SQLite error: {exc}") from exc
            raise

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.serving:
                self._lock = _ServeLock.claim(self.path)
        try:
            await self._open()
        except BaseException:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()
            raise

    async def _open(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"can't open {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is not None and not OLDEST_SCHEMA_VERSION <= row[0] <= SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"{self.path} has schema version {row[0]}; this keybrake needs"
                    f" {SCHEMA_VERSION} and can't migrate it"
                )
            if row is not None and row[0] < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for version in range(row[0] + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
                conn.execute("COMMIT")
            conn.executescript(_SCHEMA)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            if self.serving:
                count, total = _resolve_pending(conn, time.time_ns() // 1000)
                if count:
                    log.warning(
                        "%d reservations (%s USD) were left pending when the server last"
                        " stopped; counted at their bounds, marked unconfirmed",
                        count,
                        format_usd(total),
                    )
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(f"can't open {self.path}: {exc}") from exc
            raise
        self._conn = conn
        if self.path != ":memory:":
            self._checkpointer = asyncio.create_task(
                self._checkpoint_forever(), name="keybrake-sqlite-checkpoint"
            )

    async def _checkpoint_forever(self) -> None:
        """Write the WAL back into the database file, off the event loop."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keybrake-checkpoint")
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(
            executor,
            functools.partial(
                sqlite3.connect,
                self.path,
                timeout=CHECKPOINT_BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            ),
        )
        try:
            frames = -1
            while True:
                await asyncio.sleep(CHECKPOINT_INTERVAL)
                try:
                    frames = await loop.run_in_executor(
                        executor, _checkpoint, conn, self.path + "-wal", frames
                    )
                except sqlite3.Error:
                    log.warning("WAL checkpoint of %s failed; will retry", self.path)
        finally:
            # Runs to the end even when cancelled: the executor must not leak.
            await asyncio.shield(loop.run_in_executor(executor, conn.close))
            executor.shutdown(wait=False)

    async def close(self) -> None:
        task, self._checkpointer = self._checkpointer, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conn, self._conn = self._conn, None
        self._keys_by_hash.clear()
        self._spend.clear()
        if conn is not None:
            conn.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    # -- admin tokens ---------------------------------------------------------------------

    async def add_admin_token(self, token_id: str, token_hash: str, tenant: str, now: int) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO admin_tokens (token_hash, id, tenant, created_at)"
                " VALUES (?, ?, ?, ?)",
                (token_hash, token_id, tenant, now),
            )
        )

    async def list_admin_tokens(self) -> list[AdminToken]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT id, tenant, created_at, revoked_at FROM admin_tokens"
                " ORDER BY created_at, id"
            ).fetchall()
        )
        return [
            AdminToken(r[0], r[1], int(r[2]), None if r[3] is None else int(r[3])) for r in rows
        ]

    async def revoke_admin_token(self, token_id: str, now: int) -> bool:
        def revoke(c: sqlite3.Connection) -> bool:
            c.execute(
                "UPDATE admin_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            return (
                c.execute("SELECT 1 FROM admin_tokens WHERE id = ?", (token_id,)).fetchone()
                is not None
            )

        return await self._run(revoke)

    async def count_admin_tokens(self) -> int:
        """Every master token ever made, revoked ones included."""
        row = await self._run(lambda c: c.execute("SELECT count(*) FROM admin_tokens").fetchone())
        return int(row[0])

    async def tenant_for_admin_token(self, token_hash: str) -> str | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT tenant FROM admin_tokens WHERE token_hash = ? AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    # -- audit and usage --------------------------------------------------------------------

    async def write_audit(self, entries: list[AuditEntry]) -> None:
        await self._run(lambda c: _transaction(c, lambda: _insert_audit(c, entries)))

    async def list_audit(
        self,
        tenant: str,
        *,
        key_id: str | None,
        decision: str | None,
        limit: int,
        starting_after: int | None,
    ) -> list[AuditEntry]:
        where, params = ["tenant = ?"], [tenant]
        if key_id is not None:
            where.append("key_id = ?")
            params.append(key_id)
        if decision is not None:
            where.append("decision = ?")
            params.append(decision)
        if starting_after is not None:
            where.append("id < ?")
            params.append(str(starting_after))
        sql = (
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)}"
            " ORDER BY id DESC LIMIT ?"
        )
        rows = await self._run(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [_audit_from_row(row) for row in rows]

    async def usage(
        self,
        tenant: str,
        *,
        key_id: str | None,
        day: str | None,
        limit: int,
        starting_after: tuple[str, str] | None,
    ) -> list[UsageRow]:
        where, params = ["k.tenant = ?"], [tenant]
        if key_id is not None:
            where.append("s.key_id = ?")
            params.append(key_id)
        if day is not None:
            where.append("s.day = ?")
            params.append(day)
        if starting_after is not None:
            where.append("(s.day, s.key_id) < (?, ?)")
            params.extend(starting_after)
        sql = (
            "SELECT s.key_id, k.label, s.day, s.spent, s.reserved, k.cap_micros, s.unconfirmed,"
            " k.budget_id FROM spend s JOIN keys k ON k.id = s.key_id"
            f" WHERE {' AND '.join(where)} ORDER BY s.day DESC, s.key_id DESC LIMIT ?"
        )
        rows = await self._run(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [
            UsageRow(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), r[7])
            for r in rows
        ]

    async def count_active_keys(self, now: int) -> int:
        row = await self._run(
            lambda c: c.execute(
                "SELECT count(*) FROM keys WHERE revoked_at IS NULL AND expires_at > ?", (now,)
            ).fetchone()
        )
        return int(row[0])

    # -- keys -----------------------------------------------------------------------------

    async def insert_key(
        self, key: KeyRecord, *, idempotency: tuple[str, IdempotentIssue] | None = None
    ) -> None:
        def insert(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            if key.budget_id is not None and (
                c.execute(
                    "SELECT 1 FROM budgets WHERE id = ? AND tenant = ? AND revoked_at IS NULL"
                    " AND expires_at > ?",
                    (key.budget_id, key.tenant, key.created_at),
                ).fetchone()
                is None
            ):
                raise BudgetInactive(key.budget_id)
            c.execute(
                f"INSERT INTO keys ({KEY_INSERT_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                key_row(key),
            )
            if idempotency is not None:
                idem_hash, issue = idempotency
                claimed = c.execute(
                    "INSERT OR IGNORE INTO issue_idempotency"
                    " (tenant, idem_hash, key_id, fingerprint, sealed_token, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        key.tenant,
                        idem_hash,
                        key.id,
                        issue.fingerprint,
                        issue.sealed_token,
                        key.created_at,
                    ),
                ).rowcount
                if not claimed:
                    raise IdempotencyConflict
            c.execute("COMMIT")

        await self._run(insert)

    async def find_idempotent_issue(self, tenant: str, idem_hash: str) -> IdempotentIssue | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT key_id, fingerprint, sealed_token FROM issue_idempotency"
                " WHERE tenant = ? AND idem_hash = ?",
                (tenant, idem_hash),
            ).fetchone()
        )
        return None if row is None else IdempotentIssue(row[0], row[1], row[2])

    async def get_key(self, tenant: str, key_id: str) -> KeyRecord | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE tenant = ? AND id = ?", (tenant, key_id)
            ).fetchone()
        )
        return None if row is None else _key_from_row(row)

    async def get_key_by_token_hash(self, token_hash: str) -> KeyRecord | None:
        """The key a token hash names; a serving store answers from its cache when it can.

        The proxy asks this on every request. A key's record changes only when it is
        revoked (alone or with its budget) or refreshed (its ``requests_used`` aside, which
        admission reads from the table, never from here), and in a serving store that
        happens only through this store (the file is locked against other servers), which
        forgets the cache then: a
        revocation or refresh takes effect on the very next request. Unknown tokens are
        never cached.
        """

        def find(c: sqlite3.Connection) -> KeyRecord | None:
            key = self._keys_by_hash.get(token_hash)
            if key is not None:
                return key
            row = c.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            if row is None:
                return None
            key = _key_from_row(row)
            if self.serving:
                if len(self._keys_by_hash) >= KEY_CACHE_SIZE:
                    self._keys_by_hash.clear()
                self._keys_by_hash[token_hash] = key
            return key

        return await self._run(find)

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
        """A tenant's keys, newest first, after the key ``starting_after`` (a cursor)."""
        where = ["tenant = :tenant"]
        if status is not None:
            where.append(_STATUS_FILTERS[status])
        if label_prefix is not None:
            # Exactly, as revoke_keys matches: SQLite's LIKE ignores case.
            where.append("substr(label, 1, length(:prefix)) = :prefix")
        if starting_after is not None:
            where.append(
                "(created_at, id) < (SELECT created_at, id FROM keys"
                " WHERE tenant = :tenant AND id = :after)"
            )
        sql = (
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT :limit"
        )
        params = {
            "tenant": tenant,
            "now": now,
            "after": starting_after,
            "limit": limit,
            "prefix": label_prefix,
        }
        rows = await self._run(lambda c: c.execute(sql, params).fetchall())
        return [_key_from_row(row) for row in rows]

    async def revoke_key(self, tenant: str, key_id: str, now: int) -> KeyRecord | None:
        def revoke(c: sqlite3.Connection) -> Any:
            self._keys_by_hash.clear()
            self._spend.clear()  # it holds each key's status too
            c.execute(
                "UPDATE keys SET revoked_at = ? WHERE tenant = ? AND id = ? AND revoked_at IS NULL",
                (now, tenant, key_id),
            )
            return c.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE tenant = ? AND id = ?", (tenant, key_id)
            ).fetchone()

        row = await self._run(revoke)
        return None if row is None else _key_from_row(row)

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
        (see :meth:`Store.revoke_keys`)."""
        check_revoke_filters(label_prefix=label_prefix, metadata=metadata, vendor=vendor, all=all)
        where = ["tenant = ?", "revoked_at IS NULL", "expires_at > ?"]
        params: list[object] = [now, tenant, now]
        if label_prefix is not None:
            # SQLite's LIKE ignores ASCII case; this compares exactly, with nothing to escape.
            where.append("substr(label, 1, length(?)) = ?")
            params += [label_prefix, label_prefix]
        for name, value in (metadata or {}).items():
            # json_each, not a JSON path: a key may hold any character.
            where.append(
                "EXISTS (SELECT 1 FROM json_each(keys.metadata)"
                " WHERE json_each.key = ? AND json_each.type = 'text' AND json_each.value = ?)"
            )
            params += [name, value]
        if vendor is not None:
            where.append("vendor = ?")
            params.append(vendor)
        sql = f"UPDATE keys SET revoked_at = ? WHERE {' AND '.join(where)} RETURNING id"

        def revoke(c: sqlite3.Connection) -> list[Any]:
            self._keys_by_hash.clear()
            self._spend.clear()  # it holds each key's status too
            return c.execute(sql, params).fetchall()

        rows = await self._run(revoke)
        return sorted(str(row[0]) for row in rows)

    # -- budgets ----------------------------------------------------------------------------

    async def insert_budget(self, budget: BudgetRecord) -> None:
        await self._run(
            lambda c: c.execute(
                f"INSERT INTO budgets ({_BUDGET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    budget.id,
                    budget.tenant,
                    budget.label,
                    budget.cap_micros,
                    budget.created_at,
                    budget.expires_at,
                    budget.revoked_at,
                ),
            )
        )

    async def get_budget(self, tenant: str, budget_id: str) -> BudgetRecord | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE tenant = ? AND id = ?",
                (tenant, budget_id),
            ).fetchone()
        )
        return None if row is None else _budget_from_row(row)

    async def budget_spend(self, budget_id: str, day: str) -> SpendState:
        row = await self._run(
            lambda c: c.execute(
                "SELECT spent, reserved FROM budget_spend WHERE budget_id = ? AND day = ?",
                (budget_id, day),
            ).fetchone()
        )
        return SpendState(0, 0) if row is None else SpendState(int(row[0]), int(row[1]))

    async def revoke_budget(self, tenant: str, budget_id: str, now: int) -> BudgetRecord | None:
        """Revoke a budget and its keys in one transaction (see :meth:`Store.revoke_budget`)."""

        def revoke(c: sqlite3.Connection) -> Any:
            self._keys_by_hash.clear()
            self._spend.clear()  # it holds each key's status too
            c.execute(
                "UPDATE budgets SET revoked_at = ? WHERE tenant = ? AND id = ?"
                " AND revoked_at IS NULL",
                (now, tenant, budget_id),
            )
            c.execute(
                "UPDATE keys SET revoked_at = ? WHERE tenant = ? AND budget_id = ?"
                " AND revoked_at IS NULL",
                (now, tenant, budget_id),
            )
            return c.execute(
                f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE tenant = ? AND id = ?",
                (tenant, budget_id),
            ).fetchone()

        row = await self._run(lambda c: _transaction(c, lambda: revoke(c)))
        return None if row is None else _budget_from_row(row)

    async def extend_key(
        self, tenant: str, key_id: str, now: int, new_expires_at: int
    ) -> KeyRecord | None:
        """Move ``expires_at`` to ``new_expires_at`` (capped at ``max_expires_at``).

        Only an active key moves; the caller tells the cases apart from the returned record.
        """

        def extend(c: sqlite3.Connection) -> Any:
            self._keys_by_hash.clear()
            self._spend.clear()  # it holds each key's status too
            c.execute(
                "UPDATE keys SET expires_at = min(?, max_expires_at)"
                " WHERE tenant = ? AND id = ? AND revoked_at IS NULL AND expires_at > ?",
                (new_expires_at, tenant, key_id, now),
            )
            return c.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE tenant = ? AND id = ?", (tenant, key_id)
            ).fetchone()

        row = await self._run(extend)
        return None if row is None else _key_from_row(row)

    # -- spend ledger ---------------------------------------------------------------------

    async def counted(self, key_id: str, object_id: str, day: str) -> int:
        row = await self._run(
            lambda c: c.execute(
                "SELECT coalesce(sum(CASE WHEN state = 'settled' THEN settled_amount"
                " ELSE amount END), 0)"
                " FROM reservations WHERE key_id = ? AND object_id = ? AND day = ?"
                " AND state <> 'released'",
                (key_id, object_id, day),
            ).fetchone()
        )
        return int(row[0])

    async def spend(self, key_id: str, day: str) -> SpendState:
        return await self._run(lambda c: _spend_state(c, key_id, day))

    async def unconfirmed(self, day: str) -> int:
        row = await self._run(
            lambda c: c.execute(
                "SELECT coalesce(sum(unconfirmed), 0) FROM spend WHERE day = ?", (day,)
            ).fetchone()
        )
        return int(row[0])

    async def admit(self, key_id: str, now: int) -> tuple[ReserveResult, SpendState]:
        """Admit a free request of a braked key, in one write transaction (``AdmitOp``)."""
        return await self._run(lambda c: _transaction(c, lambda: _admit(c, key_id, now)))

    async def reserve(
        self, reservation: Reservation, now: int, *, replay_after: int = 0
    ) -> tuple[ReserveResult, SpendState]:
        """Set money aside for a request if the cap allows, in one conditional statement.

        With ``reservation.idem_hash``, a request this key already sent (since
        ``replay_after``) and that was not refused is a replay: nothing is reserved. With a
        budget or brakes, every check runs before anything is written, all in one write
        transaction (SQLite has one writer at a time).
        """
        self._spend.clear()  # written behind the batches' back
        return await self._run(
            lambda c: _transaction(c, lambda: _reserve(c, reservation, now, replay_after))
        )

    async def settle(self, reservation_id: str, settlement: Settlement, now: int) -> bool:
        """Turn a pending reservation into spend; False if it was not pending."""
        self._spend.clear()  # written behind the batches' back
        return await self._run(
            lambda c: _transaction(c, lambda: _finish(c, reservation_id, settlement, now))
        )

    async def release(self, reservation_id: str, now: int) -> bool:
        """Give a pending reservation back; False if it was not pending."""
        self._spend.clear()  # written behind the batches' back
        return await self._run(
            lambda c: _transaction(c, lambda: _finish(c, reservation_id, None, now))
        )

    async def correct_price(self, object_id: str, actual: int, now: int) -> bool:
        """Replace an estimate with the price the vendor reported for ``object_id``."""
        self._spend.clear()  # written behind the batches' back
        return await self._run(
            lambda c: _transaction(c, lambda: _correct_price(c, object_id, actual, now))
        )

    def apply_ledger_ops(self, ops: Sequence[LedgerOp]) -> list[Any]:
        """Run ledger operations in order, in one transaction with one commit.

        Each operation gives what its method would (:meth:`reserve`, :meth:`settle` or
        :meth:`release`, :meth:`correct_price`); every reservation is still its own
        conditional statement, checked against what the operations before it left, so the
        cap holds exactly. All or nothing: on failure none of them happened.

        Raises:
            StoreUnavailable: the store failed (nothing was written).
        """

        spend = self._spend if self.serving else {}
        if len(spend) > SPEND_CACHE_SIZE:
            spend.clear()
        return self._run_now(lambda c: _transaction(c, lambda: _Batch(c, spend).apply(ops)))

    async def ledger(self, key_id: str) -> list[LedgerEntry]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT id, key_id, day, amount, state, settled_amount, final, object_id"
                " FROM reservations WHERE key_id = ? ORDER BY created_at, id",
                (key_id,),
            ).fetchall()
        )
        return [
            LedgerEntry(r[0], r[1], r[2], int(r[3]), r[4], r[5], bool(r[6]), r[7]) for r in rows
        ]

    async def prune(self, before: int) -> PruneResult:
        """Delete what is older than ``before`` (see :meth:`Store.prune`).

        Each table is walked in the order its rows were written (``rowid``), at most
        :data:`PRUNE_CHUNK` rows per transaction, the event loop serving requests between
        two, and only as far as its old rows go: the write lock is never held for long, and
        a table that has nothing old is not read through.
        """
        counts = []
        for table, clock, bound, condition in (
            ("audit", "at", before, "at < :bound"),
            (
                "reservations",
                "created_at",
                before,
                "state <> 'pending' AND finished_at < :bound",
            ),
            ("spend", "day", utc_day(before), "day < :bound AND reserved = 0"),
            ("budget_spend", "day", utc_day(before), "day < :bound AND reserved = 0"),
        ):
            deleted: int = 0
            after: int | None = 0
            while after is not None:
                chunk = functools.partial(_prune_chunk, table, clock, condition, bound, after)
                n, after = self._run_now(functools.partial(_in_transaction, chunk))
                deleted += n
                await asyncio.sleep(0)  # requests go first
            counts.append(deleted)
        hits = functools.partial(_in_transaction, functools.partial(_prune_hits_chunk, before))
        more = True
        while more:  # the rate-limit hits of keys long revoked or expired
            more = self._run_now(hits) is not None
            await asyncio.sleep(0)  # requests go first
        if counts[2]:
            self._spend.clear()  # written behind the batches' back
        audit, reservations, spend, budget_spend = counts
        return PruneResult(audit, reservations, spend + budget_spend)


def _checkpoint(conn: sqlite3.Connection, wal: str, frames_before: int) -> int:
    """One background checkpoint: ``PASSIVE``, then ``TRUNCATE`` if the WAL is past
    :data:`WAL_TRUNCATE_SIZE`, or if nothing was written since the last turn (so an idle
    server's WAL is back to nothing).

    The ``PASSIVE`` pass first writes back nearly everything without holding writers back,
    so the ``TRUNCATE`` that may follow has only the last few frames left to copy.

    Returns:
        The frames in the WAL at the ``PASSIVE`` pass, for the next turn's ``frames_before``.
    """
    _, frames, written_back = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    try:
        size = os.stat(wal).st_size
    except FileNotFoundError:
        return -1
    idle = frames == frames_before == written_back > 0
    if idle or size > WAL_TRUNCATE_SIZE:
        # Gives up (busy) after CHECKPOINT_BUSY_TIMEOUT_MS if readers or a writer hold on;
        # the next turn tries again.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return int(frames)
