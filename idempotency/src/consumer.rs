//! The consumer: handlers registered by step, and what one delivery goes through
//! before it is settled (decode, route, run through the inbox, decide).

use std::collections::HashMap;
use std::sync::Arc;

use lapin::message::Delivery;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use txoutbox::nodes::Nodes;

use crate::batch::{self, Prepared, Took};
use crate::config::ConsumerConfig;
use crate::dead_record::DeadLetterLog;
use crate::decision::{Decision, Failure, decide};
use crate::envelope::{attempts, decode};
use crate::error::{ConsumerError, StartError};
use crate::handler::{BoxError, Handler, Route, StatefulHandler, Typed, WithState};
use crate::inbox::Inbox;
use crate::metrics::Metrics;
use crate::session;

/// Consumes a queue and runs each message's handler through the inbox.
///
/// ```rust,no_run
/// use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct ChargePayment { amount_cents: i64 }
///
/// #[derive(Serialize)]
/// struct PaymentCharged { charge_id: i64 }
///
/// async fn charge(mut ctx: Context<'_>, cmd: ChargePayment) -> Result<i64, BoxError> {
///     let charge_id: i64 = sqlx::query_scalar("INSERT INTO charges (amount_cents) VALUES ($1) RETURNING id")
///         .bind(cmd.amount_cents)
///         .fetch_one(ctx.db())
///         .await?;
///     ctx.emit("PaymentCharged", "payments.charged", &PaymentCharged { charge_id }).await?;
///     Ok(charge_id)
/// }
///
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let config = ConsumerConfig::new("payments").bind("saga", "payments.charge");
/// let consumer = Consumer::new(pool, "amqp://127.0.0.1:5672/%2f", "payment-service", config)
///     .on("ChargePayment", charge)
///     .spawn()?;
/// // ... until shutdown; an error if the consumer had stopped (a queue of another type):
/// consumer.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct Consumer {
    pool: PgPool,
    amqp_url: String,
    inbox: Inbox,
    pub(crate) config: ConsumerConfig,
    routes: HashMap<String, Arc<dyn Route>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) dead_letters: Arc<DeadLetterLog>,
    /// Names the database's cause when a batch finds it unusable, now and then.
    explainer: txoutbox::reach::Explainer,
}

impl Consumer {
    /// A consumer whose inbox is named `consumer` (one name per service or handler),
    /// reading from the broker at `amqp_url`: one `amqp://` or `amqps://` URL, or the
    /// nodes of one cluster separated by commas (see [`txoutbox::nodes`]). It connects to
    /// the first node that answers and, when its node goes away, to the next.
    pub fn new(
        pool: PgPool,
        amqp_url: impl Into<String>,
        consumer: impl Into<String>,
        config: ConsumerConfig,
    ) -> Self {
        let inbox = Inbox::new(consumer);
        let metrics = Arc::new(Metrics::new(inbox.consumer(), &config.queue));
        let dead_letters = Arc::new(DeadLetterLog::new(pool.clone(), inbox.consumer()));
        Self {
            pool,
            amqp_url: amqp_url.into(),
            inbox,
            config,
            routes: HashMap::new(),
            metrics,
            dead_letters,
            explainer: txoutbox::reach::Explainer::new(),
        }
    }

    /// Its counters, for `/metrics` ([`Metrics::render`]); the same after `spawn`
    /// through [`ConsumerHandle::metrics`].
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Handles messages of `step` with `handler`, an `async fn(Context<'_>, T) ->
    /// Result<R, E>`, in the inbox's transaction. Registering a step again replaces
    /// its handler; a message whose step has no handler is dead-lettered as unknown.
    ///
    /// The payload is deserialized into `T` before the transaction opens; one that
    /// does not fit is dead-lettered at once, with serde's error as the reason (use
    /// `serde_json::Value` to take any JSON). `R` is stored in the inbox and handed
    /// to duplicates. An error `E` is retried later, then dead-lettered; so is a panic.
    pub fn on<H, T, R, E>(mut self, step: impl Into<String>, handler: H) -> Self
    where
        H: for<'a> Handler<'a, T, R, E>,
        T: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        E: Into<BoxError> + 'static,
    {
        let route: Arc<dyn Route> = Arc::new(Typed::new(handler));
        self.routes.insert(step.into(), route);
        self
    }

    /// The name of the consumer's inbox, as given to [`Consumer::new`].
    pub fn name(&self) -> &str {
        self.inbox.consumer()
    }

    /// Like [`Consumer::on`], for a handler that also takes a state:
    /// `async fn(Context<'_>, T, S) -> Result<R, E>`, called with a clone of `state`
    /// each time (put what must be shared behind an `Arc`).
    pub fn on_with<H, S, T, R, E>(self, step: impl Into<String>, state: S, handler: H) -> Self
    where
        H: for<'a> StatefulHandler<'a, T, S, R, E>,
        S: Clone + Send + Sync + 'static,
        T: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        E: Into<BoxError> + 'static,
    {
        self.on(step, WithState { handler, state })
    }

