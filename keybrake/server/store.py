"""Persistent state of the server: keys, admin tokens, the spend ledger.

The :class:`Store` protocol is what the API and the proxy use; :class:`SQLiteStore` is the
embedded implementation. Only SHA-256 hashes of tokens are ever stored.

Spend is kept in integer micro-dollars per key and UTC day, as ``spent`` (settled) plus
``reserved`` (in flight). A reservation is one conditional statement
(``spent + reserved + x <= cap``), never a read-modify-write in Python, so concurrent requests
can't take a key past its cap.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs

from keybrake._common import format_usd
from keybrake.server._http import utc_day

__all__ = [
    "AdminToken",
    "AuditEntry",
    "AuditOp",
    "CorrectPriceOp",
    "FinishOp",
    "LedgerOp",
    "ReserveOp",
    "UsageRow",
    "audit_row",
    "key_row",
    "IdempotencyConflict",
    "LedgerEntry",
    "PruneResult",
    "ReserveResult",
    "Settlement",
    "IdempotentIssue",
    "KeyRecord",
    "Reservation",
    "SQLiteStore",
    "SpendState",
    "Store",
    "StoreUnavailable",
    "open_store",
]

T = TypeVar("T")

log = logging.getLogger("keybrake.store")


class StoreUnavailable(Exception):
    """The store can't be reached or failed; callers must fail closed."""


class IdempotencyConflict(Exception):
    """Another issuance with the same ``Idempotency-Key`` got there first."""


@attrs.frozen
class KeyRecord:
    """One vault key as stored. Times are epoch microseconds (UTC)."""

    id: str
    tenant: str
    token_hash: str
    vendor: str
    label: str
    allowed_endpoints: tuple[str, ...]
    cap_micros: int
    created_at: int
    expires_at: int
    max_expires_at: int
    revoked_at: int | None = None
    metadata: dict[str, str] = attrs.field(factory=dict)
    #: The Stripe connected account every request of this key acts on (``Stripe-Account``).
    stripe_account: str | None = None

    def status(self, now: int) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return "active"


@attrs.frozen
class IdempotentIssue:
    """What an issuance with an ``Idempotency-Key`` left behind, to answer its replays."""

    key_id: str
    fingerprint: str
    sealed_token: str


@attrs.frozen
class SpendState:
    spent: int
    reserved: int
    #: Of ``spent``, what was counted at its bound because its request's outcome was lost
    #: (a crash between forwarding and settling): the vendor may have charged less.
    unconfirmed: int = 0


@attrs.frozen
class Reservation:
    """Money set aside for one request before it is forwarded.

    ``idem_hash`` identifies the vendor idempotency key the request carried, if any: a replay
    of a request that was not refused reserves nothing a second time.
    """

    id: str
    key_id: str
    day: str
    amount: int
    idem_hash: str | None = None


class ReserveResult(enum.Enum):
    RESERVED = "reserved"
    CAP_EXHAUSTED = "cap_exhausted"
    #: The same vault key already sent this idempotency key: the vendor replays, we don't count.
    REPLAY = "replay"


@attrs.frozen
class Settlement:
    """What a forwarded request cost. ``final`` False: an estimate until the vendor reports."""

    actual: int
    final: bool = True
    vendor_request_id: str | None = None
    object_id: str | None = None


@attrs.define(slots=True)
class ReserveOp:
    """:meth:`SQLiteStore.reserve` as one step of a batch; gives ``(ReserveResult, SpendState)``."""

    reservation: Reservation
    now: int
    replay_after: int = 0


@attrs.define(slots=True)
class FinishOp:
    """Settle a pending reservation, or release it when ``settlement`` is None; gives a bool."""

    reservation_id: str
    settlement: Settlement | None
    now: int


@attrs.define(slots=True)
class CorrectPriceOp:
    """:meth:`SQLiteStore.correct_price` as one step of a batch; gives a bool."""

    object_id: str
    actual: int
    now: int


