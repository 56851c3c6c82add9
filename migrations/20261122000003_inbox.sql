-- The inbox: one row per message a consumer has taken effect on, keyed by
-- consumer and saga_id:step. Recording the key commits in the same transaction as
-- the handler's effect, so a redelivered message finds its key and takes no effect.
CREATE TABLE inbox (
    -- Two services, or two handlers of one service, receiving the same message each
    -- process it once: the consumer's name is part of the key.
    consumer     text        NOT NULL CONSTRAINT inbox_consumer_valid CHECK (consumer <> ''),
    saga_id      text        NOT NULL CONSTRAINT inbox_saga_id_valid CHECK (saga_id <> ''),
    step         text        NOT NULL CONSTRAINT inbox_step_valid CHECK (step <> ''),
    -- The AMQP message_id of the delivery that took effect, for tracing duplicates.
    message_id   text,
    -- What the handler returned, handed back to duplicates.
    result       jsonb,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbox_pkey PRIMARY KEY (consumer, saga_id, step)
);

-- Retention: keys older than the window are deleted oldest first, in batches.
CREATE INDEX inbox_by_processed_at ON inbox (processed_at);
