use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::Result;

/// Where an outbox row is in its life. Sent rows are deleted unless the relay
/// keeps them for a retention period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[non_exhaustive]
pub enum State {
    /// Waiting to be published.
    Pending,
    /// The broker refused it (nack or unroutable); it is waiting for its next attempt.
    /// Later rows of its ordering key wait behind it.
    Retry,
    /// Out of attempts. Later rows of its ordering key wait until an operator retries it.
    Dead,
    /// Confirmed by the broker, kept for the configured retention.
    Sent,
}

impl State {
    /// The value stored in `outbox.state`; bind it rather than writing the literal.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Retry => "retry",
            State::Dead => "dead",
            State::Sent => "sent",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn a_state_is_stored_as_its_lowercase_name() {
        for state in [State::Pending, State::Retry, State::Dead, State::Sent] {
            assert_eq!(state.as_str(), format!("{state:?}").to_lowercase());
            assert_eq!(state.to_string(), state.as_str());
        }
    }
}

/// An outbox row as stored, with the columns the relay manages.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
#[non_exhaustive]
pub struct StoredMessage {
    /// Message id, published as the AMQP `message_id`.
    pub id: Uuid,
    /// Correlation id of the business transaction.
    pub saga_id: String,
    /// Saga step or event name.
    pub step: String,
    /// AMQP routing key.
    pub routing_key: String,
    /// The message body.
    pub payload: serde_json::Value,
    /// Target exchange; `None` means the relay's configured exchange.
    pub exchange: Option<String>,
    /// Extra AMQP headers.
    pub headers: Json<BTreeMap<String, serde_json::Value>>,
    /// Rows with the same key are published in write order.
    pub ordering_key: String,
    /// Not published before this time.
    pub available_at: DateTime<Utc>,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
    /// Write order, assigned by the database.
    pub seq: i64,
    /// Lifecycle state.
    pub state: State,
    /// Failed publish attempts (nacks and returns).
    pub attempts: i32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the broker confirmed it, for kept sent rows.
    pub sent_at: Option<DateTime<Utc>>,
}

/// Every outbox row of one business transaction, in write order: where saga
/// `saga_id` stands on the sending side.
pub async fn messages_for_saga<'c, E: PgExecutor<'c>>(
    executor: E,
    saga_id: &str,
) -> Result<Vec<StoredMessage>> {
    let rows = sqlx::query_as(
        "SELECT id, saga_id, step, routing_key, payload, exchange, headers, ordering_key,
                available_at, created_at, seq, state, attempts, last_error, sent_at
         FROM outbox WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(saga_id)
    .fetch_all(executor)
    .await?;
    Ok(rows)
}