@attrs.define(slots=True)
class AuditOp:
    """Audit entries written along with a batch (already redacted); gives None."""

    entries: list[AuditEntry]


#: One step of :meth:`SQLiteStore.apply_ledger_ops`.
LedgerOp = ReserveOp | FinishOp | CorrectPriceOp | AuditOp


@attrs.frozen
class AdminToken:
    """A master token as listed (never the token itself)."""

    id: str
    tenant: str
    created_at: int
    revoked_at: int | None


@attrs.frozen(kw_only=True)
class AuditEntry:
    """One proxy decision. ``id`` is given by the store when written."""

    at: int
    tenant: str | None
    key_id: str | None
    label: str | None
    vendor: str | None
    method: str
    path: str
    decision: str
    status: int
    reserved: int = 0
    settled: int = 0
    upstream_ms: float | None = None
    vendor_request_id: str | None = None
    id: int | None = None


def key_row(key: KeyRecord) -> tuple[Any, ...]:
    """A key's column values, in the order both stores insert them."""
    return (
        key.id,
        key.tenant,
        key.token_hash,
        key.vendor,
        key.label,
        json.dumps(list(key.allowed_endpoints)),
        key.cap_micros,
        key.created_at,
        key.expires_at,
        key.max_expires_at,
        key.revoked_at,
        json.dumps(key.metadata),
        key.stripe_account,
    )


def audit_row(e: AuditEntry) -> tuple[Any, ...]:
    """An audit entry's column values, in the order both stores insert them."""
    return (
        e.at,
        e.tenant,
        e.key_id,
        e.label,
        e.vendor,
        e.method,
        e.path,
        e.decision,
        e.status,
        e.reserved,
        e.settled,
        e.upstream_ms,
        e.vendor_request_id,
    )


@attrs.frozen
class UsageRow:
    key_id: str
    label: str
    day: str
    spent: int
    reserved: int
    cap: int
    unconfirmed: int = 0


@attrs.frozen
class LedgerEntry:
    id: str
    key_id: str
    day: str
    amount: int
    state: str
    settled_amount: int | None
    final: bool
    object_id: str | None


@attrs.frozen
class PruneResult:
    """What :meth:`Store.prune` deleted: rows of each table."""

    audit_entries: int = 0
    reservations: int = 0
    spend_rows: int = 0


