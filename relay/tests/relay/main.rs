//! The relay against a real PostgreSQL (a fresh database per test) and a real
//! RabbitMQ (an exchange and queue of each test's own). Failures are injected for
//! real: killed processes, cut and stalled connections, a PostgreSQL failover.

mod alarm;
mod claim_plan;
mod cluster;
mod console;
mod dead_letters;
mod doorbell;
mod failover;
mod failures;
mod instance_id;
mod nodes;
mod operating;
mod publishing;
mod refusals;
mod saga_commands;
mod support;
mod unreachable;
mod warm_pool;
