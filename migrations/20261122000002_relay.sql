-- Tables the relay manages. Producers never touch them.

-- One row per running relay instance, refreshed by its heartbeat. An instance whose
-- heartbeat is older than the lease time is gone; its partitions are free to take.
CREATE TABLE outbox_relay_instance (
    instance_id  text        PRIMARY KEY,
    hostname     text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Which instance publishes which partition. Only the holder of a partition's
-- unexpired lease publishes its rows, so each ordering key has one publisher at a time.
CREATE TABLE outbox_relay_lease (
    partition  smallint    PRIMARY KEY CHECK (partition >= 0 AND partition < 64),
    owner      text,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);

INSERT INTO outbox_relay_lease (partition) SELECT generate_series(0, 63);

-- The doorbell. A NOTIFY in every writing transaction serializes commits on a
-- global lock (measured here: about half the commit rate at 16 connections), so
-- writers ring only while some relay is idle and listening. A busy relay does not
-- listen, it polls until the outbox is drained, and writers then pay one lookup in
-- this small table per INSERT statement.
ALTER TABLE outbox_relay_instance ADD COLUMN listening boolean NOT NULL DEFAULT false;

CREATE FUNCTION outbox_ring_doorbell() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox_relay_instance
               WHERE listening AND heartbeat_at > now() - interval '1 minute') THEN
        PERFORM pg_notify('outbox_ready', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_ring_doorbell
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_ring_doorbell();
