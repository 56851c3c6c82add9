//! A relay instance: sessions over reconnects, plus its lease and cleanup tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::broker;
use crate::config::{RelayConfig, hostname};
use crate::error::{Error, Result};
use crate::lease::{LeaseReport, Leases};
use crate::metrics::{FailureReason, Metrics};
use crate::session::Session;
use crate::shared::Shared;
use crate::wake::Doorbell;
use crate::warm::warm;
use txoutbox::backoff::RECONNECT_MAX;
use txoutbox::nodes::{Node, Nodes, Rotation};

/// The retention cleanup runs every half retention, within these bounds.
const CLEANUP_PERIOD_MIN: Duration = Duration::from_secs(1);
const CLEANUP_PERIOD_MAX: Duration = Duration::from_secs(60);

/// How long a closing connection (or channel) may wait for the broker's reply.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes the outbox of one database to RabbitMQ.
///
/// ```rust,no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), txoutbox_relay::Error> {
/// use txoutbox_relay::{Relay, RelayConfig};
///
/// let mut config = RelayConfig::default();
/// config.exchange = "orders".into();
/// let relay = Relay::new(pool, "amqp://guest:guest@127.0.0.1:5672/%2f", config).spawn();
/// // ... serve requests; messages committed to the outbox are published ...
/// relay.shutdown().await?; // stop claiming, wait for confirms, give the leases back
/// # Ok(())
/// # }
/// ```
pub struct Relay {
    shared: Arc<Shared>,
    amqp_url: String,
}

impl Relay {
    /// A relay publishing the outbox in `pool`'s database to the broker at `amqp_url`:
    /// one `amqp://` or `amqps://` URL, or the nodes of one cluster separated by commas
    /// (see [`txoutbox::nodes`]). It connects to the first node that answers and, when
    /// its node goes away, to the next.
    pub fn new(pool: PgPool, amqp_url: impl Into<String>, config: RelayConfig) -> Self {
        let grace = config.confirm_timeout + config.heartbeat_interval;
        let leases = Leases::new(
            pool.clone(),
            config.instance_id.clone(),
            hostname(),
            config.lease_ttl,
            grace,
        );
        let shared = Shared {
            pool,
            config,
            metrics: Arc::new(Metrics::default()),
            leases,
            explainer: txoutbox::reach::Explainer::new(),
        };
        Self {
            shared: Arc::new(shared),
            amqp_url: amqp_url.into(),
        }
    }

