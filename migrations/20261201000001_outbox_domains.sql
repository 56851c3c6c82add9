-- The outbox's column rules move from table CHECK constraints to domains, with the
-- same constraint names and the same SQLSTATE (23514, check_violation).
--
-- Why: PostgreSQL rebuilds a table's CHECK constraints from their stored text on
-- every execution of an INSERT, prepared or not, while a domain's checks are built
-- once per connection and cached. For the contract's one-row INSERT this was about a
-- quarter of the row's cost (see README, "What an outbox row costs").
--
-- The steps avoid rewriting the table: a column whose type becomes a domain without
-- constraints keeps its data and indexes; the checks are added to the domains after,
-- NOT VALID, and validated by a scan once the table's own checks are gone. Every
-- existing row already passed those same checks.
CREATE DOMAIN outbox_saga_id AS text;
CREATE DOMAIN outbox_step AS text;
CREATE DOMAIN outbox_routing_key AS text;
CREATE DOMAIN outbox_exchange AS text;
CREATE DOMAIN outbox_headers AS jsonb;
CREATE DOMAIN outbox_ordering_key AS text;
CREATE DOMAIN outbox_state AS text;

ALTER TABLE outbox
    ALTER COLUMN saga_id TYPE outbox_saga_id,
    ALTER COLUMN step TYPE outbox_step,
    ALTER COLUMN routing_key TYPE outbox_routing_key,
    ALTER COLUMN exchange TYPE outbox_exchange,
    ALTER COLUMN headers TYPE outbox_headers,
    ALTER COLUMN ordering_key TYPE outbox_ordering_key,
    ALTER COLUMN state TYPE outbox_state;

-- saga_id, step, routing_key and exchange travel as AMQP short strings
-- (correlation_id, type, routing key, exchange): at most 255 bytes.
ALTER DOMAIN outbox_saga_id ADD CONSTRAINT outbox_saga_id_valid
    CHECK (VALUE <> '' AND octet_length(VALUE) <= 255) NOT VALID;
ALTER DOMAIN outbox_step ADD CONSTRAINT outbox_step_valid
    CHECK (VALUE <> '' AND octet_length(VALUE) <= 255) NOT VALID;
ALTER DOMAIN outbox_routing_key ADD CONSTRAINT outbox_routing_key_valid
    CHECK (VALUE <> '' AND octet_length(VALUE) <= 255) NOT VALID;
ALTER DOMAIN outbox_exchange ADD CONSTRAINT outbox_exchange_valid
    CHECK (octet_length(VALUE) <= 255) NOT VALID;
ALTER DOMAIN outbox_headers ADD CONSTRAINT outbox_headers_is_object
    CHECK (jsonb_typeof(VALUE) = 'object') NOT VALID;
ALTER DOMAIN outbox_ordering_key ADD CONSTRAINT outbox_ordering_key_valid
    CHECK (VALUE <> '') NOT VALID;
ALTER DOMAIN outbox_state ADD CONSTRAINT outbox_state_known
    CHECK (VALUE IN ('pending', 'retry', 'dead', 'sent')) NOT VALID;

ALTER TABLE outbox
    DROP CONSTRAINT outbox_saga_id_valid,
    DROP CONSTRAINT outbox_step_valid,
    DROP CONSTRAINT outbox_routing_key_valid,
    DROP CONSTRAINT outbox_exchange_valid,
    DROP CONSTRAINT outbox_headers_is_object,
    DROP CONSTRAINT outbox_ordering_key_valid,
    DROP CONSTRAINT outbox_state_known;

ALTER DOMAIN outbox_saga_id VALIDATE CONSTRAINT outbox_saga_id_valid;
ALTER DOMAIN outbox_step VALIDATE CONSTRAINT outbox_step_valid;
ALTER DOMAIN outbox_routing_key VALIDATE CONSTRAINT outbox_routing_key_valid;
ALTER DOMAIN outbox_exchange VALIDATE CONSTRAINT outbox_exchange_valid;
ALTER DOMAIN outbox_headers VALIDATE CONSTRAINT outbox_headers_is_object;
ALTER DOMAIN outbox_ordering_key VALIDATE CONSTRAINT outbox_ordering_key_valid;
ALTER DOMAIN outbox_state VALIDATE CONSTRAINT outbox_state_known;

-- A PL/pgSQL function keeps, per connection, plans made for the column types it saw,
-- and fails with "type of parameter N does not match" once they change: a writer
-- connection that had inserted before this migration would fail every INSERT after
-- it, and a running relay every claim. Touching a function's catalog row (here its
-- cost, to the value it already has) makes every connection compile it afresh.
ALTER FUNCTION outbox_fill_defaults() COST 100;
ALTER FUNCTION outbox_ring_doorbell() COST 100;
ALTER FUNCTION outbox_ready_batch(text, smallint[], bigint, integer, bigint) COST 100;
