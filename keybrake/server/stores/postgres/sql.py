"""PostgreSQL statements and row mapping of the PostgreSQL store: each ledger operation
is one statement, one round trip."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from keybrake.server.stores.base import (
    AuditEntry,
    BudgetRecord,
    KeyRecord,
)

if TYPE_CHECKING:
    pass


def _key(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        tenant=row["tenant"],
        token_hash=row["token_hash"],
        vendor=row["vendor"],
        label=row["label"],
        allowed_endpoints=tuple(json.loads(row["allowed_endpoints"])),
        cap_micros=int(row["cap_micros"]),
        created_at=int(row["created_at"]),
        expires_at=int(row["expires_at"]),
        max_expires_at=int(row["max_expires_at"]),
        revoked_at=None if row["revoked_at"] is None else int(row["revoked_at"]),
        metadata=dict(json.loads(row["metadata"])),
        stripe_account=row["stripe_account"],
        rate_limit=row["rate_limit"],
        max_requests=row["max_requests"],
        budget_id=row["budget_id"],
        requests_used=int(row["requests_used"]),
    )


def _budget(row: Any) -> BudgetRecord:
    return BudgetRecord(
        id=row["id"],
        tenant=row["tenant"],
        label=row["label"],
        cap_micros=int(row["cap_micros"]),
        created_at=int(row["created_at"]),
        expires_at=int(row["expires_at"]),
        revoked_at=None if row["revoked_at"] is None else int(row["revoked_at"]),
    )


def _audit(row: Any) -> AuditEntry:
    return AuditEntry(
        id=int(row["id"]),
        at=int(row["at"]),
        tenant=row["tenant"],
        key_id=row["key_id"],
        label=row["label"],
        vendor=row["vendor"],
        method=row["method"],
        path=row["path"],
        decision=row["decision"],
        status=int(row["status"]),
        reserved=int(row["reserved"]),
        settled=int(row["settled"]),
        upstream_ms=row["upstream_ms"],
        vendor_request_id=row["vendor_request_id"],
    )


# Reserve: a key revoked or expired since the proxy looked it up reserves nothing (the key's
# status comes back to tell which); a replay of an idempotency key reserves nothing;
# otherwise create the day's spend row or add to it, only while spent + reserved + amount
# stays within the cap, and record the reservation, all in one statement.
_RESERVE = """
WITH earlier AS (
    SELECT 1 FROM reservations
    WHERE $5::text IS NOT NULL AND key_id = $1 AND idem_hash = $5
      AND state = 'settled' AND created_at >= $6
    LIMIT 1
), k AS (
    SELECT cap_micros, revoked_at, expires_at FROM keys WHERE id = $1
), cap AS (
    SELECT cap_micros FROM k WHERE revoked_at IS NULL AND expires_at > $7
), up AS (
    INSERT INTO spend AS s (key_id, day, spent, reserved)
    SELECT $1, $2, 0, $3 FROM cap WHERE $3 <= cap_micros AND NOT EXISTS (SELECT 1 FROM earlier)
    ON CONFLICT (key_id, day) DO UPDATE SET reserved = s.reserved + EXCLUDED.reserved
    WHERE s.spent + s.reserved + EXCLUDED.reserved <= (SELECT cap_micros FROM cap)
    RETURNING s.spent, s.reserved
), recorded AS (
    INSERT INTO reservations
        (id, key_id, day, amount, state, idem_hash, created_at, owner, lease_until)
    SELECT $4, $1, $2, $3, 'pending', $5, $7, $8, $9 FROM up
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM earlier) AND EXISTS (SELECT 1 FROM cap) AS replay,
       (SELECT revoked_at FROM k) AS revoked_at,
       (SELECT expires_at FROM k) AS expires_at,
       (SELECT spent FROM up) AS spent,
       (SELECT reserved FROM up) AS reserved,
       (SELECT count(*) FROM recorded) AS recorded
"""
# Several plain reservations of one key and day (no idempotency key, no budget, no
# brakes), all or none: their sum is added to the spend row by the same conditional upsert
# as one reservation's, so the cap holds exactly; if the sum doesn't fit, nothing is written
# and the caller reserves them one by one. $3 and $4: amounts and ids, in the same order.
_RESERVE_MANY = """
WITH k AS (
    SELECT cap_micros, revoked_at, expires_at FROM keys WHERE id = $1
), cap AS (
    SELECT cap_micros FROM k WHERE revoked_at IS NULL AND expires_at > $5
), total AS (
    SELECT sum(a)::bigint AS amount FROM unnest($3::bigint[]) AS a
), up AS (
    INSERT INTO spend AS s (key_id, day, spent, reserved)
    SELECT $1, $2, 0, total.amount FROM cap, total WHERE total.amount <= cap.cap_micros
    ON CONFLICT (key_id, day) DO UPDATE SET reserved = s.reserved + EXCLUDED.reserved
    WHERE s.spent + s.reserved + EXCLUDED.reserved <= (SELECT cap_micros FROM cap)
    RETURNING s.spent, s.reserved
), recorded AS (
    INSERT INTO reservations
        (id, key_id, day, amount, state, idem_hash, created_at, owner, lease_until)
    SELECT r.id, $1, $2, r.amount, 'pending', NULL, $5, $6, $7
    FROM unnest($4::text[], $3::bigint[]) AS r (id, amount), up
    RETURNING 1
)
SELECT (SELECT revoked_at FROM k) AS revoked_at,
       (SELECT expires_at FROM k) AS expires_at,
       (SELECT spent FROM up) AS spent,
       (SELECT reserved FROM up) AS reserved,
       (SELECT count(*) FROM recorded) AS recorded
