-- Reservations left pending by a replica that died are resolved by the others: each
-- pending reservation carries its replica (owner) and a lease the replica keeps renewing;
-- past the lease, any replica counts it at its bound and marks it unconfirmed.
ALTER TABLE reservations
    ADD COLUMN unconfirmed BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN owner TEXT,
    ADD COLUMN lease_until BIGINT;
ALTER TABLE spend ADD COLUMN unconfirmed BIGINT NOT NULL DEFAULT 0;
CREATE INDEX reservations_pending ON reservations (lease_until) WHERE state = 'pending';
CREATE INDEX reservations_owner ON reservations (owner) WHERE state = 'pending';
