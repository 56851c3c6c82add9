//! Recording what the broker said about a published batch.

use std::time::{Duration, Instant};

use lapin::{Confirmation, PublisherConfirm};

use crate::error::{Error, Result};
use crate::metrics::FailureReason;
use crate::refusal::{Refusal, is_channel_gone};
use crate::retry::retry_delay;
use crate::shared::Shared;
use crate::store::{self, Failure, OutboxRow};

/// What became of a batch once its confirms were recorded.
#[derive(Default)]
pub(crate) struct Settled {
    /// Rows left unconfirmed because the broker closed the channel: one of them was
    /// refused (or the close came from an earlier batch). Not charged an attempt;
    /// they are published again under isolation.
    pub(crate) suspects: Vec<OutboxRow>,
    /// Why the broker closed the channel, when it said so in this batch.
    pub(crate) refusal: Option<Refusal>,
    /// Why a publish failed when the channel was already gone and nothing here was
    /// refused: the broker's reason, if any, came with another batch.
    pub(crate) gone: Option<lapin::Error>,
    /// Ordering keys of rows charged an attempt (nacked, returned): the rest of such
    /// a key must not be published after them.
    pub(crate) charged_keys: Vec<String>,
}

/// Waits for a batch's confirms (at most the confirm timeout), then records them:
/// acked rows are sent; nacked and returned rows get a retry time or are parked as
/// dead; rows whose channel the broker closed come back as suspects. A confirm that
/// failed with the connection, or never came, ends the session with an error; its
/// row stays unsent and is published again by the next session, with no attempt charged.
pub(crate) async fn settle(
    shared: &Shared,
    rows: Vec<OutboxRow>,
    publishes: Vec<lapin::Result<PublisherConfirm>>,
) -> Result<Settled> {
    let published_at = Instant::now();
    let timeout = shared.config.confirm_timeout;
    // One after the other: the broker confirms in publish order (often many at once),
    // so waiting for each in turn wakes this task about once per confirm frame, and
    // costs no task per row as joining them would. The outcomes are the same.
    let confirms = async {
        let mut confirms = Vec::with_capacity(publishes.len());
        for publish in publishes {
            confirms.push(match publish {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            });
        }
        confirms
    };
    let Ok(confirms) = tokio::time::timeout(timeout, confirms).await else {
        shared
            .metrics
            .failed(FailureReason::ConfirmTimeout, rows.len() as u64);
        return Err(Error::ConfirmTimeout(timeout));
    };
    let latency = published_at.elapsed();

    let mut settled = Settled::default();
    let mut sent = Vec::with_capacity(rows.len());
    let mut failures = Vec::new();
    let mut lost = None;
    let total = rows.len();
    for (row, confirm) in rows.into_iter().zip(confirms) {
        let refusal = match confirm {
            Ok(Confirmation::Ack(None)) => {
                sent.push(row.id);
                continue;
            }
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => Refusal {
                reason: FailureReason::Unroutable,
                text: format!(
                    "unroutable: {} {}",
                    returned.reply_code,
                    returned.reply_text.as_str()
                ),
            },
            Ok(Confirmation::Nack(None)) => Refusal {
                reason: FailureReason::Nack,
                text: "nacked by the broker".to_owned(),
            },
            Ok(Confirmation::NotRequested) => {
                lost.get_or_insert(Error::Unconfirmed);
                continue;
            }
            Err(error) => {
                if let Some(refusal) = Refusal::of(&error) {
                    settled.refusal.get_or_insert(refusal);
                    settled.suspects.push(row);
                } else if is_channel_gone(&error) {
                    settled.gone.get_or_insert(error);
                    settled.suspects.push(row);
                } else {
                    lost.get_or_insert(Error::Broker(error));
                }
                continue;
            }
        };
        settled.charged_keys.push(row.ordering_key.clone());
        failures.push(charge(shared, &row, refusal));
    }

    let keep = shared.config.retention.is_some();
    let recorded = store::mark_sent(&shared.pool, &sent, keep).await;
    shared.metrics.set_database_ok(recorded.is_ok());
    recorded?;
    record(shared, &failures).await?;
    shared.metrics.batch_settled(total, sent.len(), latency);
    if let Some(error) = lost {
        let unconfirmed = total - sent.len() - failures.len();
        shared
            .metrics
            .failed(FailureReason::Connection, unconfirmed as u64);
        return Err(error);
    }
    Ok(settled)
}

/// A failed attempt of `row`: the next attempt's time, or dead once it has had
/// `max_attempts`. Counts it by reason and logs it.
pub(crate) fn charge(shared: &Shared, row: &OutboxRow, refusal: Refusal) -> Failure {
    let attempts = row.attempts.saturating_add(1);
    let dead = u32::try_from(attempts).unwrap_or(u32::MAX) >= shared.config.max_attempts;
    fail(shared, row, refusal, dead)
}

/// `row` can never be published as it is: dead at once, whatever its attempts.
pub(crate) fn park(shared: &Shared, row: &OutboxRow, refusal: Refusal) -> Failure {
    fail(shared, row, refusal, true)
}

fn fail(shared: &Shared, row: &OutboxRow, refusal: Refusal, dead: bool) -> Failure {
    let config = &shared.config;
    shared.metrics.failed(refusal.reason, 1);
    let attempts = row.attempts.saturating_add(1);
    let retry_after_ms = (!dead).then(|| {
        delay_millis(retry_delay(
            u32::try_from(attempts).unwrap_or(u32::MAX),
            config.retry_base,
            config.retry_max,
        ))
    });
    let error = refusal.text;
    if dead {
        tracing::error!(saga_id = %row.saga_id, message_id = %row.id, step = %row.step, attempts, %error,
            "parked as dead; later messages of its ordering key wait for `outbox-relay dead retry`");
    } else {
        tracing::warn!(saga_id = %row.saga_id, message_id = %row.id, step = %row.step, attempts, %error,
            retry_after_ms, "publish refused; will retry");
    }
    Failure {
        id: row.id,
        attempts,
        error,
        retry_after_ms,
    }
}

/// Records failed attempts, and counts the rows they park as dead.
pub(crate) async fn record(shared: &Shared, failures: &[Failure]) -> Result<()> {
    store::record_failures(&shared.pool, failures).await?;
    let dead = failures
        .iter()
        .filter(|f| f.retry_after_ms.is_none())
        .count();
    shared.metrics.parked_dead(dead as u64);
    Ok(())
}

fn delay_millis(delay: Duration) -> i64 {
    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
}
