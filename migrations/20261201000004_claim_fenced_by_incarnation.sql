-- The claim, fenced by the run's token: a relay run whose instance id another run has
-- taken over (its heartbeat had gone stale) claims nothing more, even before its own
-- next heartbeat tells it so. Leases are owned by instance id, so without this the
-- run that took over and the one that came back would both pass the lease check.
-- The token test does not depend on the rows, so PostgreSQL evaluates it once per
-- call, before the five-argument claim runs. An overload: relays of the previous
-- release keep calling theirs.
CREATE FUNCTION outbox_ready_batch(p_instance text, p_incarnation uuid, p_partitions smallint[],
                                   p_after_seq bigint, p_limit integer, p_max_bytes bigint)
RETURNS TABLE (id uuid, seq bigint, saga_id text, step text, routing_key text, payload text,
               exchange text, headers jsonb, created_at timestamptz, attempts integer,
               ordering_key text)
LANGUAGE sql STABLE
AS $$
    SELECT * FROM outbox_ready_batch(p_instance, p_partitions, p_after_seq, p_limit, p_max_bytes)
    WHERE EXISTS (SELECT 1 FROM outbox_relay_instance
                  WHERE instance_id = p_instance AND incarnation = p_incarnation)
$$;
