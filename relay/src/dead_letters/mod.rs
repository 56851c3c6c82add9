//! Consumers' dead letters, as operators see them: the rows each inbox consumer
//! writes to `inbox_dead_letter` in its database before it moves a message to
//! `{queue}.dead` (see `txoutbox-inbox`), and the way back.
//!
//! [`list`], [`get`] and [`count_waiting`] read the rows. [`send_back`] moves messages
//! from `{queue}.dead` to `{queue}` with a fresh set of attempts, with nothing lost on
//! the way: each copy is confirmed by the broker before its dead letter is acked, and
//! each move is recorded (the row marked `sent_back`, an [`audit`](crate::audit)
//! entry) with the reason the operator gave.
//!
//! ```rust,no_run
//! use txoutbox_relay::dead_letters::{self, DeadLetterFilter, SendBack};
//!
//! # async fn example(pool: sqlx::PgPool, amqp_url: &str) -> txoutbox_relay::Result<()> {
//! let filter = DeadLetterFilter { saga_id: Some("order-42".into()), ..Default::default() };
//! for letter in dead_letters::list(&pool, &filter).await? {
//!     println!("{} {} {}", letter.id, letter.queue, letter.reason);
//!     let why = "the stock service is fixed";
//!     dead_letters::send_back(&pool, amqp_url, SendBack::One(letter.id), why, "cli").await?;
//! }
//! # Ok(())
//! # }
//! ```

mod read;
mod scan;
mod send_back;

pub use read::{Body, DeadLetter, DeadLetterFilter, count_waiting, get, list};
pub use send_back::{MovedLetter, SendBack, SendBackReport, send_back};

/// Where a dead letter is, as `inbox_dead_letter.state` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterState {
    /// In `{queue}.dead`, as far as this row knows.
    Dead,
    /// Sent back to its queue (`sent_back_at`, `sent_back_reason` say when and why).
    SentBack,
}

impl DeadLetterState {
    /// The value stored in `inbox_dead_letter.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterState::Dead => "dead",
            DeadLetterState::SentBack => "sent_back",
        }
    }
}

/// A state the table holds that this release does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown dead letter state {0:?}")]
pub struct UnknownState(String);

impl TryFrom<String> for DeadLetterState {
    type Error = UnknownState;

    fn try_from(text: String) -> Result<Self, UnknownState> {
        [DeadLetterState::Dead, DeadLetterState::SentBack]
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or(UnknownState(text))
    }
}

/// Why a dead letter was not sent back. That one stays in `{queue}.dead`, its row
/// unchanged; with [`SendBack::AllOf`], those moved before it stay moved and recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No row has this id.
    #[error("no dead letter with id {0}")]
    NoSuchDeadLetter(i64),
    /// The row says its message was sent back already.
    #[error("dead letter {0} was already sent back")]
    AlreadySentBack(i64),
    /// The message carried no `message_id`, so it cannot be told apart in the queue.
    #[error(
        "dead letter {id} has no message id to find it by in {queue}.dead; send back all of {queue} instead"
    )]
    NoMessageId {
        /// The dead letter's id.
        id: i64,
        /// Its queue.
        queue: String,
    },
    /// The row's message is not in `{queue}.dead`.
    #[error(
        "dead letter {id} (message {message_id}) is not in {queue}.dead: already sent back or purged"
    )]
    NotInQueue {
        /// The dead letter's id.
        id: i64,
        /// Its message's id.
        message_id: String,
        /// Its queue.
        queue: String,
    },
    /// The broker did not take the copy back into the queue (a nack, or no such
    /// queue); the dead letter stays in `{queue}.dead`.
    #[error("the broker did not take the message back into {queue}: {why}")]
    NotTaken {
        /// The queue it was sent back to.
        queue: String,
        /// What the broker answered.
        why: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reads_back_as_stored() {
        for state in [DeadLetterState::Dead, DeadLetterState::SentBack] {
            let read = DeadLetterState::try_from(state.as_str().to_owned()).expect("known");
            assert_eq!(read, state);
            let json = serde_json::to_value(state).expect("serializable");
            assert_eq!(json, state.as_str());
        }
        assert!(DeadLetterState::try_from("purged".to_owned()).is_err());
    }
}
