-- Two relay processes given one instance id (say, one OUTBOX_INSTANCE_ID for every
-- replica of a deployment) renewed the same leases, so both published every partition
-- they held: two publishers per ordering key. Each run of a relay now stamps the
-- instance row with a token of its own; a relay whose heartbeat finds another live
-- run's token publishes nothing and stands by until that run stops or goes stale.
-- NULL: a row written by a relay of an earlier release. A run standing by writes
-- where it runs on the holder's row at each of its heartbeats, for `outbox-relay status`.
ALTER TABLE outbox_relay_instance
    ADD COLUMN incarnation uuid,
    ADD COLUMN standby_host text,
    ADD COLUMN standby_seen_at timestamptz;
