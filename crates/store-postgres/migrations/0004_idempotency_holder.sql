-- The token of the run that holds a running claim: only that run renews, completes or releases it, so a run
-- whose lease ran out (and whose claim a retry took over) cannot overwrite the answer of the one that took it.
-- Claims running at the upgrade have none; they cannot be completed and end with their lease.
ALTER TABLE idempotency_keys ADD COLUMN holder TEXT;
