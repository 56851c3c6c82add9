//! The orchestrator: replies in (through the inbox), next commands out (through the
//! outbox), timeouts and operator requests from the sweep. It keeps nothing in
//! memory that a restart would lose: any number of instances may run, and sagas
//! started or moved by one are finished by any other.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use txoutbox_inbox::{
    BoxError, Consumer, ConsumerConfig, ConsumerError, ConsumerHandle, Context, Reject, StartError,
};

use crate::engine;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::signal::{self, Signaled};
use crate::sweep::{panic_as_error, sweep_due};
use crate::wire::{self, Reply};

/// How an orchestrator reads replies and sweeps deadlines.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OrchestratorConfig {
    /// The exchange participants' relays publish replies to; the orchestrator's queue
    /// is bound to it with `saga.{type}.reply` for each registered saga type.
    pub exchange: String,
    /// The consumer of replies: its queue (shared by every orchestrator instance),
    /// prefetch, concurrency, retries. Its bindings are added from the registry.
    pub consumer: ConsumerConfig,
    /// The name of the orchestrator's inbox.
    pub inbox: String,
    /// How often each instance looks for sagas whose deadline passed.
    pub sweep_interval: Duration,
    /// Due sagas one sweep handles at most, before it looks at shutdown again.
    pub sweep_batch: usize,
}

impl OrchestratorConfig {
    /// Defaults for replies published to `exchange`: queue `saga-orchestrator`, a sweep
    /// every 500 ms of at most 100 sagas.
    pub fn new(exchange: impl Into<String>) -> Self {
        Self {
            exchange: exchange.into(),
            consumer: ConsumerConfig::new("saga-orchestrator"),
            inbox: "saga-orchestrator".to_owned(),
            sweep_interval: Duration::from_millis(500),
            sweep_batch: 100,
        }
    }
}

/// Coordinates the sagas of the registered definitions.
pub struct Orchestrator {
    pool: PgPool,
    amqp_url: String,
    registry: Registry,
    config: OrchestratorConfig,
    metrics: Arc<Metrics>,
}

