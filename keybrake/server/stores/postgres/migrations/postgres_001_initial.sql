-- keybrake PostgreSQL schema, version 1. Money is integer micro-dollars; times are epoch
-- microseconds (UTC). Tokens are stored only as SHA-256 hashes.
CREATE TABLE admin_tokens (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    vendor TEXT NOT NULL,
    label TEXT NOT NULL,
    allowed_endpoints TEXT NOT NULL,
    cap_micros BIGINT NOT NULL CHECK (cap_micros >= 0),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    metadata TEXT NOT NULL
);
CREATE INDEX keys_tenant ON keys (tenant, created_at DESC, id DESC);
CREATE TABLE issue_idempotency (
    tenant TEXT NOT NULL,
    idem_hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    sealed_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, idem_hash)
);
CREATE TABLE spend (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    spent BIGINT NOT NULL DEFAULT 0,
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (key_id, day)
);
CREATE TABLE reservations (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    settled_amount BIGINT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'settled', 'released')),
    final BOOLEAN NOT NULL DEFAULT TRUE,
    idem_hash TEXT,
    object_id TEXT,
    vendor_request_id TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX reservations_key ON reservations (key_id, created_at);
CREATE INDEX reservations_idem ON reservations (key_id, idem_hash) WHERE idem_hash IS NOT NULL;
CREATE INDEX reservations_object ON reservations (object_id)
    WHERE object_id IS NOT NULL AND NOT final;
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    tenant TEXT,
    key_id TEXT,
    label TEXT,
    vendor TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    decision TEXT NOT NULL,
    status INTEGER NOT NULL,
    reserved BIGINT NOT NULL DEFAULT 0,
    settled BIGINT NOT NULL DEFAULT 0,
    upstream_ms DOUBLE PRECISION,
    vendor_request_id TEXT
);
CREATE INDEX audit_tenant ON audit (tenant, id);
CREATE INDEX audit_key ON audit (key_id, id);
