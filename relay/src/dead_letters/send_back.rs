//! Sending dead letters back to the queue they came from, and recording each move:
//! the row `sent_back` with the operator's reason, and an audit entry.
//!
//! Each message moves in a transaction of its own. Its row is marked first, so that
//! a consumer dead-lettering the same message again meanwhile waits for this
//! transaction and then writes a row of its own; then the copy is published and
//! confirmed, the dead letter acked, the audit entry written, and the transaction
//! committed. A failure before the confirm leaves the message in `.dead` and its row
//! as it was; one after it (the ack, the commit) can leave a copy in both queues, and
//! the consumer's inbox takes the second as a duplicate.

use lapin::message::Delivery;
use sqlx::PgPool;
use txoutbox::wire::SAGA_ID_HEADER;

use super::scan::DeadQueue;
use super::{DeadLetterState, Refusal, get};
use crate::audit::{self, Action};
use crate::error::Result;

/// What to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendBack {
    /// The dead letter with this id (its message found in `.dead` by its message id).
    One(i64),
    /// Every message in `{queue}.dead`, with a row or not.
    AllOf {
        /// The queue whose `.dead` is emptied into it.
        queue: String,
    },
}

/// What [`send_back`] did.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct SendBackReport {
    /// The queue the messages went back to.
    pub queue: String,
    /// Each message moved, in the order it moved.
    pub moved: Vec<MovedLetter>,
    /// Messages of `.dead` looked at.
    pub scanned: usize,
    /// More messages waited in `.dead` than one scan looks at (10,000): run it again
    /// for the rest.
    pub bound_reached: bool,
}

/// A message moved back to its queue.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct MovedLetter {
    /// Its dead letter's row, if it had one (not for messages the broker
    /// dead-lettered itself, or moved before the table existed).
    pub dead_letter_id: Option<i64>,
    /// Its AMQP `message_id`.
    pub message_id: Option<String>,
    /// Its saga.
    pub saga_id: Option<String>,
}

/// Moves `target` from `{queue}.dead` back to `{queue}` through the broker at
/// `amqp_url`, with a fresh set of attempts (`x-attempts`, `x-dead-reason` and
/// `x-last-error` removed), and records each move with `reason` and `actor`
/// (`console` or `cli`). An empty reason is refused before anything happens.
/// Nothing is lost: a dead letter is acked only once its copy is confirmed.
pub async fn send_back(
    pool: &PgPool,
    amqp_url: &str,
    target: SendBack,
    reason: &str,
    actor: &str,
) -> Result<SendBackReport> {
    let reason = audit::given(reason)?;
    let (queue, wanted) = match target {
        SendBack::One(id) => {
            let letter = get(pool, id).await?.ok_or(Refusal::NoSuchDeadLetter(id))?;
            if letter.state == DeadLetterState::SentBack {
                return Err(Refusal::AlreadySentBack(id).into());
            }
            let Some(message_id) = letter.message_id else {
                let queue = letter.queue;
                return Err(Refusal::NoMessageId { id, queue }.into());
            };
            (letter.queue, Wanted::One { id, message_id })
        }
        SendBack::AllOf { queue } => (queue, Wanted::All),
    };
    let mut dead = DeadQueue::open(amqp_url, &queue).await?;
    let moving = Moving {
        pool,
        reason,
        actor,
    };
    let moved = moving.scan(&mut dead, &wanted).await;
    let report = moved.map(|moved| SendBackReport {
        queue: dead.queue().to_owned(),
        moved,
        scanned: dead.scanned(),
        bound_reached: dead.bound_reached,
    });
    let released = dead.close().await;
    let report = report?;
    released?;
    if let Wanted::One { id, message_id } = wanted
        && report.moved.is_empty()
    {
        return Err(Refusal::NotInQueue {
            id,
            message_id,
            queue,
        }
        .into());
    }
    Ok(report)
}

/// Which messages of `.dead` a scan moves.
enum Wanted {
    /// The one with this message id, for this row.
    One { id: i64, message_id: String },
    /// Every one.
    All,
}

/// What each move is recorded with.
struct Moving<'a> {
    pool: &'a PgPool,
    reason: &'a str,
    actor: &'a str,
}

impl Moving<'_> {
    /// Looks at what `.dead` held when the scan began and moves what is `wanted`.
    async fn scan(&self, dead: &mut DeadQueue, wanted: &Wanted) -> Result<Vec<MovedLetter>> {
        let mut moved = Vec::new();
        while let Some(delivery) = dead.next().await? {
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string());
            match wanted {
                Wanted::One {
                    id,
                    message_id: sought,
                } if message_id.as_ref() == Some(sought) => {
                    moved.push(self.move_one(dead, &delivery, Some(*id)).await?);
                    break;
                }
                Wanted::One { .. } => dead.pass_over(&delivery),
                Wanted::All => moved.push(self.move_one(dead, &delivery, None).await?),
            }
        }
        Ok(moved)
    }

    /// Moves one message and records it, in one transaction (see the module's
    /// documentation). `row` is its dead letter's id when known; otherwise its row
    /// (if it has one waiting) is found by its queue and message id.
    async fn move_one(
        &self,
        dead: &mut DeadQueue,
        delivery: &Delivery,
        row: Option<i64>,
    ) -> Result<MovedLetter> {
        let props = &delivery.properties;
        let message_id = props.message_id().as_ref().map(|id| id.to_string());
        let mut tx = self.pool.begin().await?;
        let marked: Option<(i64, Option<String>)> = sqlx::query_as(
            "UPDATE inbox_dead_letter
             SET state = $1, sent_back_at = now(), sent_back_reason = $2
             WHERE state = $3 AND CASE WHEN $4::bigint IS NOT NULL THEN id = $4
                                       ELSE queue = $5 AND message_id = $6 END
             RETURNING id, saga_id",
        )
        .bind(DeadLetterState::SentBack.as_str())
        .bind(self.reason)
        .bind(DeadLetterState::Dead.as_str())
        .bind(row)
        .bind(dead.queue())
        .bind(&message_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let (Some(id), None) = (row, &marked) {
            // Sent back by someone else since it was read.
            dead.pass_over(delivery);
            return Err(Refusal::AlreadySentBack(id).into());
        }
        dead.publish_back(delivery).await?;
        dead.ack(delivery).await?;
        let (dead_letter_id, saga_id) = match marked {
            Some((id, saga_id)) => (Some(id), saga_id),
            None => (None, None),
        };
        let saga_id = saga_id.or_else(|| saga_of(delivery));
        let target = dead_letter_id.map_or_else(|| dead.queue().to_owned(), |id| id.to_string());
        audit::record(
            &mut *tx,
            Action::DeadLetterSendBack,
            &target,
            saga_id.as_deref(),
            self.reason,
            self.actor,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(queue = %dead.queue(), ?dead_letter_id, ?message_id, "dead letter sent back");
        Ok(MovedLetter {
            dead_letter_id,
            message_id,
            saga_id,
        })
    }
}

/// The saga a message names: its `correlation_id`, else its `saga_id` header.
fn saga_of(delivery: &Delivery) -> Option<String> {
    let props = &delivery.properties;
    let from_header = || match props.headers().as_ref()?.inner().get(SAGA_ID_HEADER)? {
        lapin::types::AMQPValue::LongString(text) => Some(text.to_string()),
        lapin::types::AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    };
    props
        .correlation_id()
        .as_ref()
        .map(|id| id.to_string())
        .or_else(from_header)
        .filter(|id| !id.is_empty())
}
