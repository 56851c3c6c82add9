-- How often a key came back after it took effect: redeliveries, republishes after a
-- relay failure, producer retries. Support reads it to tell a noisy saga from a
-- quiet one; the demo's verifier sums it.
ALTER TABLE inbox
    ADD COLUMN duplicates        integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_duplicate_at timestamptz;
