//! One broker connection's worth of publishing: claim, publish, settle, repeat.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use lapin::Channel;
use tokio::task::{AbortHandle, JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::publish::publish_batch;
use crate::relay::Shared;
use crate::settle::settle;
use crate::store::{self, OutboxRow};
use crate::wake::Doorbell;

/// Quick looks for new rows before an idle relay arms the doorbell, so under steady
/// load it keeps polling instead of flipping `listening` for every message.
const LINGER: [Duration; 4] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
];

/// Published batches whose confirms are being awaited and recorded, each on a task
/// of its own so that database writes overlap the next claim and publish. They
/// complete in publish order. Dropping the set aborts what is left: those rows stay
/// unsent and the next session publishes them again.
#[derive(Default)]
struct InFlight {
    batches: FuturesOrdered<JoinHandle<Result<()>>>,
    aborts: VecDeque<AbortHandle>,
}

impl InFlight {
    fn push(&mut self, task: JoinHandle<Result<()>>) {
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
    async fn next(&mut self) -> Option<Result<()>> {
        let outcome = self.batches.next().await?;
        self.aborts.pop_front();
        Some(outcome.unwrap_or_else(|e: JoinError| {
            Err(Error::NotFound(format!("settling task failed: {e}")))
        }))
    }

    /// Outcomes of batches already settled, without waiting.
    fn ready(&mut self) -> Result<()> {
        while let Some(Some(outcome)) = futures_util::FutureExt::now_or_never(self.next()) {
            outcome?;
        }
        Ok(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for abort in &self.aborts {
            abort.abort();
        }
    }
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    channel: Channel,
    /// Highest seq claimed since the last scan from the start. Only a speed-up: the
    /// scan restarts from the start whenever the pipeline drains and at least every
    /// rescan interval, so rows that committed late, behind it, are still found.
    cursor: i64,
    last_rescan: Instant,
    /// The partitions of the current scan. The cursor means something only for a
    /// fixed set held without a gap: when the leases change, the scan starts over.
    partitions: Arc<[i16]>,
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, channel: Channel) -> Self {
        let partitions = shared.leases.owned();
        Self {
            shared,
            channel,
            cursor: 0,
            last_rescan: Instant::now(),
            partitions,
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
        let mut in_flight = InFlight::default();
        loop {
            in_flight.ready()?;
            if shutdown.is_cancelled() {
                return self.drain(in_flight).await;
            }
            let shared = Arc::clone(&self.shared);
            let config = &shared.config;
            let leases_changed = *self.partitions != *shared.leases.owned();
            let rescan_due = leases_changed
                || (self.cursor > 0 && self.last_rescan.elapsed() >= config.rescan_interval);
            if in_flight.len() >= config.max_in_flight_batches
                || (rescan_due && !in_flight.is_empty())
            {
                settle_next(&mut in_flight, shutdown).await?;
                continue;
            }
            if rescan_due {
                self.restart_scan();
            }

            let rows = self.fetch(self.cursor, config.batch_size).await?;
            if let Some(last) = rows.last() {
                self.cursor = last.seq;
                in_flight.push(self.publish(rows).await?);
                continue;
            }
            if !in_flight.is_empty() {
                settle_next(&mut in_flight, shutdown).await?;
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

    async fn fetch(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>> {
        let result = store::fetch_ready(
            &self.shared.pool,
            &self.shared.config.instance_id,
            &self.partitions,
            after_seq,
            limit,
        )
        .await;
        self.shared.metrics.set_database_ok(result.is_ok());
        result
    }

    /// Publishes a batch in write order and hands its confirms to a settling task.
    async fn publish(&self, rows: Vec<OutboxRow>) -> Result<JoinHandle<Result<()>>> {
        let span = tracing::info_span!("batch", size = rows.len(), first_seq = rows[0].seq);
        let confirms = publish_batch(&self.channel, &self.shared.config.exchange, &rows)
            .instrument(span.clone())
            .await?;
        let shared = Arc::clone(&self.shared);
        Ok(tokio::spawn(
            async move { settle(&shared, rows, confirms).await }.instrument(span),
        ))
    }

    async fn drain(&self, mut in_flight: InFlight) -> Result<()> {
        let outstanding = in_flight.len();
        let drained = tokio::time::timeout(self.shared.config.shutdown_timeout, async {
            while let Some(outcome) = in_flight.next().await {
                outcome?;
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

async fn settle_next(in_flight: &mut InFlight, shutdown: &CancellationToken) -> Result<()> {
    tokio::select! {
        Some(outcome) = in_flight.next() => outcome,
        () = shutdown.cancelled() => Ok(()),
    }
}