    /// Consumes until `shutdown`, reconnecting after broker failures. Deliveries not
    /// acked when a connection drops are redelivered by the broker. Fails at once,
    /// before connecting, if the config or the AMQP URL cannot work; stops with
    /// [`ConsumerError::Declare`] if the broker refuses its queues as declared (a
    /// queue that exists with another [`QueueType`](crate::QueueType)), which no
    /// reconnect would change.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let nodes = self.check()?;
        session::run(Arc::new(self), nodes, shutdown).await
    }

    /// Runs the consumer on a task of its own, once its config and AMQP URL are
    /// checked. Why it stopped on its own, if it did, comes from
    /// [`ConsumerHandle::shutdown`].
    pub fn spawn(self) -> Result<ConsumerHandle, StartError> {
        let nodes = self.check()?;
        let shutdown = CancellationToken::new();
        let metrics = self.metrics();
        let task = tokio::spawn(session::run(Arc::new(self), nodes, shutdown.clone()));
        Ok(ConsumerHandle {
            shutdown,
            task,
            metrics,
        })
    }

    /// Opens one database connection per batch in flight before the first delivery
    /// waits on one: opened lazily, each costs it ~90 ms with TLS (see
    /// [`txoutbox::postgres::open_ahead`]).
    pub(crate) async fn open_connections_ahead(&self, shutdown: &CancellationToken) {
        let wanted = u32::try_from(self.config.concurrency).unwrap_or(u32::MAX);
        txoutbox::postgres::open_ahead(&self.pool, wanted, shutdown.cancelled()).await;
    }

    /// The config, then the node list, checked before anything connects.
    fn check(&self) -> Result<Nodes, StartError> {
        if self.name().is_empty() {
            return Err(StartError::NoInboxName);
        }
        self.config.validate()?;
        Ok(Nodes::parse(&self.amqp_url)?)
    }

    /// Everything short of settling a batch of deliveries with the broker: decode
    /// each, run their handlers through the inbox in one transaction (a key that
    /// comes twice waits for the next), and decide what becomes of each, in order.
    pub(crate) async fn process(&self, deliveries: &[Delivery]) -> Vec<Decision> {
        let mut outcomes: Vec<Option<Result<Took, Failure>>> =
            deliveries.iter().map(|_| None).collect();
        let mut ready = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            match self.prepare(delivery) {
                Ok(prepared) => ready.push((index, prepared)),
                Err(failure) => outcomes[index] = Some(Err(failure)),
            }
        }
        while !ready.is_empty() {
            let (now, later) = batch::split_repeats(ready);
            let (indexes, now): (Vec<usize>, Vec<Prepared>) = now.into_iter().unzip();
            let done = batch::run(&self.pool, &self.explainer, self.name(), now).await;
            for (index, outcome) in indexes.into_iter().zip(done) {
                outcomes[index] = Some(outcome);
            }
            ready = later;
        }
        deliveries
            .iter()
            .zip(outcomes)
            .map(|(delivery, outcome)| {
                let attempt = attempts(delivery.properties.headers().as_ref()).saturating_add(1);
                let outcome = outcome.unwrap_or(Ok(Took::Effect));
                if let Ok(took) = outcome {
                    self.metrics.took(took);
                }
                decide(outcome.map(|_| ()), attempt, &self.config)
            })
            .collect()
    }

    /// Decodes a delivery and finds its handler, before any transaction opens:
    /// what fails here fails without touching the database.
    fn prepare(&self, delivery: &Delivery) -> Result<Prepared, Failure> {
        let envelope = decode(delivery).map_err(Failure::Undecodable)?;
        let route = self
            .routes
            .get(txoutbox::wire::step_route(&envelope.step))
            .ok_or_else(|| Failure::UnknownStep(envelope.step.clone()))?;
        let call = route.prepare(&envelope).map_err(Failure::BadPayload)?;
        let route = Arc::clone(route);
        let span = tracing::info_span!("message", saga_id = %envelope.saga_id, step = %envelope.step, attempt = envelope.attempt);
        // The writer's trace continues here: the handler's span becomes a child of
        // the span that wrote the message (set before the span is first entered;
        // after that its parent is fixed). A malformed header from another service,
        // or no OpenTelemetry layer, leaves the span as it was; the handler runs.
        #[cfg(feature = "opentelemetry")]
        if let Some(traceparent) = &envelope.traceparent {
            txoutbox::trace::set_parent(&span, traceparent);
        }
        Ok(Prepared::new(envelope, route, call, span))
    }
}

/// A consumer running on its own task.
pub struct ConsumerHandle {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ConsumerError>>,
    metrics: Arc<Metrics>,
}

impl ConsumerHandle {
    /// The consumer's counters, for `/metrics` ([`Metrics::render`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Stops at once, like a crash: deliveries in hand are neither finished nor
    /// acked, and the broker redelivers them.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Stops taking deliveries, finishes those in hand (bounded), and waits. An
    /// error says why the consumer had already stopped on its own
    /// ([`ConsumerError::Declare`]: the broker refused its queues). If its task
    /// panicked, the panic goes on here, in the caller's task.
    pub async fn shutdown(self) -> Result<(), ConsumerError> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Ok(()), // cancelled: the runtime is going away
        }
    }

    /// True once the consumer has stopped: after [`ConsumerHandle::shutdown`], or on
    /// its own with an error that `shutdown` returns.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
