-- The outbox table is a public contract: any service, in any language, may write
-- to it with plain SQL. Only saga_id, step, routing_key and payload are required.
-- See README.md, "Outbox table contract".

-- UUIDv7 (RFC 9562) built from gen_random_uuid(): the first 48 bits become the Unix
-- time in milliseconds and the version nibble becomes 7, so ids sort by creation time.
CREATE FUNCTION outbox_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(
            set_bit(
                overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                        FROM 1 FOR 6),
                52, 1),
            53, 1),
        'hex')::uuid
$$;

-- Partitions spread ordering keys over relay instances. The number is fixed here
-- because it is stored in every row; 64 leaves room for far more relays than a
-- single PostgreSQL can feed.
CREATE FUNCTION outbox_partition_of(ordering_key text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ((hashtext(ordering_key) & 2147483647) % 64)::smallint
$$;

CREATE TABLE outbox (
    -- Written by producers.
    id           uuid        NOT NULL DEFAULT outbox_uuid_v7() PRIMARY KEY,
    -- saga_id, step, routing_key and exchange travel as AMQP short strings
    -- (correlation_id, type, routing key, exchange): at most 255 bytes.
    saga_id      text        NOT NULL
                 CONSTRAINT outbox_saga_id_valid CHECK (saga_id <> '' AND octet_length(saga_id) <= 255),
    step         text        NOT NULL
                 CONSTRAINT outbox_step_valid CHECK (step <> '' AND octet_length(step) <= 255),
    routing_key  text        NOT NULL
                 CONSTRAINT outbox_routing_key_valid CHECK (routing_key <> '' AND octet_length(routing_key) <= 255),
    payload      jsonb       NOT NULL,
    exchange     text        CONSTRAINT outbox_exchange_valid CHECK (octet_length(exchange) <= 255),
    headers      jsonb       NOT NULL DEFAULT '{}'
                 CONSTRAINT outbox_headers_is_object CHECK (jsonb_typeof(headers) = 'object'),
    ordering_key text        CONSTRAINT outbox_ordering_key_valid CHECK (ordering_key <> ''),
    available_at timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),

    -- Managed by the relay. Producers leave these alone.
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    partition    smallint    NOT NULL DEFAULT 0,
    state        text        NOT NULL DEFAULT 'pending'
                 CONSTRAINT outbox_state_known CHECK (state IN ('pending', 'retry', 'dead', 'sent')),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    sent_at      timestamptz
);

-- ordering_key defaults to saga_id. A column default cannot name another column,
-- so a BEFORE trigger fills it in and derives the partition from it.
CREATE FUNCTION outbox_fill_defaults() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- nullif: an empty saga_id must fail its own CHECK, not ordering_key's.
    NEW.ordering_key := coalesce(NEW.ordering_key, nullif(NEW.saga_id, ''));
    NEW.partition := coalesce(outbox_partition_of(NEW.ordering_key), 0);
    RETURN NEW;
END
$$;

CREATE TRIGGER outbox_fill_defaults
    BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_fill_defaults();

-- The relay's work queue: unsent rows in write order. Sent and dead rows leave it.
CREATE INDEX outbox_unsent_by_seq ON outbox (seq) WHERE state IN ('pending', 'retry');

-- Rows that hold back later rows of their key: waiting for a retry, or dead.
-- Normally empty, so checking "is this key blocked?" costs next to nothing.
CREATE INDEX outbox_blocking_by_key ON outbox (ordering_key, seq) WHERE state IN ('retry', 'dead');

-- "Where is saga X?" for support: every message of one business transaction.
CREATE INDEX outbox_by_saga ON outbox (saga_id, seq);

-- Retention cleanup of kept sent rows.
CREATE INDEX outbox_sent_by_time ON outbox (sent_at) WHERE state = 'sent';