class Store(Protocol):
    """What the server needs from persistence. All amounts are micro-dollars."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def add_admin_token(
        self, token_id: str, token_hash: str, tenant: str, now: int
    ) -> None: ...

    async def list_admin_tokens(self) -> list[AdminToken]: ...

    async def revoke_admin_token(self, token_id: str, now: int) -> bool: ...

    async def count_admin_tokens(self) -> int: ...

    async def tenant_for_admin_token(self, token_hash: str) -> str | None: ...

    async def write_audit(self, entries: list[AuditEntry]) -> None: ...

    async def list_audit(
        self,
        tenant: str,
        *,
        key_id: str | None,
        decision: str | None,
        limit: int,
        starting_after: int | None,
    ) -> list[AuditEntry]: ...

    async def usage(
        self,
        tenant: str,
        *,
        key_id: str | None,
        day: str | None,
        limit: int,
        starting_after: tuple[str, str] | None,
    ) -> list[UsageRow]: ...

    async def count_active_keys(self, now: int) -> int: ...

    async def insert_key(
        self, key: KeyRecord, *, idempotency: tuple[str, IdempotentIssue] | None = None
    ) -> None: ...

    async def find_idempotent_issue(
        self, tenant: str, idem_hash: str
    ) -> IdempotentIssue | None: ...

    async def get_key(self, tenant: str, key_id: str) -> KeyRecord | None: ...

    async def get_key_by_token_hash(self, token_hash: str) -> KeyRecord | None: ...

    async def revoke_key(self, tenant: str, key_id: str, now: int) -> KeyRecord | None: ...

    async def list_keys(
        self,
        tenant: str,
        *,
        status: str | None,
        limit: int,
        starting_after: str | None,
        now: int,
    ) -> list[KeyRecord]: ...

    async def extend_key(
        self, tenant: str, key_id: str, now: int, new_expires_at: int
    ) -> KeyRecord | None: ...

    async def spend(self, key_id: str, day: str) -> SpendState: ...

    async def unconfirmed(self, day: str) -> int:
        """Spend of ``day`` counted at its bound because its outcome was lost, in total."""
        ...

    async def counted(self, key_id: str, object_id: str) -> int:
        """What ``key_id`` counted for vendor object ``object_id``, released reservations
        left out, in micro-dollars."""
        ...

    async def reserve(
        self, reservation: Reservation, now: int, *, replay_after: int = 0
    ) -> tuple[ReserveResult, SpendState]: ...

    async def settle(self, reservation_id: str, settlement: Settlement, now: int) -> bool: ...

    async def release(self, reservation_id: str, now: int) -> bool: ...

    async def correct_price(self, object_id: str, actual: int, now: int) -> bool: ...

    async def ledger(self, key_id: str) -> list[LedgerEntry]: ...

    async def prune(self, before: int) -> PruneResult:
        """Delete what is older than ``before`` (epoch microseconds): audit entries, finished
        (settled or released) reservations, and spend rows of the UTC days before
        ``before``'s on which no money is still reserved. Pending reservations and keys stay.
        In short transactions: the store serves requests meanwhile.
        """
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS admin_tokens (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    tenant TEXT,
    key_id TEXT,
    label TEXT,
    vendor TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    decision TEXT NOT NULL,
    status INTEGER NOT NULL,
    reserved INTEGER NOT NULL DEFAULT 0,
    settled INTEGER NOT NULL DEFAULT 0,
    upstream_ms REAL,
    vendor_request_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, id);
CREATE INDEX IF NOT EXISTS audit_key ON audit (key_id, id);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    vendor TEXT NOT NULL,
    label TEXT NOT NULL,
    allowed_endpoints TEXT NOT NULL,
    cap_micros INTEGER NOT NULL CHECK (cap_micros >= 0),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    max_expires_at INTEGER NOT NULL,
    revoked_at INTEGER,
    metadata TEXT NOT NULL,
    stripe_account TEXT
);
CREATE INDEX IF NOT EXISTS keys_tenant ON keys (tenant, id);
CREATE TABLE IF NOT EXISTS issue_idempotency (
    tenant TEXT NOT NULL,
    idem_hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    sealed_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, idem_hash)
);
CREATE TABLE IF NOT EXISTS spend (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    spent INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    unconfirmed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    settled_amount INTEGER,
    state TEXT NOT NULL CHECK (state IN ('pending', 'settled', 'released')),
    final INTEGER NOT NULL DEFAULT 1,
    unconfirmed INTEGER NOT NULL DEFAULT 0,
    idem_hash TEXT,
    object_id TEXT,
    vendor_request_id TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS reservations_key ON reservations (key_id, created_at);
CREATE INDEX IF NOT EXISTS reservations_idem ON reservations (key_id, idem_hash)
    WHERE idem_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS reservations_object ON reservations (object_id)
    WHERE object_id IS NOT NULL AND final = 0;
CREATE INDEX IF NOT EXISTS reservations_key_object ON reservations (key_id, object_id)
    WHERE object_id IS NOT NULL;
"""
#: Each version's upgrade from the one before; a database of an older version is upgraded in
#: place when it is opened.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    3: ("ALTER TABLE keys ADD COLUMN stripe_account TEXT",),
    4: (
        "ALTER TABLE reservations ADD COLUMN unconfirmed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE spend ADD COLUMN unconfirmed INTEGER NOT NULL DEFAULT 0",
    ),
}
SCHEMA_VERSION = 4
#: The oldest schema version this keybrake upgrades.
OLDEST_SCHEMA_VERSION = 2
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


