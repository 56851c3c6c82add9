//! Reading dead letters: a list filtered by queue, saga or consumer, one whole, and
//! how many wait in each queue.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::ser::SerializeMap;
use sqlx::PgPool;

use super::DeadLetterState;
use crate::error::Result;

/// A consumer's dead letter, as its row in `inbox_dead_letter` says.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The row's id: what `send-back` takes.
    pub id: i64,
    /// The inbox consumer that gave up on the message.
    pub consumer: String,
    /// The queue it came from; its copy is in `{queue}.dead`.
    pub queue: String,
    /// The AMQP `message_id` (the outbox row's id when the relay sent it).
    pub message_id: Option<String>,
    /// The saga it belongs to, if the message named one.
    pub saga_id: Option<String>,
    /// Its step, if the message named one.
    pub step: Option<String>,
    /// Why it was given up (its copy's `x-dead-reason`).
    pub reason: String,
    /// The class of that reason: the label of `inbox_dead_lettered_total{reason}`.
    pub kind: String,
    /// Handler runs that failed.
    pub attempts: i32,
    /// The handler's last error, when a handler ran.
    pub last_error: Option<String>,
    /// The message's headers, as JSON.
    pub headers: serde_json::Value,
    /// The message's body: `payload` (JSON) or `body_text` in its serialized form.
    #[serde(flatten)]
    pub body: Body,
    /// When the consumer gave up on it.
    pub dead_at: DateTime<Utc>,
    /// Whether it waits in `{queue}.dead` or was sent back.
    #[sqlx(try_from = "String")]
    pub state: DeadLetterState,
    /// When it was sent back.
    pub sent_back_at: Option<DateTime<Utc>>,
    /// Why it was sent back, as the operator said.
    pub sent_back_reason: Option<String>,
}

/// A message's body, as the consumer received it.
///
/// Serialized for people: as `payload`, the JSON itself, when it is JSON (what the
/// relay sends); else as `body_text`, the bytes read as UTF-8 with what is not
/// replaced by U+FFFD. Not base64: a person reads it in a terminal or a page, and a
/// body that is not JSON is most often text from a producer that is not the relay.
/// The exact bytes are [`Body::bytes`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::Type)]
#[sqlx(transparent)]
pub struct Body(Vec<u8>);

impl Body {
    /// The bytes, exactly.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The body as JSON, if it is JSON.
    pub fn payload(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.0).ok()
    }

    /// The body as text; what is not UTF-8 as U+FFFD.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl serde::Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self.payload() {
            Some(payload) => map.serialize_entry("payload", &payload)?,
            None => map.serialize_entry("body_text", &self.text())?,
        }
        map.end()
    }
}

/// Which dead letters [`list`] returns. The default: those waiting in `.dead`, of
/// every queue, saga and consumer, at most 100.
#[derive(Debug, Clone)]
pub struct DeadLetterFilter {
    /// Only those of this queue.
    pub queue: Option<String>,
    /// Only those of this saga.
    pub saga_id: Option<String>,
    /// Only those of this consumer.
    pub consumer: Option<String>,
    /// Those already sent back too.
    pub include_sent_back: bool,
    /// At most this many.
    pub limit: i64,
}

impl Default for DeadLetterFilter {
    fn default() -> Self {
        Self {
            queue: None,
            saga_id: None,
            consumer: None,
            include_sent_back: false,
            limit: 100,
        }
    }
}

/// `SELECT` of every column of [`DeadLetter`], then `$rest` (a literal: sqlx takes
/// only static SQL).
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, consumer, queue, message_id, saga_id, step, reason, kind, attempts,
                    last_error, headers, body, dead_at, state, sent_back_at, sent_back_reason
             FROM inbox_dead_letter ",
            $rest
        )
    };
}

/// Dead letters as `filter` asks, newest first.
pub async fn list(pool: &PgPool, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
    let letters = sqlx::query_as(select!(
        "WHERE ($1::text IS NULL OR queue = $1)
           AND ($2::text IS NULL OR saga_id = $2)
           AND ($3::text IS NULL OR consumer = $3)
           AND ($4 OR state = $5)
         ORDER BY id DESC LIMIT $6"
    ))
    .bind(&filter.queue)
    .bind(&filter.saga_id)
    .bind(&filter.consumer)
    .bind(filter.include_sent_back)
    .bind(DeadLetterState::Dead.as_str())
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    Ok(letters)
}

/// One dead letter, whatever its state.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<DeadLetter>> {
    let letter = sqlx::query_as(select!("WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(letter)
}

/// How many dead letters wait in each queue's `.dead` (state `dead`), by queue name.
pub async fn count_waiting(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    let counts = sqlx::query_as(
        "SELECT queue, count(*) FROM inbox_dead_letter WHERE state = $1
         GROUP BY queue ORDER BY queue",
    )
    .bind(DeadLetterState::Dead.as_str())
    .fetch_all(pool)
    .await?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_serializes_as_its_json_or_as_text() {
        let json = serde_json::to_value(Body(br#"{"n": 1}"#.to_vec())).expect("serializable");
        assert_eq!(json, serde_json::json!({"payload": {"n": 1}}));
        let text = serde_json::to_value(Body(b"not json \xff".to_vec())).expect("serializable");
        assert_eq!(text, serde_json::json!({"body_text": "not json \u{FFFD}"}));
    }
}
