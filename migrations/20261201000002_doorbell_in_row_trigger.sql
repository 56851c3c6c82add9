-- The doorbell moves into the row trigger, and asks about the relay without a query.
--
-- Why: every trigger costs an INSERT a fixed 8-9 µs per statement here, however
-- little it does (measured with a statement trigger whose WHEN is always false), and
-- the statement-level doorbell added its lookup of outbox_relay_instance through SPI
-- on top. The row trigger that fills ordering_key and partition stays, so the
-- doorbell rides on it: one trigger instead of two, and no query. See README,
-- "What an outbox row costs".
--
-- How a writer knows, without a query, that the relay of its row is idle: an idle
-- relay holds a session-level advisory lock, exclusive, on each partition it
-- publishes (the two-key form: 1869968482, 'outb' in ASCII, and the partition). Each
-- row tries to take its partition's lock shared, for the rest of its transaction:
-- - it cannot: that partition's relay is idle, so the row rings (NOTIFY outbox_ready,
--   sent at commit);
-- - it can: no relay sleeps on that partition, and the writer now holds the lock
--   until it commits or rolls back. A relay that wants to sleep cannot take the lock
--   before then, so it never sleeps through a row that did not ring: it takes its
--   locks first, then looks for rows once more.
-- Taking the same lock again in one transaction is a lookup in the backend's own
-- lock table, so a many-row INSERT pays it about once per partition.
CREATE OR REPLACE FUNCTION outbox_fill_defaults() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- nullif: an empty saga_id must fail its own CHECK, not ordering_key's.
    NEW.ordering_key := coalesce(NEW.ordering_key, nullif(NEW.saga_id, ''));
    NEW.partition := coalesce(outbox_partition_of(NEW.ordering_key), 0);
    IF NOT pg_try_advisory_xact_lock_shared(1869968482, NEW.partition) THEN
        PERFORM pg_notify('outbox_ready', '');
    END IF;
    RETURN NEW;
END
$$;

-- Relays of the previous release still set outbox_relay_instance.listening, which no
-- writer reads any more: until they are replaced, rows for them wait for their
-- fallback poll (--poll-interval). The column stays, for them and for `status`.
DROP TRIGGER outbox_ring_doorbell ON outbox;
DROP FUNCTION outbox_ring_doorbell();
