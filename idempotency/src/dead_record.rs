//! The consumer's own record of each message it gives up on: a row in
//! `inbox_dead_letter`, in the consumer's database, written before the message's copy
//! goes to `{queue}.dead`.
//!
//! The broker's copy is what moves when an operator sends it back; the row is how
//! a person finds it (by queue, by consumer, by saga id) without reading the queue.
//! Written first, so that a dead letter in `.dead` always has its row: a crash
//! between the two makes the broker redeliver the original, which is dead-lettered
//! again, and the row's unique index (`queue`, `message_id` while `dead`) keeps that
//! to one row. A database that cannot take the row keeps the message where it was
//! (it goes back to its queue, after a pause), as when the broker refuses the copy;
//! a database that will never take the row (no privilege, a value it refuses) and a
//! database migrated by an older release, without the table, get a logged error or
//! warning and the message moves to `.dead` unrecorded, as before the table existed.

use std::sync::atomic::{AtomicBool, Ordering};

use lapin::message::Delivery;
use sqlx::PgPool;
use txoutbox::wire::LAST_ERROR_HEADER;

use crate::decision::DeadKind;
use crate::envelope;

/// What a dead letter's row says beyond the delivery itself.
pub(crate) struct DeadLetter<'a> {
    pub(crate) queue: &'a str,
    pub(crate) attempts: u32,
    pub(crate) reason: &'a str,
    pub(crate) kind: DeadKind,
    /// The handler's error, when a handler ran and failed.
    pub(crate) last_error: Option<&'a str>,
}

/// Writes a consumer's dead-letter rows.
pub(crate) struct DeadLetterLog {
    pool: PgPool,
    consumer: String,
    /// Set once the missing table was reported: once per consumer is enough.
    told_no_table: AtomicBool,
}

/// How long a dead letter whose row could not be written waits before it goes back to
/// its queue.
const RECORD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// PostgreSQL's `undefined_table`: migrations older than the table.
const UNDEFINED_TABLE: &str = "42P01";

impl DeadLetterLog {
    pub(crate) fn new(pool: PgPool, consumer: &str) -> Self {
        Self {
            pool,
            consumer: consumer.to_owned(),
            told_no_table: AtomicBool::new(false),
        }
    }

    /// Records `delivery` as dead. True if its copy may go to `.dead`: the row is
    /// written (or was already, for a redelivery), or this database has no table for
    /// it; false if the database failed, and the message must stay.
    pub(crate) async fn record(&self, delivery: &Delivery, dead: &DeadLetter<'_>) -> bool {
        match self.insert(delivery, dead).await {
            Ok(()) => true,
            Err(error) if is_undefined_table(&error) => {
                if !self.told_no_table.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        queue = %dead.queue,
                        consumer = %self.consumer,
                        "this database has no inbox_dead_letter table (migrated by an older release): \
                         dead letters go to the dead-letter queue unrecorded; apply the migrations"
                    );
                }
                true
            }
            Err(error) if never_takes_it(&error) => {
                let error = txoutbox::postgres::describe(&error);
                tracing::error!(
                    queue = %dead.queue,
                    consumer = %self.consumer,
                    %error,
                    "this database refuses dead-letter rows (grant the consumer's role INSERT on \
                     inbox_dead_letter): the message goes to the dead-letter queue unrecorded"
                );
                true
            }
            Err(error) => {
                let error = txoutbox::postgres::describe(&error);
                tracing::warn!(queue = %dead.queue, %error, "could not record a dead letter; the message goes back to its queue");
                // Back to the queue at once would come straight back: the database is
                // down or busy, so give it a moment.
                tokio::time::sleep(RECORD_RETRY_PAUSE).await;
                false
            }
        }
    }

    async fn insert(&self, delivery: &Delivery, dead: &DeadLetter<'_>) -> sqlx::Result<()> {
        let props = &delivery.properties;
        let headers = envelope::headers(props);
        let message_id = props.message_id().as_ref().map(|id| pg_text(id.as_str()));
        let saga_id = envelope::saga_id(props, &headers).map(|s| pg_text(&s));
        let step = envelope::step(props, &headers).map(|s| pg_text(&s));
        let last_error = dead
            .last_error
            .map(str::to_owned)
            .or_else(|| headers.get(LAST_ERROR_HEADER)?.as_str().map(str::to_owned));
        let headers = serde_json::Value::Object(
            headers
                .into_iter()
                .map(|(name, value)| (pg_text(&name), pg_json(value)))
                .collect(),
        );
        // The conflict target names the unique index's predicate, literally: the
        // index is partial, and PostgreSQL infers it only from the same condition.
        sqlx::query(
            "INSERT INTO inbox_dead_letter
                 (consumer, queue, message_id, saga_id, step, reason, kind, attempts, last_error, headers, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (queue, message_id) WHERE message_id IS NOT NULL AND state = 'dead' DO NOTHING",
        )
        .bind(pg_text(&self.consumer))
        .bind(pg_text(dead.queue))
        .bind(message_id)
        .bind(saga_id)
        .bind(step)
        .bind(pg_text(dead.reason))
        .bind(dead.kind.label())
        .bind(i32::try_from(dead.attempts).unwrap_or(i32::MAX))
        .bind(last_error.map(|e| pg_text(&e)))
        .bind(headers)
        .bind(delivery.data.as_slice())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A refusal no retry changes: no privilege (42501), or a value or constraint the row
/// breaks (classes 22 and 23). Anything else (the database down, a failover, a
/// deadlock) may pass.
fn never_takes_it(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|error| error.code());
    code.is_some_and(|code| code == "42501" || code.starts_with("22") || code.starts_with("23"))
}

fn is_undefined_table(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|error| error.code());
    code.as_deref() == Some(UNDEFINED_TABLE)
}

/// Text PostgreSQL can hold: a NUL byte (text and jsonb refuse it) as U+FFFD. A
/// message is dead-lettered for carrying one; its row must not fail for it, on
/// every redelivery.
fn pg_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// [`pg_text`] for every string in a JSON value, keys included.
fn pg_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(pg_text(&text)),
        Value::Array(values) => Value::Array(values.into_iter().map(pg_json).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| (pg_text(&name), pg_json(value)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_bytes_become_text_postgresql_holds() {
        assert_eq!(pg_text("a\0b"), "a\u{FFFD}b");
        assert_eq!(
            pg_json(json!({"k\0": ["x\0", 1, {"n": "\0"}]})),
            json!({"k\u{FFFD}": ["x\u{FFFD}", 1, {"n": "\u{FFFD}"}]})
        );
    }
}
