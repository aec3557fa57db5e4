-- Brakes for loops. A key may have a rate limit ("N/s", "N/m", "N/h": the times of its last
-- N forwarded requests in key_hits, a ring of N slots; rate_hits counts them, last_hit_at is
-- the latest), a use count (max_requests,
-- requests_used) and a run budget: a daily cap shared by every key drawing from it.
ALTER TABLE keys
    ADD COLUMN rate_limit TEXT,
    ADD COLUMN max_requests BIGINT,
    ADD COLUMN requests_used BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN budget_id TEXT,
    ADD COLUMN rate_hits BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN last_hit_at BIGINT;
CREATE INDEX keys_budget ON keys (budget_id) WHERE budget_id IS NOT NULL;
CREATE TABLE key_hits (
    key_id TEXT NOT NULL,
    slot BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (key_id, slot)
);
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
