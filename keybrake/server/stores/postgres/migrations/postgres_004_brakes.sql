-- Brakes for loops. A key may have a rate limit ("N/s", "N/m", "N/h": a sliding log of its
-- forwarded requests in key_hits, pruned per key as it goes), a use count (max_requests,
-- requests_used) and a run budget: a daily cap shared by every key drawing from it.
ALTER TABLE keys
    ADD COLUMN rate_limit TEXT,
    ADD COLUMN max_requests BIGINT,
    ADD COLUMN requests_used BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN budget_id TEXT;
CREATE INDEX keys_budget ON keys (budget_id) WHERE budget_id IS NOT NULL;
CREATE TABLE key_hits (
    key_id TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX key_hits_key ON key_hits (key_id, at);
CREATE TABLE budgets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    label TEXT NOT NULL,
    cap_micros BIGINT NOT NULL CHECK (cap_micros >= 0),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE budget_spend (
    budget_id TEXT NOT NULL,
    day TEXT NOT NULL,
    spent BIGINT NOT NULL DEFAULT 0,
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (budget_id, day)
);
ALTER TABLE reservations ADD COLUMN budget_id TEXT;
