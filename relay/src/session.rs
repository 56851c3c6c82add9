//! One broker connection's worth of publishing: claim, publish, settle, repeat.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use lapin::{Channel, Confirmation};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::metrics::FailureReason;
use crate::publish::publish_batch;
use crate::relay::Shared;
use crate::retry::retry_delay;
use crate::store::{self, Failure, OutboxRow};
use crate::wake::Doorbell;

/// Quick looks for new rows before an idle relay arms the doorbell, so under steady
/// load it keeps polling instead of flipping `listening` for every message.
const LINGER: [Duration; 4] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
];

/// A published batch, resolved once every confirm is in (or the timeout passed).
struct Settled {
    rows: Vec<OutboxRow>,
    confirms: Result<Vec<lapin::Result<Confirmation>>, tokio::time::error::Elapsed>,
    published_at: Instant,
    span: tracing::Span,
}

type InFlight = FuturesOrdered<Pin<Box<dyn Future<Output = Settled> + Send>>>;

pub(crate) struct Session<'a> {
    shared: &'a Shared,
    channel: Channel,
    /// Highest seq claimed since the last scan from the start. Only a speed-up: the
    /// scan restarts from the start whenever the pipeline drains and at least every
    /// rescan interval, so rows that committed late, behind it, are still found.
    cursor: i64,
    last_rescan: Instant,
}

impl<'a> Session<'a> {
    pub(crate) fn new(shared: &'a Shared, channel: Channel) -> Self {
        Self {
            shared,
            channel,
            cursor: 0,
            last_rescan: Instant::now(),
        }
    }

    /// Publishes until `shutdown`, then waits (bounded) for outstanding confirms and
    /// records them. Any broker or database error ends the session; unconfirmed rows
    /// stay unsent and the next session publishes them again.
    pub(crate) async fn run(
        mut self,
        doorbell: &mut Doorbell,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let config = &self.shared.config;
        let mut in_flight = InFlight::new();
        loop {
            while let Some(Some(settled)) = futures_util::FutureExt::now_or_never(in_flight.next())
            {
                self.settle(settled).await?;
            }
            if shutdown.is_cancelled() {
                return self.drain(in_flight).await;
            }
            let rescan_due =
                self.cursor > 0 && self.last_rescan.elapsed() >= config.rescan_interval;
            if in_flight.len() >= config.max_in_flight_batches
                || (rescan_due && !in_flight.is_empty())
            {
                self.settle_next(&mut in_flight, shutdown).await?;
                continue;
            }
            if rescan_due {
                self.restart_scan();
            }

            let rows = self.fetch(self.cursor, config.batch_size).await?;
            if let Some(last) = rows.last() {
                self.cursor = last.seq;
                in_flight.push_back(self.publish(rows).await?);
                continue;
            }
            if !in_flight.is_empty() {
                self.settle_next(&mut in_flight, shutdown).await?;
            } else if self.cursor > 0 {
                self.restart_scan();
            } else {
                self.wait_for_work(doorbell, shutdown).await?;
            }
        }
    }

    fn restart_scan(&mut self) {
        self.cursor = 0;
        self.last_rescan = Instant::now();
    }

    async fn fetch(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>> {
        let result = store::fetch_ready(
            &self.shared.pool,
            &self.shared.config.instance_id,
            after_seq,
            limit,
        )
        .await;
        self.shared.metrics.set_database_ok(result.is_ok());
        result
    }

    async fn publish(
        &self,
        rows: Vec<OutboxRow>,
    ) -> Result<Pin<Box<dyn Future<Output = Settled> + Send>>> {
        let span = tracing::info_span!("batch", size = rows.len(), first_seq = rows[0].seq);
        let published_at = Instant::now();
        let confirms = publish_batch(&self.channel, &self.shared.config.exchange, &rows)
            .instrument(span.clone())
            .await?;
        let timeout = self.shared.config.confirm_timeout;
        Ok(Box::pin(async move {
            let confirms =
                tokio::time::timeout(timeout, futures_util::future::join_all(confirms)).await;
            Settled {
                rows,
                confirms,
                published_at,
                span,
            }
        }))
    }

    async fn settle_next(
        &self,
        in_flight: &mut InFlight,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        tokio::select! {
            Some(settled) = in_flight.next() => self.settle(settled).await,
            () = shutdown.cancelled() => Ok(()),
        }
    }

    /// Records what the broker said about a batch: acked rows are sent; nacked and
    /// returned rows are retried later or parked dead; a lost confirm ends the session.
    async fn settle(&self, settled: Settled) -> Result<()> {
        let Settled {
            rows,
            confirms,
            published_at,
            span,
        } = settled;
        let _entered = span.enter();
        let config = &self.shared.config;
        let metrics = &self.shared.metrics;
        let Ok(confirms) = confirms else {
            metrics.failed(FailureReason::ConfirmTimeout, rows.len() as u64);
            return Err(Error::ConfirmTimeout(config.confirm_timeout));
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
                    lost.get_or_insert_with(|| {
                        Error::NotFound("a publish was not confirmed".into())
                    });
                    continue;
                }
                Err(error) => {
                    lost.get_or_insert(Error::Broker(error));
                    continue;
                }
            };
            failures.push(self.failure(row, refusal));
        }

        let keep = config.retention.is_some();
        let recorded = store::mark_sent(&self.shared.pool, &sent, keep).await;
        self.shared.metrics.set_database_ok(recorded.is_ok());
        recorded?;
        store::record_failures(&self.shared.pool, &failures).await?;
        metrics.batch_settled(rows.len(), sent.len(), latency);
        metrics.parked_dead(
            failures
                .iter()
                .filter(|f| f.retry_after_ms.is_none())
                .count() as u64,
        );
        if let Some(error) = lost {
            metrics.failed(
                FailureReason::Connection,
                (rows.len() - sent.len() - failures.len()) as u64,
            );
            return Err(error);
        }
        Ok(())
    }

    fn failure(&self, row: &OutboxRow, (reason, error): (FailureReason, String)) -> Failure {
        let config = &self.shared.config;
        self.shared.metrics.failed(reason, 1);
        let attempts = row.attempts + 1;
        let dead = attempts as u32 >= config.max_attempts;
        let retry_after_ms = (!dead).then(|| {
            retry_delay(attempts as u32, config.retry_base, config.retry_max).as_millis() as i64
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

    async fn drain(&self, mut in_flight: InFlight) -> Result<()> {
        let outstanding = in_flight.len();
        let drained = tokio::time::timeout(self.shared.config.shutdown_timeout, async {
            while let Some(settled) = in_flight.next().await {
                self.settle(settled).await?;
            }
            Ok::<_, Error>(())
        })
        .await;
        match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    outstanding,
                    "shutdown timeout: unconfirmed rows stay unsent and will be published again"
                );
                Ok(())
            }
        }
    }

    /// Idle: look again a few times in quick succession, then ask writers to ring
    /// (`listening`) and wait for a ring or the fallback poll.
    async fn wait_for_work(
        &self,
        doorbell: &mut Doorbell,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        for pause in LINGER {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            if !self.fetch(0, 1).await?.is_empty() {
                return Ok(());
            }
        }
        let leases = &self.shared.leases;
        leases.set_listening(true).await?;
        // A row committed between the last look and arming rang no bell: look once more.
        if self.fetch(0, 1).await?.is_empty() {
            doorbell
                .wait(self.shared.config.poll_interval, shutdown)
                .await;
        }
        leases.set_listening(false).await
    }
}