class _ServeLock:
    """An exclusive, non-blocking lock on the database file itself, held while serving.

    On POSIX it is a ``flock`` on a descriptor of the file, so it follows the file (its
    inode), not the name it was opened by: a symlink or a hard link to a served database
    meets the same lock. On Windows it is a lock on ``<real path>.serve-lock``, which covers
    symlinks but not hard links.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def claim(cls, database: str) -> _ServeLock:
        """
        Raises:
            StoreUnavailable: another process serves this file (or the lock can't be made).
        """
        path = _lock_path(database)
        try:
            # Made here if new: SQLite takes an empty file for an empty database.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"can't open {path}: {exc}") from exc
        try:
            _lock_file(fd)
        except OSError:
            os.close(fd)
            raise StoreUnavailable(
                f"another keybrake server is using {database} (the file is locked);"
                " one server per SQLite file, or use PostgreSQL for several"
            ) from None
        return cls(fd)

    def release(self) -> None:
        """Drop the lock; only once this store's SQLite connections are closed (see
        :func:`_lock_file`)."""
        os.close(self._fd)  # closing the descriptor releases the lock


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_path(database: str) -> str:
        # Windows byte-range locks are mandatory: one on the database itself would block
        # SQLite's own reads, so the lock is on a file beside it, named by its real path.
        return os.path.realpath(database) + ".serve-lock"

    def _lock_file(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock_path(database: str) -> str:
        return database

    def _lock_file(fd: int) -> None:
        # flock, not fcntl (POSIX) locks: POSIX locks belong to the process, so SQLite's
        # own byte-range locks in this process would merge with ours, and closing any
        # descriptor of the file drops all of them, which SQLite does whenever one of its
        # connections closes. A flock belongs to this open file alone, and on Linux never
        # meets SQLite's POSIX locks. The other way round, closing this descriptor drops the
        # process's POSIX locks on the file, SQLite's included: hence release() comes last.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


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
            "SELECT s.key_id, k.label, s.day, s.spent, s.reserved, k.cap_micros, s.unconfirmed"
            " FROM spend s JOIN keys k ON k.id = s.key_id"
            f" WHERE {' AND '.join(where)} ORDER BY s.day DESC, s.key_id DESC LIMIT ?"
        )
        rows = await self._run(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [
            UsageRow(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6])) for r in rows
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
            c.execute(
                "INSERT INTO keys (id, tenant, token_hash, vendor, label, allowed_endpoints,"
                " cap_micros, created_at, expires_at, max_expires_at, revoked_at, metadata,"
                " stripe_account)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        revoked or refreshed, and in a serving store that happens only through this store
        (the file is locked against other servers), which forgets the cache then: a
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
    ) -> list[KeyRecord]:
        """A tenant's keys, newest first, after the key ``starting_after`` (a cursor)."""
        where = ["tenant = :tenant"]
        if status is not None:
            where.append(_STATUS_FILTERS[status])
        if starting_after is not None:
            where.append(
                "(created_at, id) < (SELECT created_at, id FROM keys"
                " WHERE tenant = :tenant AND id = :after)"
            )
        sql = (
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT :limit"
        )
        params = {"tenant": tenant, "now": now, "after": starting_after, "limit": limit}
        rows = await self._run(lambda c: c.execute(sql, params).fetchall())
        return [_key_from_row(row) for row in rows]

    async def revoke_key(self, tenant: str, key_id: str, now: int) -> KeyRecord | None:
        def revoke(c: sqlite3.Connection) -> Any:
            self._keys_by_hash.clear()
            c.execute(
                "UPDATE keys SET revoked_at = ? WHERE tenant = ? AND id = ? AND revoked_at IS NULL",
                (now, tenant, key_id),
            )
            return c.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE tenant = ? AND id = ?", (tenant, key_id)
            ).fetchone()

        row = await self._run(revoke)
        return None if row is None else _key_from_row(row)

    async def extend_key(
        self, tenant: str, key_id: str, now: int, new_expires_at: int
    ) -> KeyRecord | None:
        """Move ``expires_at`` to ``new_expires_at`` (capped at ``max_expires_at``).

        Only an active key moves; the caller tells the cases apart from the returned record.
        """

        def extend(c: sqlite3.Connection) -> Any:
            self._keys_by_hash.clear()
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

    async def counted(self, key_id: str, object_id: str) -> int:
        row = await self._run(
            lambda c: c.execute(
                "SELECT coalesce(sum(CASE WHEN state = 'settled' THEN settled_amount"
                " ELSE amount END), 0)"
                " FROM reservations WHERE key_id = ? AND object_id = ? AND state <> 'released'",
                (key_id, object_id),
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

    async def reserve(
        self, reservation: Reservation, now: int, *, replay_after: int = 0
    ) -> tuple[ReserveResult, SpendState]:
        """Set money aside for a request if the cap allows, in one conditional statement.

        With ``reservation.idem_hash``, a request this key already sent (since
        ``replay_after``) and that was not refused is a replay: nothing is reserved.
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
        ):
            deleted: int = 0
            after: int | None = 0
            while after is not None:
                chunk = functools.partial(_prune_chunk, table, clock, condition, bound, after)
                n, after = self._run_now(functools.partial(_in_transaction, chunk))
                deleted += n
                await asyncio.sleep(0)  # requests go first
            counts.append(deleted)
        if counts[2]:
            self._spend.clear()  # written behind the batches' back
        return PruneResult(*counts)


def _in_transaction(body: Callable[[sqlite3.Connection], T], c: sqlite3.Connection) -> T:
    return _transaction(c, lambda: body(c))


#: Rows one pruning transaction looks at, at most.
PRUNE_CHUNK = 1000


def _prune_chunk(
    table: str,
    clock: str,
    condition: str,
    bound: int | str,
    after: int,
    c: sqlite3.Connection,
) -> tuple[int, int | None]:
    """Delete the rows matching ``condition`` among the next :data:`PRUNE_CHUNK` rows of
    ``table`` after rowid ``after``.

    Returns:
        How many were deleted, and the rowid to go on from, or None when the chunk reached
        rows whose ``clock`` is at ``bound`` or later (or the end of the table): rows are
        written in time order, so nothing older follows.
    """
    end = c.execute(
        f"SELECT rowid, {clock} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 1 OFFSET ?",
        (after, PRUNE_CHUNK - 1),
    ).fetchone()
    if end is None:
        last = c.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
        if last is None or last <= after:
            return 0, None
        upto, more = int(last), False
    else:
        upto, more = int(end[0]), end[1] < bound
    deleted = c.execute(
        f"DELETE FROM {table} WHERE rowid > :after AND rowid <= :upto AND {condition}",
        {"after": after, "upto": upto, "bound": bound},
    ).rowcount
    return deleted, upto if more else None


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


def _transaction(c: sqlite3.Connection, body: Callable[[], T]) -> T:
    c.execute("BEGIN IMMEDIATE")
    result = body()
    c.execute("COMMIT")
    return result


def _insert_audit(c: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    c.executemany(
        "INSERT INTO audit (at, tenant, key_id, label, vendor, method, path, decision,"
        " status, reserved, settled, upstream_ms, vendor_request_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [audit_row(e) for e in entries],
    )


@attrs.define(slots=True)
class _SpendRow:
    """A day's spend row as a batch sees it, its own changes included."""

    spent: int
    reserved: int
    cap: int | None  # None: there is no such key
    exists: bool  # the row is in the table (else the batch inserts it)


class _Batch:
    """Ledger operations inside one write transaction, with fewer statements.

    ``BEGIN IMMEDIATE`` holds SQLite's write lock until the commit, so nothing else can
    write in between: the batch reads each day's spend row once, checks every reservation
    against it in order (as the conditional upsert would), and writes each row back once, as
    deltas, at the end. New reservations go in with one ``executemany``. What the fast path
    doesn't cover (idempotent replays, price corrections, finishing a reservation made in
    the same batch) writes out what is pending, then takes the one-statement-at-a-time path.
    The results are the same as running the operations one by one; a test checks that.
    """

    def __init__(self, c: sqlite3.Connection, spend: dict[tuple[str, str], _SpendRow]) -> None:
        self.c = c
        # A serving store keeps these from one batch to the next: no other process writes
        # its spend rows (the serve lock), and everything else that writes them clears them.
        self.spend = spend
        # (key, day) -> [spent delta, reserved delta] not yet written
        self.deltas: dict[tuple[str, str], list[int]] = {}
        self.new: dict[str, tuple[Any, ...]] = {}

    def apply(self, ops: Sequence[LedgerOp]) -> list[Any]:
        results = [self.one(op) for op in ops]
        self.write_out()
        return results

    def one(self, op: LedgerOp) -> Any:
        c = self.c
        if isinstance(op, FinishOp):
            if op.reservation_id in self.new:
                self.write_out()
            return self.finish(op)
        if isinstance(op, ReserveOp) and op.reservation.idem_hash is None:
            return self.reserve(op.reservation, op.now)
        if isinstance(op, AuditOp):
            return _insert_audit(c, op.entries)  # its own table: nothing pending to write
        self.write_out()
        self.spend.clear()  # the slow path may change any spend row
        if isinstance(op, ReserveOp):  # one with an idempotency key: it may be a replay
            return _reserve(c, op.reservation, op.now, op.replay_after)
        return _correct_price(c, op.object_id, op.actual, op.now)

    def state(self, key_id: str, day: str) -> _SpendRow:
        known = self.spend.get((key_id, day))
        if known is None:
            row = self.c.execute(
                "SELECT k.cap_micros, s.spent, s.reserved FROM keys k"
                " LEFT JOIN spend s ON s.key_id = k.id AND s.day = ? WHERE k.id = ?",
                (day, key_id),
            ).fetchone()
            if row is None:
                known = _SpendRow(0, 0, None, exists=False)
            elif row[1] is None:
                known = _SpendRow(0, 0, int(row[0]), exists=False)
            else:
                known = _SpendRow(int(row[1]), int(row[2]), int(row[0]), exists=True)
            unwritten = self.deltas.get((key_id, day))
            if unwritten is not None:  # settlements of this row not written out yet
                known.spent += unwritten[0]
                known.reserved += unwritten[1]
            self.spend[(key_id, day)] = known
        return known

    def reserve(self, r: Reservation, now: int) -> tuple[ReserveResult, SpendState]:
        state = self.state(r.key_id, r.day)
        if state.cap is None or state.spent + state.reserved + r.amount > state.cap:
            return ReserveResult.CAP_EXHAUSTED, SpendState(state.spent, state.reserved)
        state.reserved += r.amount
        self.deltas.setdefault((r.key_id, r.day), [0, 0])[1] += r.amount
        self.new[r.id] = (r.id, r.key_id, r.day, r.amount, now)
        return ReserveResult.RESERVED, SpendState(state.spent, state.reserved)

    def finish(self, op: FinishOp) -> bool:
        finished = _mark_finished(self.c, op.reservation_id, op.settlement, op.now)
        if finished is None:
            return False
        key_id, day, amount, actual = finished
        delta = self.deltas.setdefault((key_id, day), [0, 0])
        delta[0] += actual
        delta[1] -= amount
        state = self.spend.get((key_id, day))
        if state is not None:
            state.spent += actual
            state.reserved -= amount
        return True

    def write_out(self) -> None:
        c = self.c
        if self.new:
            c.executemany(
                "INSERT INTO reservations (id, key_id, day, amount, state, created_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?)",
                self.new.values(),
            )
            self.new.clear()
        for (key_id, day), (spent, reserved) in self.deltas.items():
            state = self.spend.get((key_id, day))
            if state is not None and not state.exists:
                c.execute(
                    "INSERT INTO spend (key_id, day, spent, reserved) VALUES (?, ?, ?, ?)",
                    (key_id, day, state.spent, state.reserved),
                )
                state.exists = True
            elif spent or reserved:
                c.execute(
                    "UPDATE spend SET spent = spent + ?, reserved = reserved + ?"
                    " WHERE key_id = ? AND day = ?",
                    (spent, reserved, key_id, day),
                )
        self.deltas.clear()


def _reserve(
    c: sqlite3.Connection, r: Reservation, now: int, replay_after: int
) -> tuple[ReserveResult, SpendState]:
    if r.idem_hash is not None:
        # Only a request already counted makes a replay free: one still in flight may yet be
        # refused (and released), and the vendor answers a concurrent repeat with an error.
        earlier = c.execute(
            "SELECT 1 FROM reservations WHERE key_id = ? AND idem_hash = ?"
            " AND state = 'settled' AND created_at >= ?",
            (r.key_id, r.idem_hash, replay_after),
        ).fetchone()
        if earlier is not None:
            return ReserveResult.REPLAY, _spend_state(c, r.key_id, r.day)
    # The whole check-and-add is this one statement: it creates the day's row, or adds to it,
    # only while spent + reserved + x stays within the cap.
    row = c.execute(
        "INSERT INTO spend (key_id, day, spent, reserved)"
        " SELECT :k, :d, 0, :x FROM keys WHERE id = :k AND :x <= cap_micros"
        " ON CONFLICT (key_id, day) DO UPDATE SET reserved = reserved + :x"
        " WHERE spent + reserved + :x <= (SELECT cap_micros FROM keys WHERE id = :k)"
        " RETURNING spent, reserved",
        {"x": r.amount, "k": r.key_id, "d": r.day},
    ).fetchone()
    if row is None:
        return ReserveResult.CAP_EXHAUSTED, _spend_state(c, r.key_id, r.day)
    c.execute(
        "INSERT INTO reservations (id, key_id, day, amount, state, idem_hash, created_at)"
        " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
        (r.id, r.key_id, r.day, r.amount, r.idem_hash, now),
    )
    return ReserveResult.RESERVED, SpendState(int(row[0]), int(row[1]))


def _mark_finished(
    c: sqlite3.Connection, reservation_id: str, s: Settlement | None, now: int
) -> tuple[str, str, int, int] | None:
    """Settle (or, without ``s``, release) a pending reservation's row.

    Returns:
        ``(key id, day, reserved amount, settled amount)`` for the spend row to move, or
        None if the reservation was not pending (nothing to move).
    """
    if s is None:
        row = c.execute(
            "UPDATE reservations SET state = 'released', settled_amount = 0, finished_at = ?"
            " WHERE id = ? AND state = 'pending' RETURNING key_id, day, amount",
            (now, reservation_id),
        ).fetchone()
    else:
        row = c.execute(
            "UPDATE reservations SET state = 'settled', settled_amount = ?, final = ?,"
            " vendor_request_id = ?, object_id = ?, finished_at = ?"
            " WHERE id = ? AND state = 'pending' RETURNING key_id, day, amount",
            (s.actual, int(s.final), s.vendor_request_id, s.object_id, now, reservation_id),
        ).fetchone()
    if row is None:
        return None
    return str(row[0]), str(row[1]), int(row[2]), 0 if s is None else s.actual


def _finish(c: sqlite3.Connection, reservation_id: str, s: Settlement | None, now: int) -> bool:
    finished = _mark_finished(c, reservation_id, s, now)
    if finished is not None:
        key_id, day, amount, actual = finished
        c.execute(
            "UPDATE spend SET reserved = reserved - ?, spent = spent + ?"
            " WHERE key_id = ? AND day = ?",
            (amount, actual, key_id, day),
        )
    return finished is not None


def _correct_price(c: sqlite3.Connection, object_id: str, actual: int, now: int) -> bool:
    row = c.execute(
        "SELECT id, key_id, day, settled_amount FROM reservations"
        " WHERE object_id = ? AND final = 0 AND state = 'settled'",
        (object_id,),
    ).fetchone()
    if row is not None:
        c.execute(
            "UPDATE reservations SET settled_amount = ?, final = 1, finished_at = ? WHERE id = ?",
            (actual, now, row[0]),
        )
        c.execute(
            "UPDATE spend SET spent = spent - ? + ? WHERE key_id = ? AND day = ?",
            (row[3], actual, row[1], row[2]),
        )
    return row is not None


def _spend_state(c: sqlite3.Connection, key_id: str, day: str) -> SpendState:
    row = c.execute(
        "SELECT spent, reserved, unconfirmed FROM spend WHERE key_id = ? AND day = ?",
        (key_id, day),
    ).fetchone()
    return SpendState(0, 0) if row is None else SpendState(*(int(v) for v in row))


def _resolve_pending(c: sqlite3.Connection, now: int) -> tuple[int, int]:
    """Count every pending reservation at its bound, marked unconfirmed: its request may
    have reached the vendor before the server stopped without settling it. Only a server
    holding the file's lock may call this (no request of its own is in flight yet).

    Returns:
        How many reservations, and how many micro-dollars, were resolved.
    """
    c.execute("BEGIN IMMEDIATE")
    try:
        count, total = c.execute(
            "SELECT count(*), coalesce(sum(amount), 0) FROM reservations WHERE state = 'pending'"
        ).fetchone()
        if count:
            c.execute(
                "UPDATE spend SET reserved = reserved - p.total, spent = spent + p.total,"
                " unconfirmed = unconfirmed + p.total"
                " FROM (SELECT key_id, day, sum(amount) AS total FROM reservations"
                "       WHERE state = 'pending' GROUP BY key_id, day) AS p"
                " WHERE spend.key_id = p.key_id AND spend.day = p.day"
            )
            c.execute(
                "UPDATE reservations SET state = 'settled', settled_amount = amount,"
                " unconfirmed = 1, finished_at = ? WHERE state = 'pending'",
                (now,),
            )
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise
    return int(count), int(total)


_AUDIT_COLUMNS = (
    "id, at, tenant, key_id, label, vendor, method, path, decision, status, reserved, settled,"
    " upstream_ms, vendor_request_id"
)


def _audit_from_row(row: Any) -> AuditEntry:
    return AuditEntry(
        id=int(row[0]),
        at=int(row[1]),
        tenant=row[2],
        key_id=row[3],
        label=row[4],
        vendor=row[5],
        method=row[6],
        path=row[7],
        decision=row[8],
        status=int(row[9]),
        reserved=int(row[10]),
        settled=int(row[11]),
        upstream_ms=row[12],
        vendor_request_id=row[13],
    )


_STATUS_FILTERS = {
    "active": "revoked_at IS NULL AND expires_at > :now",
    "expired": "revoked_at IS NULL AND expires_at <= :now",
    "revoked": "revoked_at IS NOT NULL",
}

_KEY_COLUMNS = (
    "id, tenant, token_hash, vendor, label, allowed_endpoints, cap_micros, created_at,"
    " expires_at, max_expires_at, revoked_at, metadata, stripe_account"
)


def _key_from_row(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row[0],
        tenant=row[1],
        token_hash=row[2],
        vendor=row[3],
        label=row[4],
        allowed_endpoints=tuple(json.loads(row[5])),
        cap_micros=int(row[6]),
        created_at=int(row[7]),
        expires_at=int(row[8]),
        max_expires_at=int(row[9]),
        revoked_at=None if row[10] is None else int(row[10]),
        metadata=dict(json.loads(row[11])),
        stripe_account=row[12],
    )


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
        from keybrake.server.postgres import PostgresStore

        return PostgresStore(database_url, serving=serving, upstream_timeout=upstream_timeout)
    scheme = database_url.partition(":")[0]
    raise ValueError(f"unsupported database URL scheme {scheme!r} (expected sqlite:///path)")
