-- The 2 a.m. console's tables: consumers' dead letters kept where a saga's other
-- records are (the consumer's database), an audit of operators' actions, and the
-- indexes that find one saga's records in the inbox and by a saga id's prefix.

-- One row per message a consumer dead-lettered, written before its copy goes to
-- `{queue}.dead`. The broker's copy is what moves when it is sent back; this row is
-- what a person or a script can find by queue, by consumer and by saga id.
CREATE TABLE inbox_dead_letter (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer         text        NOT NULL,
    queue            text        NOT NULL,
    -- The AMQP message_id (the outbox row's id when the relay sent it).
    message_id       text,
    -- Null when the message carried none (it is dead for that reason).
    saga_id          text,
    step             text,
    -- The x-dead-reason the copy carries, and its kind (the metric's reason label).
    reason           text        NOT NULL,
    kind             text        NOT NULL,
    attempts         integer     NOT NULL,
    -- The handler's last error, when a handler ran.
    last_error       text,
    -- The message as it arrived: headers (as JSON) and body, for `show`.
    headers          jsonb       NOT NULL DEFAULT '{}',
    body             bytea       NOT NULL,
    dead_at          timestamptz NOT NULL DEFAULT now(),
    state            text        NOT NULL DEFAULT 'dead'
                     CONSTRAINT inbox_dead_letter_state_known CHECK (state IN ('dead', 'sent_back')),
    sent_back_at     timestamptz,
    sent_back_reason text
);

-- A consumer that crashes between this row and its ack dead-letters the redelivery
-- again: one row for both.
CREATE UNIQUE INDEX inbox_dead_letter_once ON inbox_dead_letter (queue, message_id)
    WHERE message_id IS NOT NULL AND state = 'dead';
CREATE INDEX inbox_dead_letter_by_saga ON inbox_dead_letter (saga_id, id);
CREATE INDEX inbox_dead_letter_waiting ON inbox_dead_letter (queue, id) WHERE state = 'dead';

-- Every operator's action from the console or the CLI, with the reason given.
CREATE TABLE txoutbox_audit (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    -- saga_abort, saga_retry, outbox_retry, dead_letter_send_back
    action   text        NOT NULL,
    -- What it acted on: a saga id, an outbox row id, a dead letter's id or a queue.
    target   text        NOT NULL,
    saga_id  text,
    reason   text        NOT NULL CONSTRAINT txoutbox_audit_reason_given CHECK (reason <> ''),
    -- console or cli
    actor    text        NOT NULL
);
CREATE INDEX txoutbox_audit_by_saga ON txoutbox_audit (saga_id, id);

-- One saga's inbox records (the primary key leads with the consumer), and a saga id
-- by its prefix, whatever the database's collation.
-- IF NOT EXISTS: a large inbox may have had it built beforehand, CONCURRENTLY.
CREATE INDEX IF NOT EXISTS inbox_by_saga ON inbox (saga_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS saga_instance_by_prefix ON saga_instance (saga_id text_pattern_ops);
