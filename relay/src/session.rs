//! One broker connection's worth of publishing: claim, publish, settle, repeat.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Fuse;
use futures_util::stream::{FuturesOrdered, StreamExt};
use lapin::{Channel, Connection};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker;
use crate::error::{Error, Result};
use crate::isolate::isolate;
use crate::publish::publish_batch;
use crate::relay::CLOSE_TIMEOUT;
use crate::settle::{self, Settled, settle};
use crate::shared::Shared;
use crate::store::{self, BatchBound, OutboxRow};
use crate::validate::prepare;
use crate::wake::Doorbell;

mod sleep;

use sleep::FIRST_PARTLY_ARMED_PAUSE;

/// Published batches whose confirms are being awaited and recorded, each on a task
/// of its own so that database writes overlap the next claim and publish. They
/// complete in publish order. Dropping the set aborts what is left: those rows stay
/// unsent and the next session publishes them again.
#[derive(Default)]
struct InFlight {
    batches: FuturesOrdered<JoinHandle<Result<Settled>>>,
    aborts: VecDeque<AbortHandle>,
}

impl InFlight {
    fn push(&mut self, task: JoinHandle<Result<Settled>>) {
        self.aborts.push_back(task.abort_handle());
        self.batches.push_back(task);
    }

    fn len(&self) -> usize {
        self.batches.len()
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The oldest batch's outcome, once it is settled.
    async fn next(&mut self) -> Option<Result<Settled>> {
        let outcome = self.batches.next().await?;
        self.aborts.pop_front();
        Some(
            outcome.unwrap_or_else(|e: JoinError| {
                Err(Error::Panicked(format!("settling a batch: {e}")))
            }),
        )
    }

    /// Outcomes of batches already settled, without waiting, up to the first one
    /// that lost rows to a closed channel.
    fn ready(&mut self) -> Result<Option<Settled>> {
        while let Some(Some(outcome)) = futures_util::FutureExt::now_or_never(self.next()) {
            let settled = outcome?;
            if !settled.suspects.is_empty() {
                return Ok(Some(settled));
            }
        }
        Ok(None)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for abort in &self.aborts {
            abort.abort();
        }
    }
}

pub(crate) struct Session<'c> {
    shared: Arc<Shared>,
    connection: &'c Connection,
    channel: Channel,
    frame_max: u32,
    /// Highest seq claimed since the last scan from the start. Only a speed-up: the
    /// scan restarts from the start whenever the pipeline drains and at least every
    /// rescan interval, so rows that committed late, behind it, are still found.
    cursor: i64,
    last_rescan: Instant,
    /// The partitions of the current scan. The cursor means something only for a
    /// fixed set held without a gap: when the leases change, the scan starts over.
    partitions: Arc<[i16]>,
    /// How long to sleep when a writer's open transaction kept the doorbell from
    /// being armed on one of the partitions: its rows ring no bell. Back to the
    /// first pause whenever rows are published.
    partly_armed_pause: Duration,
    /// Completes when the broker connection is lost: watched while the relay sleeps,
    /// when nothing it sends would tell it.
    lost: Fuse<oneshot::Receiver<lapin::Error>>,
}

impl<'c> Session<'c> {
    pub(crate) async fn open(shared: Arc<Shared>, connection: &'c Connection) -> Result<Self> {
        let lost = broker::watch_loss(connection, Arc::clone(&shared.metrics));
        let channel = broker::confirm_channel(connection).await?;
        let partitions = shared.leases.owned();
        Ok(Self {
            shared,
            connection,
            channel,
            frame_max: connection.configuration().frame_max(),
            cursor: 0,
            last_rescan: Instant::now(),
            partitions,
            partly_armed_pause: FIRST_PARTLY_ARMED_PAUSE,
            lost,
        })
    }

