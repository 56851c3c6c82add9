-- Sagas: one row per business transaction coordinated by an orchestrator, and its
-- append-only history. A public contract like the outbox table: operators query
-- them (README.md, "Sagas"); only the orchestrator and `outbox-relay saga` write them.

CREATE TABLE saga_instance (
    saga_id            text        PRIMARY KEY
                       CONSTRAINT saga_instance_saga_id_valid CHECK (saga_id <> '' AND octet_length(saga_id) <= 255),
    saga_type          text        NOT NULL,
    -- The definition's version the saga started with; it finishes on that version.
    definition_version integer     NOT NULL,
    state              text        NOT NULL
                       CONSTRAINT saga_instance_state_known CHECK (state IN
                           ('pending', 'running', 'completed', 'compensating', 'compensated', 'failed')),
    -- The step in hand: whose action runs, whose compensation runs or gave up.
    current_step       integer     NOT NULL DEFAULT 0,
    -- Tries of the current compensation.
    attempts           integer     NOT NULL DEFAULT 0,
    -- Optimistic concurrency: every change increments it.
    version            bigint      NOT NULL DEFAULT 0,
    -- When the command in hand is overdue. Stored with the state, in the same
    -- transaction, so a timeout survives restarts and never outlives its state.
    deadline_at        timestamptz,
    data               jsonb       NOT NULL,
    last_error         text,
    -- An operator's request (`outbox-relay saga retry|abort`), carried out by the next
    -- orchestrator that sweeps: only the orchestrators know the definitions that
    -- commands are built from. It leaves deadline_at alone, so a request that no
    -- longer applies costs the saga nothing.
    operator_request   text
                       CONSTRAINT saga_instance_operator_request_known CHECK (operator_request IN ('retry', 'abort')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    -- Nothing is stuck silently: a saga that is not finished always has a deadline.
    CONSTRAINT saga_instance_deadline_while_active CHECK (
        state IN ('completed', 'compensated', 'failed') OR deadline_at IS NOT NULL)
);

-- The orchestrators' sweep: due sagas, soonest first.
CREATE INDEX saga_instance_due ON saga_instance (deadline_at) WHERE deadline_at IS NOT NULL;
-- Operators' requests waiting for a sweep: normally none.
CREATE INDEX saga_instance_requested ON saga_instance (saga_id) WHERE operator_request IS NOT NULL;
-- `saga list --state S`, newest first.
CREATE INDEX saga_instance_by_state ON saga_instance (state, updated_at);

CREATE TABLE saga_event (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id     text        NOT NULL REFERENCES saga_instance (saga_id) ON DELETE CASCADE,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- started, command_sent, reply, timeout, ignored, operator, definition_missing
    kind        text        NOT NULL,
    step        integer,
    -- action or compensation
    phase       text,
    from_state  text,
    to_state    text,
    -- The outbox message a command went out as, or the message a reply came in as.
    message_id  text,
    detail      text
);

CREATE INDEX saga_event_by_saga ON saga_event (saga_id, id);