"""
# Pending reservations whose lease lapsed (or that never had one: made before leases), as
# many as fit a batch, skipping any a concurrent sweep holds: counted at their bounds.
_RESOLVE_ABANDONED = """
WITH r AS (
    UPDATE reservations SET state = 'settled', settled_amount = amount, unconfirmed = true,
        finished_at = $1
    WHERE id IN (
        SELECT id FROM reservations
        WHERE state = 'pending' AND coalesce(lease_until, 0) < $2
        LIMIT $3 FOR UPDATE SKIP LOCKED
    )
    RETURNING key_id, day, amount, budget_id
), t AS (
    SELECT key_id, day, sum(amount) AS total FROM r GROUP BY key_id, day
), s AS (
    UPDATE spend AS s SET reserved = s.reserved - t.total, spent = s.spent + t.total,
        unconfirmed = s.unconfirmed + t.total
    FROM t WHERE s.key_id = t.key_id AND s.day = t.day
    RETURNING 1
), bt AS (
    SELECT budget_id, day, sum(amount) AS total FROM r WHERE budget_id IS NOT NULL
    GROUP BY budget_id, day
), b AS (
    UPDATE budget_spend AS b SET reserved = b.reserved - bt.total, spent = b.spent + bt.total
    FROM bt WHERE b.budget_id = bt.budget_id AND b.day = bt.day
    RETURNING 1
)
SELECT count(*), coalesce(sum(amount), 0) FROM r
"""
# Settling and releasing move the key's spend row, then its budget's (the order reserving
# takes them in too, so two transactions never wait for each other in a circle).
_SETTLE = """
WITH r AS (
    UPDATE reservations SET state = 'settled', settled_amount = $1, final = $2,
        vendor_request_id = $3, object_id = $4, finished_at = $5
    WHERE id = $6 AND state = 'pending'
    RETURNING key_id, day, amount, budget_id
), s AS (
    UPDATE spend AS s SET reserved = s.reserved - r.amount, spent = s.spent + $1
    FROM r WHERE s.key_id = r.key_id AND s.day = r.day
    RETURNING 1
), b AS (
    UPDATE budget_spend AS b SET reserved = b.reserved - r.amount, spent = b.spent + $1
    FROM r WHERE b.budget_id = r.budget_id AND b.day = r.day
    RETURNING 1
)
SELECT 1 FROM s
"""
_RELEASE = """
WITH r AS (
    UPDATE reservations SET state = 'released', settled_amount = 0, finished_at = $1
    WHERE id = $2 AND state = 'pending'
    RETURNING key_id, day, amount, budget_id
), s AS (
    UPDATE spend AS s SET reserved = s.reserved - r.amount
    FROM r WHERE s.key_id = r.key_id AND s.day = r.day
    RETURNING 1
), b AS (
    UPDATE budget_spend AS b SET reserved = b.reserved - r.amount
    FROM r WHERE b.budget_id = r.budget_id AND b.day = r.day
    RETURNING 1
)
SELECT 1 FROM s
"""
# A reservation with a budget or brakes, step by step in one transaction (see
# PostgresStore._reserve_in_steps): the key's spend row, then the budget's.
_RESERVE_KEY = """
INSERT INTO spend AS s (key_id, day, spent, reserved)
SELECT $1, $2, 0, $3 FROM keys WHERE id = $1 AND $3 <= cap_micros
ON CONFLICT (key_id, day) DO UPDATE SET reserved = s.reserved + EXCLUDED.reserved
WHERE s.spent + s.reserved + EXCLUDED.reserved <= (SELECT cap_micros FROM keys WHERE id = $1)
RETURNING s.spent, s.reserved
"""
_RESERVE_BUDGET = """
INSERT INTO budget_spend AS s (budget_id, day, spent, reserved)
SELECT $1, $2, 0, $3 FROM budgets WHERE id = $1 AND $3 <= cap_micros
ON CONFLICT (budget_id, day) DO UPDATE SET reserved = s.reserved + EXCLUDED.reserved
WHERE s.spent + s.reserved + EXCLUDED.reserved <= (SELECT cap_micros FROM budgets WHERE id = $1)
RETURNING s.spent, s.reserved
"""
_RECORD = """
INSERT INTO reservations
    (id, key_id, day, amount, state, idem_hash, created_at, owner, lease_until, budget_id)
VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9)
"""

_STATUS_FILTERS = {
    "active": "revoked_at IS NULL AND expires_at > $now",
    "expired": "revoked_at IS NULL AND expires_at <= $now",
    "revoked": "revoked_at IS NOT NULL",
}
