//! Recording what the broker said about a published batch.

use std::time::{Duration, Instant};

use lapin::{Confirmation, PublisherConfirm};

use crate::error::{Error, Result};
use crate::metrics::FailureReason;
use crate::relay::Shared;
use crate::retry::retry_delay;
use crate::store::{self, Failure, OutboxRow};

/// Waits for a batch's confirms (at most the confirm timeout), then records them:
/// acked rows are sent; nacked and returned rows get a retry time or are parked as
/// dead. A confirm that failed or never came ends the session with an error; its row
/// stays unsent and is published again by the next session.
pub(crate) async fn settle(
    shared: &Shared,
    rows: Vec<OutboxRow>,
    confirms: Vec<PublisherConfirm>,
) -> Result<()> {
    let published_at = Instant::now();
    let timeout = shared.config.confirm_timeout;
    let Ok(confirms) =
        tokio::time::timeout(timeout, futures_util::future::join_all(confirms)).await
    else {
        shared
            .metrics
            .failed(FailureReason::ConfirmTimeout, rows.len() as u64);
        return Err(Error::ConfirmTimeout(timeout));
    };
    let latency = published_at.elapsed();

    let mut sent = Vec::with_capacity(rows.len());
    let mut failures = Vec::new();
    let mut lost = None;
    for (row, confirm) in rows.iter().zip(confirms) {
        let refusal = match confirm {
            Ok(Confirmation::Ack(None)) => {
                sent.push(row.id);
                continue;
            }
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => (
                FailureReason::Unroutable,
                format!(
                    "unroutable: {} {}",
                    returned.reply_code,
                    returned.reply_text.as_str()
                ),
            ),
            Ok(Confirmation::Nack(None)) => {
                (FailureReason::Nack, "nacked by the broker".to_owned())
            }
            Ok(Confirmation::NotRequested) => {
                lost.get_or_insert(Error::Unconfirmed);
                continue;
            }
            Err(error) => {
                lost.get_or_insert(Error::Broker(error));
                continue;
            }
        };
        failures.push(failure(shared, row, refusal));
    }

    let keep = shared.config.retention.is_some();
    let recorded = store::mark_sent(&shared.pool, &sent, keep).await;
    shared.metrics.set_database_ok(recorded.is_ok());
    recorded?;
    store::record_failures(&shared.pool, &failures).await?;
    shared
        .metrics
        .batch_settled(rows.len(), sent.len(), latency);
    shared.metrics.parked_dead(
        failures
            .iter()
            .filter(|f| f.retry_after_ms.is_none())
            .count() as u64,
    );
    if let Some(error) = lost {
        let unconfirmed = rows.len() - sent.len() - failures.len();
        shared
            .metrics
            .failed(FailureReason::Connection, unconfirmed as u64);
        return Err(error);
    }
    Ok(())
}

fn failure(shared: &Shared, row: &OutboxRow, (reason, error): (FailureReason, String)) -> Failure {
    let config = &shared.config;
    shared.metrics.failed(reason, 1);
    let attempts = row.attempts + 1;
    let dead = attempts as u32 >= config.max_attempts;
    let retry_after_ms = (!dead).then(|| {
        delay_millis(retry_delay(
            attempts as u32,
            config.retry_base,
            config.retry_max,
        ))
    });
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

fn delay_millis(delay: Duration) -> i64 {
    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
}
