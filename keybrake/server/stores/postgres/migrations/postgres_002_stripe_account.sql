-- Stripe merchant scope: a key may be pinned to one connected account (Stripe-Account).
ALTER TABLE keys ADD COLUMN stripe_account TEXT;
-- What a key already counted for a vendor object (pricing confirms and captures).
CREATE INDEX reservations_key_object ON reservations (key_id, object_id)
    WHERE object_id IS NOT NULL;