    /// The relay's counters, for `/metrics` or your own exporter.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Runs the relay on a task of its own.
    pub fn spawn(self) -> RelayHandle {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.run(shutdown.clone()));
        RelayHandle { shutdown, task }
    }

    /// Publishes until `shutdown` is cancelled, reconnecting to the broker and the
    /// database as often as needed. Then waits (bounded) for outstanding confirms,
    /// records them, and gives its partitions back.
    ///
    /// Fails only at start: a configuration that cannot work
    /// ([`RelayConfig::validate`]), an AMQP URL or node list that cannot
    /// ([`Nodes::parse`]), or a database that refuses to register the instance (not
    /// migrated). An unreachable database or broker is waited for.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let shared = &self.shared;
        shared.config.validate()?;
        let nodes = Nodes::parse(&self.amqp_url)?;
        let Some(report) = self.register(&shutdown).await? else {
            return Ok(());
        };
        shared.metrics.set_database_ok(true);
        shared.metrics.set_partitions_held(report.held);
        shared.metrics.set_standing_by(report.standing_by);
        tracing::info!(instance = %shared.config.instance_id, partitions = report.held,
            live_instances = report.live_instances, standing_by = report.standing_by, "relay started");

        warm(&shared.pool, shared.config.max_in_flight_batches, &shutdown).await;
        let background = shutdown.child_token();
        // Aborted (`RelayHandle::abort`), this future is dropped where it stands: the
        // heartbeats must stop with it, or its leases and its hold on the instance id
        // would be renewed for ever by a relay that publishes nothing.
        let _stop_background = background.clone().drop_guard();
        let lease_task = tokio::spawn(lease_loop(Arc::clone(shared), background.clone()));
        let cleanup_task = shared.config.retention.map(|retention| {
            tokio::spawn(cleanup_loop(
                Arc::clone(shared),
                retention,
                background.clone(),
            ))
        });

        self.publish_until(nodes, &shutdown).await;

        background.cancel();
        let _ = lease_task.await;
        if let Some(task) = cleanup_task {
            let _ = task.await;
        }
        if let Err(error) = shared.leases.leave().await {
            tracing::warn!(%error, "could not give the leases back; they expire on their own");
        }
        tracing::info!(
            published = shared.metrics.published_total(),
            "relay stopped"
        );
        Ok(())
    }

    /// The first heartbeat, retried while the database is unreachable; `None` if
    /// shutdown came first. A database that answers but refuses (not migrated) is an error.
    async fn register(&self, shutdown: &CancellationToken) -> Result<Option<LeaseReport>> {
        let mut backoff = reconnect_backoff();
        loop {
            match self.shared.leases.heartbeat().await {
                Ok(report) => return Ok(Some(report)),
                Err(error) if error.is_transient() => {
                    if let Some(database) = error.database() {
                        explain(&self.shared, database).await;
                    }
                    let pause = backoff.next().unwrap_or(RECONNECT_MAX);
                    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "database unreachable at start");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return Ok(None),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sessions on the nodes in turn until shutdown: a lost node's successor is tried
    /// at once, and only a round of failures on every node waits for the backoff.
    async fn publish_until(&self, nodes: Nodes, shutdown: &CancellationToken) {
        let shared = &self.shared;
        let mut doorbell = Doorbell::new(shared.pool.clone());
        // Connected now, not when the relay first runs out of work: rows written while
        // it connects would wait for it.
        doorbell.listen().await;
        let mut rotation = Rotation::new(nodes);
        // Set while the broker is away since a session lost it with nothing to
        // publish: the first row written then cuts the reconnect pause short.
        let mut lost_while_idle = false;
        while !shutdown.is_cancelled() {
            let node = rotation.node().clone();
            let mut connected_at = None;
            let result = self
                .session(&node, &mut doorbell, shutdown, &mut connected_at)
                .await;
            let Err(error) = result else { break };
            if connected_at.is_some() {
                lost_while_idle = matches!(error, Error::BrokerLostWhileIdle(_));
            }
            if let Some(database) = error.database() {
                if matches!(error, Error::Database(_)) {
                    shared.metrics.failed(FailureReason::Database, 1);
                    shared.metrics.set_database_ok(false);
                }
                explain(shared, database).await;
            }
            let pause = match connected_at {
                Some(at) => rotation.session_ended(at.elapsed()),
                None => rotation.connect_failed(),
            };
            let next = rotation.node();
            if connected_at.is_some() {
                tracing::warn!(%error, %node, %next, retry_in_ms = pause.as_millis() as u64, "relay session ended; reconnecting");
            } else {
                tracing::warn!(%error, %node, %next, retry_in_ms = pause.as_millis() as u64, "could not connect to the broker node; trying the next");
            }
            if pause.is_zero() {
                continue;
            }
            if lost_while_idle {
                // Once rows wait, the pauses are plain again: a writer's every row
                // must not bring on a connect to a broker that is still away.
                lost_while_idle = !self.pause_until_a_row(pause, &mut doorbell, shutdown).await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Waits `pause` before the next connect, or less if a writer's row rings first
    /// (true). A relay that learned of a lost broker while it had nothing to publish
    /// reconnects with the backoff like any client, up to seconds apart; without
    /// this, the first row after the broker came back would wait out that pause.
    async fn pause_until_a_row(
        &self,
        pause: Duration,
        doorbell: &mut Doorbell,
        shutdown: &CancellationToken,
    ) -> bool {
        doorbell.listen().await;
        doorbell.arm(&self.shared.leases.owned()).await;
        let rang = doorbell.wait(pause, shutdown).await;
        doorbell.disarm().await;
        rang
    }

    /// One connection to `node` and the session on it, until shutdown (`Ok`) or a
    /// failure. `connected_at` is set once the session is open: a failure before that
    /// is a failed connect, after it the end of a session.
    async fn session(
        &self,
        node: &Node,
        doorbell: &mut Doorbell,
        shutdown: &CancellationToken,
        connected_at: &mut Option<Instant>,
    ) -> Result<()> {
        let shared = &self.shared;
        // A black-holed node never answers: bound the handshake and the goodbye.
        let timeout = shared.config.confirm_timeout;
        let connecting = broker::connect(node, &shared.config.instance_id);
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| Error::ConnectTimeout(timeout))??;
        // Closed even if this task is aborted (an embedding service's `abort`).
        let connection = txoutbox::BrokerConnection::new(connection);
        let result = async {
            let opening = Session::open(Arc::clone(shared), &connection);
            let session = tokio::time::timeout(timeout, opening)
                .await
                .map_err(|_| Error::ConnectTimeout(timeout))??;
            *connected_at = Some(Instant::now());
            tracing::info!(%node, "connected to the broker");
            shared.metrics.set_broker_node(Some(node));
            session.run(doorbell, shutdown).await
        }
        .await;
        shared.metrics.set_broker_node(None);
        shared.metrics.broker_watch_ended();
        connection
            .close("outbox-relay session ended", CLOSE_TIMEOUT)
            .await;
        result
    }
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    txoutbox::backoff::reconnect()
}

/// Renews leases and rebalances partitions every heartbeat.
async fn lease_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(shared.config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        match shared.leases.heartbeat().await {
            Ok(report) => {
                shared.metrics.set_database_ok(true);
                shared.metrics.set_partitions_held(report.held);
                shared.metrics.set_standing_by(report.standing_by);
            }
            Err(error) => {
                shared.metrics.set_database_ok(false);
                tracing::warn!(%error, "lease heartbeat failed; leases expire unless the next one succeeds");
                if let Some(database) = error.database() {
                    explain(&shared, database).await;
                }
            }
        }
    }
}

/// Deletes sent rows past the retention, in bounded batches, one instance at a time.
async fn cleanup_loop(shared: Arc<Shared>, retention: Duration, stop: CancellationToken) {
    let period = (retention / 2).clamp(CLEANUP_PERIOD_MIN, CLEANUP_PERIOD_MAX);
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
        match admin::cleanup(&shared.pool, retention, shared.config.cleanup_batch_size).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "removed sent rows past their retention"),
            Err(error) => tracing::warn!(%error, "retention cleanup failed; will try again"),
        }
    }
}

/// A relay running on its own task.
pub struct RelayHandle {
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl RelayHandle {
    /// Stops claiming, waits (bounded) for outstanding confirms, records them, and
    /// waits for the relay to finish. If the relay's task panicked, the panic goes on
    /// here, in the caller's task, rather than passing for a clean stop.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Ok(()), // cancelled: the runtime is going away
        }
    }

    /// Stops the relay at once, like a crash: nothing is drained or given back. Its
    /// leases expire and another instance publishes what it left unconfirmed.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Says which server cannot be used and why, when `error` tells only that the
/// database could not be reached ("pool timed out"): the operator's next step
/// depends on the cause (a server down, a password, a standby not promoted).
async fn explain(shared: &Shared, error: &sqlx::Error) {
    if let Some(unreachable) = shared.explainer.explain(&shared.pool, error).await {
        tracing::warn!(%unreachable, "the database cannot be used; the relay keeps trying");
    }
}
