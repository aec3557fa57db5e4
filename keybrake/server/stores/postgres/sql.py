"""PostgreSQL statements and row mapping of the PostgreSQL store: each ledger operation
is one statement, one round trip."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from keybrake.server.stores.base import (
    AuditEntry,
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


# Reserve: a replay of an idempotency key reserves nothing; otherwise create the day's spend
# row or add to it, only while spent + reserved + amount stays within the cap, and record the
# reservation, all in one statement.
_RESERVE = """
WITH earlier AS (
    SELECT 1 FROM reservations
    WHERE $5::text IS NOT NULL AND key_id = $1 AND idem_hash = $5
      AND state = 'settled' AND created_at >= $6
    LIMIT 1
), cap AS (
    SELECT cap_micros FROM keys WHERE id = $1
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
SELECT EXISTS (SELECT 1 FROM earlier) AS replay,
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
    RETURNING key_id, day, amount
), t AS (
    SELECT key_id, day, sum(amount) AS total FROM r GROUP BY key_id, day
), s AS (
    UPDATE spend AS s SET reserved = s.reserved - t.total, spent = s.spent + t.total,
        unconfirmed = s.unconfirmed + t.total
    FROM t WHERE s.key_id = t.key_id AND s.day = t.day
    RETURNING 1
)
SELECT count(*), coalesce(sum(amount), 0) FROM r
"""
_SETTLE = """
WITH r AS (
    UPDATE reservations SET state = 'settled', settled_amount = $1, final = $2,
        vendor_request_id = $3, object_id = $4, finished_at = $5
    WHERE id = $6 AND state = 'pending'
    RETURNING key_id, day, amount
)
UPDATE spend AS s SET reserved = s.reserved - r.amount, spent = s.spent + $1
FROM r WHERE s.key_id = r.key_id AND s.day = r.day
RETURNING 1
"""
_RELEASE = """
WITH r AS (
    UPDATE reservations SET state = 'released', settled_amount = 0, finished_at = $1
    WHERE id = $2 AND state = 'pending'
    RETURNING key_id, day, amount
)
UPDATE spend AS s SET reserved = s.reserved - r.amount
FROM r WHERE s.key_id = r.key_id AND s.day = r.day
RETURNING 1
"""

_STATUS_FILTERS = {
    "active": "revoked_at IS NULL AND expires_at > $now",
    "expired": "revoked_at IS NULL AND expires_at <= $now",
    "revoked": "revoked_at IS NOT NULL",
}
