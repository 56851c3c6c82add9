-- Sagas that model real processes: parallel groups, waits for events, end hooks.
-- Relays and orchestrators of the previous release keep working: every new column
-- has a default, and they never read it.

ALTER TABLE saga_instance
    -- In a running parallel group: its steps whose action succeeded (bit i is the
    -- group's step i). Of a group that failed: its steps that were declined, which
    -- took no effect and are not compensated.
    ADD COLUMN branches_done     bigint      NOT NULL DEFAULT 0,
    ADD COLUMN branches_declined bigint      NOT NULL DEFAULT 0,
    -- When the stage in hand (a step, a parallel group, a wait) started: a group's
    -- deadline counts from it, and `saga show` says how long a wait has lasted.
    ADD COLUMN stage_started_at  timestamptz,
    -- The event a saga at a wait step waits for (`saga list --waiting`).
    ADD COLUMN waiting_for       text,
    -- A move to this final state whose end hook failed: the saga stays where it was
    -- until the hook succeeds (retried at deadline_at), or `failed` after its attempts,
    -- when `saga retry` runs the hook again.
    ADD COLUMN ending            text
                                 CONSTRAINT saga_instance_ending_known
                                 CHECK (ending IN ('completed', 'compensated', 'failed')),
    ADD COLUMN end_attempts      integer     NOT NULL DEFAULT 0,
    -- Why the saga ends as it does, kept while its end hook is owed: what the hook
    -- is given on each try, while last_error says why the hook failed.
    ADD COLUMN end_reason        text,
    -- Set by `signal` when an event for the saga arrived: the next sweep looks at it.
    ADD COLUMN signal_at         timestamptz;

CREATE INDEX saga_instance_waiting ON saga_instance (waiting_for) WHERE waiting_for IS NOT NULL;
CREATE INDEX saga_instance_signalled ON saga_instance (signal_at) WHERE signal_at IS NOT NULL;

-- Events delivered to sagas (signals), from code or from other services' messages.
-- Every one is kept with what became of it: taken by the step that waits for it,
-- kept for a step the saga has not reached yet, or refused with the reason. Not
-- tied to saga_instance: an event for an unknown saga is recorded too.
CREATE TABLE saga_signal (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id     text        NOT NULL,
    name        text        NOT NULL,
    payload     jsonb       NOT NULL DEFAULT 'null',
    -- The message that carried it, when it came through the orchestrator's inbox.
    message_id  text,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- When a step took it or it was refused; NULL while it waits for its step.
    settled_at  timestamptz,
    -- 'taken by step N', or why it was refused or ignored.
    outcome     text
);

CREATE INDEX saga_signal_unsettled ON saga_signal (saga_id, name, id) WHERE settled_at IS NULL;
CREATE INDEX saga_signal_by_saga ON saga_signal (saga_id, id);
