"""SQLite statements on one connection: the ledger's batches, reservations, settlements,
rows to records, pruning and checkpoints."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from keybrake._common import parse_rate
from keybrake.server.stores.base import (
    PRUNE_CHUNK,
    AdmitOp,
    AuditEntry,
    AuditOp,
    BudgetRecord,
    FinishOp,
    KeyRecord,
    LedgerOp,
    Reservation,
    ReserveOp,
    ReserveResult,
    Settlement,
    SpendState,
    audit_row,
)

T = TypeVar("T")

#: Most settlements and releases finished by one statement (six parameters each; SQLite
#: takes up to 32,766 parameters in a statement).
FINISH_CHUNK = 500


def _in_transaction(body: Callable[[sqlite3.Connection], T], c: sqlite3.Connection) -> T:
    return _transaction(c, lambda: body(c))


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


def _prune_hits_chunk(before: int, c: sqlite3.Connection) -> int | None:
    """Delete up to :data:`PRUNE_CHUNK` rate-limit hits of one key revoked or expired before
    ``before`` (they can never be read again).

    Returns:
        How many were deleted, or None when no such key has any left.
    """
    row = c.execute(
        "SELECT id FROM keys INDEXED BY keys_with_hits WHERE last_hit_at IS NOT NULL"
        " AND coalesce(revoked_at, expires_at) < ? LIMIT 1",
        (before,),
    ).fetchone()
    if row is None:
        return None
    deleted = c.execute(
        "DELETE FROM key_hits WHERE key_id = :k"
        " AND slot IN (SELECT slot FROM key_hits WHERE key_id = :k LIMIT :n)",
        {"k": row[0], "n": PRUNE_CHUNK},
    ).rowcount
    if deleted < PRUNE_CHUNK:  # the key's last: it leaves the index
        c.execute("UPDATE keys SET last_hit_at = NULL WHERE id = ?", (row[0],))
    return deleted


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
    # The key's status (a revocation or an extension clears the serving store's cache).
    revoked_at: int | None = None
    expires_at: int = 0


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
        results: list[Any] = []
        finishing: list[FinishOp] = []  # consecutive settlements and releases, settled as one
        for op in ops:
            if isinstance(op, FinishOp) and len(finishing) < FINISH_CHUNK:
                finishing.append(op)
                continue
            if finishing:
                results += self.finish_many(finishing)
                finishing = []
            if isinstance(op, FinishOp):
                finishing.append(op)
            else:
                results.append(self.one(op))
        if finishing:
            results += self.finish_many(finishing)
        self.write_out()
        return results

    def one(self, op: LedgerOp) -> Any:
        c = self.c
        if isinstance(op, FinishOp):
            if op.reservation_id in self.new:
                self.write_out()
            return self.finish(op)
        if isinstance(op, ReserveOp) and op.reservation.plain:
            return self.reserve(op.reservation, op.now)
        if isinstance(op, AuditOp):
            return _insert_audit(c, op.entries)  # its own table: nothing pending to write
        if isinstance(op, AdmitOp):
            # Its own tables (the key's use count and hits): nothing pending to write, and
            # still checked in the order the admissions were asked for.
            return _admit(c, op.key_id, op.now)
        self.write_out()
        self.spend.clear()  # the slow path may change any spend row
        if isinstance(op, ReserveOp):  # a replay, a budget or brakes: the full statement
            return _reserve(c, op.reservation, op.now, op.replay_after)
        return _correct_price(c, op.object_id, op.actual, op.now)

    def state(self, key_id: str, day: str) -> _SpendRow:
        known = self.spend.get((key_id, day))
        if known is None:
            row = self.c.execute(
                "SELECT k.cap_micros, s.spent, s.reserved, k.revoked_at, k.expires_at FROM keys k"
                " LEFT JOIN spend s ON s.key_id = k.id AND s.day = ? WHERE k.id = ?",
                (day, key_id),
            ).fetchone()
            if row is None:
                known = _SpendRow(0, 0, None, exists=False)
            else:
                exists = row[1] is not None
                known = _SpendRow(
                    int(row[1]) if exists else 0,
                    int(row[2]) if exists else 0,
                    int(row[0]),
                    exists=exists,
                    revoked_at=row[3],
                    expires_at=int(row[4]),
                )
            unwritten = self.deltas.get((key_id, day))
            if unwritten is not None:  # settlements of this row not written out yet
                known.spent += unwritten[0]
                known.reserved += unwritten[1]
            self.spend[(key_id, day)] = known
        return known

    def reserve(self, r: Reservation, now: int) -> tuple[ReserveResult, SpendState]:
        state = self.state(r.key_id, r.day)
        if state.cap is not None:
            inactive = _key_inactive(state.revoked_at, state.expires_at, now)
            if inactive is not None:
                return inactive
        if state.cap is None or state.spent + state.reserved + r.amount > state.cap:
            return ReserveResult.CAP_EXHAUSTED, SpendState(state.spent, state.reserved)
        state.reserved += r.amount
        self.deltas.setdefault((r.key_id, r.day), [0, 0])[1] += r.amount
        self.new[r.id] = (r.id, r.key_id, r.day, r.amount, now)
        return ReserveResult.RESERVED, SpendState(state.spent, state.reserved)

    def finish_many(self, ops: list[FinishOp]) -> list[bool]:
        """Finish ``ops`` in order, with one statement when they are several different
        reservations (what a busy server's batch mostly holds)."""
        if any(op.reservation_id in self.new for op in ops):
            self.write_out()
        if len(ops) == 1 or len({op.reservation_id for op in ops}) < len(ops):
            return [self.finish(op) for op in ops]  # one reservation twice: the first wins
        finished = _mark_many_finished(self.c, ops)
        for moved in finished.values():
            self._move(*moved)
        return [op.reservation_id in finished for op in ops]

    def finish(self, op: FinishOp) -> bool:
        finished = _mark_finished(self.c, op.reservation_id, op.settlement, op.now)
        if finished is None:
            return False
        self._move(*finished)
        return True

    def _move(self, key_id: str, day: str, amount: int, actual: int) -> None:
        """A finished reservation's effect on its key's spend row: ``amount`` no longer
        reserved, ``actual`` spent."""
        delta = self.deltas.setdefault((key_id, day), [0, 0])
        delta[0] += actual
        delta[1] -= amount
        state = self.spend.get((key_id, day))
        if state is not None:
            state.spent += actual
            state.reserved -= amount

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


@attrs.frozen
class _Admitted:
    """A request that passed its key's brakes, to count once it is forwarded."""

    key_id: str
    #: When the request goes in the key's ring of hits (None: the key has no rate limit).
    at: int | None = None
    #: The slot of the ring it takes.
    slot: int = 0


def _key_inactive(
    revoked_at: int | None, expires_at: int, now: int
) -> tuple[ReserveResult, SpendState] | None:
    """The refusal of a request whose key was revoked or expired since it was looked up."""
    if revoked_at is not None:
        return ReserveResult.KEY_REVOKED, SpendState(0, 0)
    if now >= expires_at:
        return ReserveResult.KEY_EXPIRED, SpendState(0, 0)
    return None


def _check_key(
    c: sqlite3.Connection, key_id: str, now: int
) -> tuple[ReserveResult, SpendState] | None:
    row = c.execute("SELECT revoked_at, expires_at FROM keys WHERE id = ?", (key_id,)).fetchone()
    return None if row is None else _key_inactive(row[0], int(row[1]), now)


def _check_brakes(
    c: sqlite3.Connection, key_id: str, now: int
) -> _Admitted | tuple[ReserveResult, SpendState]:
    """The key's status, its use count, then its rate limit (a ring of its last N hits: see
    ``AdmitOp``): one read of the key's row and at most one of its ring, whatever N.

    Runs inside the write transaction (``BEGIN IMMEDIATE``), so nothing else writes between
    this check and the count.
    """
    row = c.execute(
        "SELECT rate_limit, max_requests, requests_used, rate_hits, last_hit_at, revoked_at,"
        " expires_at FROM keys WHERE id = ?",
        (key_id,),
    ).fetchone()
    if row is None:
        return _Admitted(key_id)  # no such key: the reservation refuses it
    rate, max_requests, used, hits, last, revoked_at, expires_at = row
    inactive = _key_inactive(revoked_at, int(expires_at), now)
    if inactive is not None:
        return inactive
    if max_requests is not None and used >= max_requests:
        return ReserveResult.USES_EXHAUSTED, SpendState(0, 0)
    if rate is None:
        return _Admitted(key_id)
    limit, seconds = parse_rate(rate)
    window = seconds * 1_000_000
    at = now if last is None else max(now, int(last))  # the ring never goes backwards
    slot = int(hits) % limit
    held = c.execute(
        "SELECT at FROM key_hits WHERE key_id = ? AND slot = ?", (key_id, slot)
    ).fetchone()
    if held is not None and held[0] > at - window:  # the N-th latest hit is in the window
        return ReserveResult.RATE_LIMITED, SpendState(0, 0, retry_after=held[0] + window - now)
    return _Admitted(key_id, at, slot)


def _count_use(c: sqlite3.Connection, admitted: _Admitted) -> None:
    if admitted.at is None:
        c.execute(
            "UPDATE keys SET requests_used = requests_used + 1 WHERE id = ?", (admitted.key_id,)
        )
        return
    c.execute(
        "UPDATE keys SET requests_used = requests_used + 1, rate_hits = rate_hits + 1,"
        " last_hit_at = ? WHERE id = ?",
        (admitted.at, admitted.key_id),
    )
    c.execute(
        "INSERT INTO key_hits (key_id, slot, at) VALUES (?, ?, ?)"
        " ON CONFLICT (key_id, slot) DO UPDATE SET at = excluded.at",
        (admitted.key_id, admitted.slot, admitted.at),
    )


def _admit(c: sqlite3.Connection, key_id: str, now: int) -> tuple[ReserveResult, SpendState]:
    """Admit a free request of a braked key (``AdmitOp``)."""
    checked = _check_brakes(c, key_id, now)
    if isinstance(checked, tuple):
        return checked
    _count_use(c, checked)
    return ReserveResult.ADMITTED, SpendState(0, 0)


def _reserve(
    c: sqlite3.Connection, r: Reservation, now: int, replay_after: int
) -> tuple[ReserveResult, SpendState]:
    """Admit (``r.braked``), then reserve against the key's cap and its budget's: every check
    is made before anything is written, in the write transaction, so a refusal leaves
    nothing behind."""
    admitted = None
    if r.braked:
        checked = _check_brakes(c, r.key_id, now)
        if isinstance(checked, tuple):
            return checked
        admitted = checked
    else:
        inactive = _check_key(c, r.key_id, now)
        if inactive is not None:
            return inactive
    if r.idem_hash is not None:
        # Only a request already counted makes a replay free: one still in flight may yet be
        # refused (and released), and the vendor answers a concurrent repeat with an error.
        earlier = c.execute(
            "SELECT 1 FROM reservations WHERE key_id = ? AND idem_hash = ?"
            " AND state = 'settled' AND created_at >= ?",
            (r.key_id, r.idem_hash, replay_after),
        ).fetchone()
        if earlier is not None:
            if admitted is not None:
                _count_use(c, admitted)  # forwarded all the same: the vendor replays
            return ReserveResult.REPLAY, _spend_state(c, r.key_id, r.day)
    if r.budget_id is not None:
        # The key's cap first, then the budget's (the order PostgreSQL checks them in): a
        # request past both is refused for the key's.
        key_cap, key_used = c.execute(
            "SELECT k.cap_micros, coalesce(s.spent + s.reserved, 0) FROM keys k"
            " LEFT JOIN spend s ON s.key_id = k.id AND s.day = ? WHERE k.id = ?",
            (r.day, r.key_id),
        ).fetchone() or (0, 0)
        if key_used + r.amount > key_cap:
            return ReserveResult.CAP_EXHAUSTED, _spend_state(c, r.key_id, r.day)
        cap, used = c.execute(
            "SELECT b.cap_micros, coalesce(s.spent + s.reserved, 0) FROM budgets b"
            " LEFT JOIN budget_spend s ON s.budget_id = b.id AND s.day = ? WHERE b.id = ?",
            (r.day, r.budget_id),
        ).fetchone() or (0, 0)
        if used + r.amount > cap:
            return ReserveResult.BUDGET_EXHAUSTED, SpendState(
                0, 0, budget_cap=int(cap), budget_spent=int(used)
            )
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
    if r.budget_id is not None:
        c.execute(
            "INSERT INTO budget_spend (budget_id, day, spent, reserved) VALUES (?, ?, 0, ?)"
            " ON CONFLICT (budget_id, day) DO UPDATE SET reserved = reserved + excluded.reserved",
            (r.budget_id, r.day, r.amount),
        )
    c.execute(
        "INSERT INTO reservations"
        " (id, key_id, day, amount, state, idem_hash, created_at, budget_id)"
        " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
        (r.id, r.key_id, r.day, r.amount, r.idem_hash, now, r.budget_id),
    )
    if admitted is not None:
        _count_use(c, admitted)
    return ReserveResult.RESERVED, SpendState(int(row[0]), int(row[1]))


def _mark_finished(
    c: sqlite3.Connection, reservation_id: str, s: Settlement | None, now: int
) -> tuple[str, str, int, int] | None:
    """Settle (or, without ``s``, release) a pending reservation's row, and move its
    budget's spend row (the key's is the caller's).

    Returns:
        ``(key id, day, reserved amount, settled amount)`` for the spend row to move, or
        None if the reservation was not pending (nothing to move).
    """
    if s is None:
        row = c.execute(
            "UPDATE reservations SET state = 'released', settled_amount = 0, finished_at = ?"
            " WHERE id = ? AND state = 'pending' RETURNING key_id, day, amount, budget_id",
            (now, reservation_id),
        ).fetchone()
    else:
        row = c.execute(
            "UPDATE reservations SET state = 'settled', settled_amount = ?, final = ?,"
            " vendor_request_id = ?, object_id = ?, finished_at = ?"
            " WHERE id = ? AND state = 'pending' RETURNING key_id, day, amount, budget_id",
            (s.actual, int(s.final), s.vendor_request_id, s.object_id, now, reservation_id),
        ).fetchone()
    if row is None:
        return None
    if row[3] is not None:
        c.execute(
            "UPDATE budget_spend SET reserved = reserved - ?, spent = spent + ?"
            " WHERE budget_id = ? AND day = ?",
            (int(row[2]), 0 if s is None else s.actual, row[3], row[1]),
        )
    return str(row[0]), str(row[1]), int(row[2]), 0 if s is None else s.actual


def _mark_many_finished(
    c: sqlite3.Connection, ops: Sequence[FinishOp]
) -> dict[str, tuple[str, str, int, int]]:
    """:func:`_mark_finished` for several different reservations in one statement.

    Returns:
        For each reservation that was pending (and is now finished), by id: ``(key id, day,
        reserved amount, settled amount)`` for the spend row to move.
    """
    params: list[Any] = []
    for op in ops:
        s = op.settlement
        if s is None:  # a release: nothing settled, the estimate's details left as they are
            params += (op.reservation_id, None, None, None, None, op.now)
        else:
            params += (
                op.reservation_id, s.actual, int(s.final), s.vendor_request_id, s.object_id, op.now
            )  # fmt: skip
    rows = c.execute(
        "UPDATE reservations SET"
        " state = CASE WHEN v.column2 IS NULL THEN 'released' ELSE 'settled' END,"
        " settled_amount = coalesce(v.column2, 0),"
        " final = CASE WHEN v.column2 IS NULL THEN reservations.final ELSE v.column3 END,"
        " vendor_request_id = CASE WHEN v.column2 IS NULL"
        "   THEN reservations.vendor_request_id ELSE v.column4 END,"
        " object_id = CASE WHEN v.column2 IS NULL THEN reservations.object_id ELSE v.column5 END,"
        " finished_at = v.column6"
        f" FROM (VALUES {', '.join(['(?, ?, ?, ?, ?, ?)'] * len(ops))}) AS v"
        " WHERE reservations.id = v.column1 AND reservations.state = 'pending'"
        " RETURNING id, key_id, day, amount, budget_id, settled_amount",
        params,
    ).fetchall()
    budgets: dict[tuple[str, str], list[int]] = {}
    finished: dict[str, tuple[str, str, int, int]] = {}
    for reservation_id, key_id, day, amount, budget_id, actual in rows:
        finished[str(reservation_id)] = (str(key_id), str(day), int(amount), int(actual))
        if budget_id is not None:
            moved = budgets.setdefault((str(budget_id), str(day)), [0, 0])
            moved[0] += int(amount)
            moved[1] += int(actual)
    for (budget_id, day), (amount, actual) in budgets.items():
        c.execute(
            "UPDATE budget_spend SET reserved = reserved - ?, spent = spent + ?"
            " WHERE budget_id = ? AND day = ?",
            (amount, actual, budget_id, day),
        )
    return finished


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
        "SELECT id, key_id, day, settled_amount, budget_id FROM reservations"
        " WHERE object_id = ? AND final = 0 AND state = 'settled'",
        (object_id,),
    ).fetchone()
    if row is not None and row[4] is not None:
        c.execute(
            "UPDATE budget_spend SET spent = spent - ? + ? WHERE budget_id = ? AND day = ?",
            (row[3], actual, row[4], row[2]),
        )
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
                "UPDATE budget_spend SET reserved = reserved - p.total, spent = spent + p.total"
                " FROM (SELECT budget_id, day, sum(amount) AS total FROM reservations"
                "       WHERE state = 'pending' AND budget_id IS NOT NULL"
                "       GROUP BY budget_id, day) AS p"
                " WHERE budget_spend.budget_id = p.budget_id AND budget_spend.day = p.day"
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
    " expires_at, max_expires_at, revoked_at, metadata, stripe_account, rate_limit,"
    " max_requests, budget_id, requests_used"
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
        rate_limit=row[13],
        max_requests=row[14],
        budget_id=row[15],
        requests_used=int(row[16]),
    )


_BUDGET_COLUMNS = "id, tenant, label, cap_micros, created_at, expires_at, revoked_at"


def _budget_from_row(row: Any) -> BudgetRecord:
    return BudgetRecord(
        id=row[0],
        tenant=row[1],
        label=row[2],
        cap_micros=int(row[3]),
        created_at=int(row[4]),
        expires_at=int(row[5]),
        revoked_at=None if row[6] is None else int(row[6]),
    )