impl Orchestrator {
    /// An orchestrator for the sagas in `registry`, whose state lives in `pool`'s
    /// database, reading replies from the broker at `amqp_url`: one URL, or the nodes of
    /// one cluster separated by commas, as [`Consumer::new`] takes it.
    pub fn new(
        pool: PgPool,
        amqp_url: impl Into<String>,
        registry: Registry,
        config: OrchestratorConfig,
    ) -> Self {
        Self {
            pool,
            amqp_url: amqp_url.into(),
            registry,
            config,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Its counters, for `/metrics` or your own exporter.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Starts the reply consumer and the sweep on tasks of their own, once the
    /// consumer's config and the AMQP URL are checked.
    pub fn spawn(self) -> Result<OrchestratorHandle, StartError> {
        let state = Arc::new(Shared {
            registry: self.registry.clone(),
            metrics: Arc::clone(&self.metrics),
        });
        let mut consumer_config = self.config.consumer.clone();
        for saga_type in self.registry.saga_types() {
            consumer_config =
                consumer_config.bind(&self.config.exchange, wire::reply_routing_key(&saga_type));
        }
        // Events the definitions wait for come published under their own name.
        for event in self.registry.events() {
            consumer_config = consumer_config.bind(&self.config.exchange, &event);
        }
        let mut consumer = Consumer::new(
            self.pool.clone(),
            self.amqp_url,
            &self.config.inbox,
            consumer_config,
        );
        for route in self.registry.reply_routes() {
            consumer = consumer.on_with(route, Arc::clone(&state), on_reply);
        }
        for event in self.registry.events() {
            consumer = consumer.on_with(event, Arc::clone(&state), on_event);
        }
        let consumer = consumer.spawn()?;
        let shutdown = CancellationToken::new();
        let sweeper = tokio::spawn(sweep(
            self.pool,
            state,
            self.config.sweep_interval,
            self.config.sweep_batch,
            shutdown.clone(),
        ));
        Ok(OrchestratorHandle {
            consumer,
            sweeper,
            shutdown,
        })
    }
}

/// What the reply handler and the sweep share.
struct Shared {
    registry: Registry,
    metrics: Arc<Metrics>,
}

/// A reply, applied in the inbox's transaction: the reply's key, the saga's new state,
/// its history and its next command commit together.
async fn on_reply(mut ctx: Context<'_>, reply: Reply, shared: Arc<Shared>) -> Result<(), BoxError> {
    let envelope = ctx.envelope();
    let applied = engine::apply_reply(
        ctx.db(),
        &shared.registry,
        &envelope.saga_id,
        &envelope.step,
        &reply,
        envelope.message_id.as_deref(),
    )
    .await;
    match applied {
        Ok(applied) => {
            shared.metrics.replied(&applied);
            Ok(())
        }
        // No retry will make these exist: dead-letter the reply now, with the reason.
        Err(error @ (Error::NotFound(_) | Error::UnknownCommand { .. } | Error::NotAReply(_))) => {
            Err(Reject::new(error.to_string()).into())
        }
        // As itself, so the consumer sees what PostgreSQL said: a lost deadlock
        // against another orchestrator's batch is retried without spending an attempt.
        Err(Error::Database(error)) => Err(error.into()),
        Err(error) => Err(error.into()),
    }
}

/// An event for a saga, as a message from another service (its step and routing key
/// are the event's name, its `saga_id` the saga's): taken through the inbox, so a
/// duplicate applies once. An unknown saga, or an event its saga does not wait for,
/// is dead-lettered with the reason; one for a finished saga is recorded and acked.
async fn on_event(
    mut ctx: Context<'_>,
    payload: serde_json::Value,
    shared: Arc<Shared>,
) -> Result<(), BoxError> {
    let envelope = ctx.envelope();
    let event = txoutbox::wire::step_route(&envelope.step).to_owned();
    let delivered = signal::deliver(
        ctx.db(),
        &shared.registry,
        &envelope.saga_id,
        &event,
        &payload,
        envelope.message_id.as_deref(),
    )
    .await;
    match delivered {
        Ok(Signaled::Ignored(why)) => {
            tracing::debug!(saga_id = %envelope.saga_id, %event, %why, "an event for a saga was not taken");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(
            error @ (Error::NotFound(_)
            | Error::SignalRefused(_)
            | Error::NotAnEvent(_)
            | Error::BadEventPayload(_)),
        ) => Err(Reject::new(error.to_string()).into()),
        Err(Error::Database(error)) => Err(error.into()),
        Err(error) => Err(error.into()),
    }
}

/// Every `interval`, applies due timeouts, delivered events and operator requests.
async fn sweep(
    pool: PgPool,
    shared: Arc<Shared>,
    interval: Duration,
    batch: usize,
    shutdown: CancellationToken,
) {
    let mut backoff = txoutbox::backoff::reconnect();
    let explainer = txoutbox::reach::Explainer::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        // `sweep_due` fails a saga whose move panics and goes on; a panic outside
        // any one saga's move is the sweep's error, logged, and the sweep goes on
        // after a pause.
        let swept = panic_as_error(sweep_due(&pool, &shared.registry, batch)).await;
        match swept {
            Ok(outcomes) => {
                backoff = txoutbox::backoff::reconnect();
                for swept in &outcomes {
                    shared.metrics.swept(swept);
                }
            }
            Err(error) => {
                let pause = backoff.next().unwrap_or(txoutbox::backoff::RECONNECT_MAX);
                tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "saga sweep failed");
                if let Some(database) = error.database()
                    && let Some(unreachable) = explainer.explain(&pool, database).await
                {
                    tracing::warn!(%unreachable, "the orchestrator's database cannot be used; the sweep keeps trying");
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// A running orchestrator.
pub struct OrchestratorHandle {
    consumer: ConsumerHandle,
    sweeper: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl OrchestratorHandle {
    /// Stops sweeping and consuming; replies in hand finish first (bounded). An
    /// error says why the reply consumer had already stopped on its own (the broker
    /// refused its queue: one of another type, see [`ConsumerError`]).
    pub async fn shutdown(self) -> Result<(), ConsumerError> {
        self.shutdown.cancel();
        let _ = self.sweeper.await;
        self.consumer.shutdown().await
    }

    /// Stops at once, like a crash: whatever was in hand is redone by another instance.
    pub fn abort(self) {
        self.sweeper.abort();
        self.consumer.abort();
    }
}
