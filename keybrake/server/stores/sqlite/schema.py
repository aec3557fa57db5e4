"""The SQLite schema, and how each version upgrades from the one before."""

from __future__ import annotations

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
    stripe_account TEXT,
    rate_limit TEXT,
    max_requests INTEGER,
    requests_used INTEGER NOT NULL DEFAULT 0,
    budget_id TEXT,
    rate_hits INTEGER NOT NULL DEFAULT 0,
    last_hit_at INTEGER
);
CREATE INDEX IF NOT EXISTS keys_tenant ON keys (tenant, id);
CREATE INDEX IF NOT EXISTS keys_budget ON keys (budget_id) WHERE budget_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS keys_with_hits ON keys (id) WHERE last_hit_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS key_hits (
    key_id TEXT NOT NULL,
    slot INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (key_id, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budgets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    label TEXT NOT NULL,
    cap_micros INTEGER NOT NULL CHECK (cap_micros >= 0),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS budget_spend (
    budget_id TEXT NOT NULL,
    day TEXT NOT NULL,
    spent INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (budget_id, day)
);
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
    finished_at INTEGER,
    budget_id TEXT
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
    # Brakes for loops: rate limits and use counts per key, run budgets (their tables are
    # new, so _SCHEMA creates them).
    5: (
        "ALTER TABLE keys ADD COLUMN rate_limit TEXT",
        "ALTER TABLE keys ADD COLUMN max_requests INTEGER",
        "ALTER TABLE keys ADD COLUMN requests_used INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE keys ADD COLUMN budget_id TEXT",
        "ALTER TABLE keys ADD COLUMN rate_hits INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE keys ADD COLUMN last_hit_at INTEGER",
        "ALTER TABLE reservations ADD COLUMN budget_id TEXT",
    ),
}
SCHEMA_VERSION = 5
#: The oldest schema version this keybrake upgrades.
OLDEST_SCHEMA_VERSION = 2