    /// Publishes until `shutdown`, then waits (bounded) for outstanding confirms and
    /// records them. A message the broker refuses is that message's failed attempt
    /// (see `isolate`); any other broker or database error ends the session, and
    /// unconfirmed rows stay unsent for the next session to publish again.
    pub(crate) async fn run(
        mut self,
        doorbell: &mut Doorbell,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut in_flight = InFlight::default();
        loop {
            if let Some(refused) = in_flight.ready()? {
                self.isolate(&mut in_flight, Some(refused), Vec::new())
                    .await?;
                continue;
            }
            if shutdown.is_cancelled() {
                let drained = self.drain(in_flight).await;
                self.close_channel().await;
                return drained;
            }
            let shared = Arc::clone(&self.shared);
            let config = &shared.config;
            let leases_changed = *self.partitions != *shared.leases.owned();
            let rescan_due = leases_changed
                || (self.cursor > 0 && self.last_rescan.elapsed() >= config.rescan_interval);
            if in_flight.len() >= config.max_in_flight_batches
                || (rescan_due && !in_flight.is_empty())
            {
                self.settle_next(&mut in_flight, shutdown).await?;
                continue;
            }
            if rescan_due {
                self.restart_scan();
            }

            let bound = BatchBound {
                rows: config.batch_size,
                bytes: config.batch_max_bytes,
            };
            let mut rows = self.fetch(self.cursor, bound).await?;
            if rows.first().is_some_and(|row| row.attempts > 0) {
                // Refused before: published apart, so a row that is refused again
                // closes no channel but its own.
                let suspects = rows.partition_point(|row| row.attempts > 0);
                rows.truncate(suspects);
                self.cursor = rows[rows.len() - 1].seq;
                self.isolate(&mut in_flight, None, rows).await?;
                continue;
            }
            let fresh = rows.partition_point(|row| row.attempts == 0);
            rows.truncate(fresh);
            if let Some(last) = rows.last() {
                self.cursor = last.seq;
                self.partly_armed_pause = FIRST_PARTLY_ARMED_PAUSE;
                if let Some(task) = self.publish(rows).await? {
                    in_flight.push(task);
                }
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

    /// Starts a new scan from the start over the partitions held now. Only called
    /// with nothing in flight, so no row is claimed twice.
    fn restart_scan(&mut self) {
        self.cursor = 0;
        self.last_rescan = Instant::now();
        self.partitions = self.shared.leases.owned();
    }

    async fn fetch(&self, after_seq: i64, bound: BatchBound) -> Result<Vec<OutboxRow>> {
        // No partition, no row: asked anyway, the claim would walk the whole unsent
        // index looking for one (a relay standing by, or one of more than 64).
        if self.partitions.is_empty() {
            return Ok(Vec::new());
        }
        let result = store::fetch_ready(
            &self.shared.pool,
            &self.shared.config.instance_id,
            self.shared.leases.incarnation(),
            &self.partitions,
            after_seq,
            bound,
        )
        .await;
        self.shared.metrics.set_database_ok(result.is_ok());
        result
    }

    /// Publishes a batch in write order and hands its confirms to a settling task.
    /// Rows that cannot be published at all are parked as dead first (with the rest
    /// of their keys held back); `None` if no row was left to publish.
    async fn publish(&self, rows: Vec<OutboxRow>) -> Result<Option<JoinHandle<Result<Settled>>>> {
        let prepared = prepare(rows, self.frame_max);
        if !prepared.invalid.is_empty() {
            let shared = &self.shared;
            let parked: Vec<_> = prepared
                .invalid
                .into_iter()
                .map(|(row, refusal)| settle::park(shared, &row, refusal))
                .collect();
            settle::record(shared, &parked).await?;
        }
        let rows = prepared.rows;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let span = tracing::info_span!("batch", size = rows.len(), first_seq = first.seq);
        let exchange = &self.shared.config.exchange;
        let publishes = publish_batch(&self.channel, exchange, &rows, prepared.properties)
            .instrument(span.clone())
            .await;
        let shared = Arc::clone(&self.shared);
        Ok(Some(tokio::spawn(
            async move { settle(&shared, rows, publishes).await }.instrument(span),
        )))
    }

    /// The pipeline lost rows to a refused channel (`refused`), or rows refused
    /// before are to be published (`apart`): settles every batch in flight, replaces
    /// the main channel if the broker closed it, and publishes the lost rows, then
    /// `apart`, under isolation.
    async fn isolate(
        &mut self,
        in_flight: &mut InFlight,
        refused: Option<Settled>,
        apart: Vec<OutboxRow>,
    ) -> Result<()> {
        let mut lost = Vec::new();
        let mut refusal = None;
        let mut gone = None;
        let mut refused = refused;
        loop {
            let settled = match refused.take() {
                Some(settled) => settled,
                None => match in_flight.next().await {
                    Some(outcome) => outcome?,
                    None => break,
                },
            };
            refusal = refusal.or(settled.refusal);
            gone = gone.or(settled.gone);
            lost.extend(settled.suspects);
        }
        if !lost.is_empty() {
            let Some(refusal) = refusal else {
                return Err(gone.map_or(Error::Unconfirmed, Error::Broker));
            };
            tracing::warn!(error = %refusal.text, unconfirmed = lost.len(),
                "the broker refused a message and closed the channel; finding it");
            self.channel = broker::confirm_channel(self.connection).await?;
        }
        isolate(&self.shared, self.connection, lost, apart).await
    }

    async fn drain(&mut self, mut in_flight: InFlight) -> Result<()> {
        let outstanding = in_flight.len();
        let drained = tokio::time::timeout(self.shared.config.shutdown_timeout, async {
            while let Some(outcome) = in_flight.next().await {
                let settled = outcome?;
                if !settled.suspects.is_empty() {
                    self.isolate(&mut in_flight, Some(settled), Vec::new())
                        .await?;
                }
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

    /// Closes the channel and waits (bounded) for the broker's close-ok. Left to be
    /// dropped while the connection closes, the channel's close-ok would arrive on a
    /// connection already closing, which lapin logs as an ERROR on every clean stop.
    async fn close_channel(&self) {
        let closing = self.channel.close(200, "outbox-relay stopping".into());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }

    /// Waits for the oldest batch in flight (or shutdown), and isolates the rows it
    /// lost to a refusal.
    async fn settle_next(
        &mut self,
        in_flight: &mut InFlight,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let settled = tokio::select! {
            Some(outcome) = in_flight.next() => outcome?,
            () = shutdown.cancelled() => return Ok(()),
        };
        if settled.suspects.is_empty() {
            return Ok(());
        }
        self.isolate(in_flight, Some(settled), Vec::new()).await
    }
}

/// Is there anything to publish? One row, whatever its size.
const PEEK: BatchBound = BatchBound { rows: 1, bytes: 0 };
