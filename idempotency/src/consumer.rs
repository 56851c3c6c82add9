//! The consumer runtime: RabbitMQ deliveries in, handler effects through the inbox,
//! acks only after the commit.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::envelope::{Envelope, decode};
use crate::error::Error;
use crate::inbox::{Inbox, InboxKey};
use crate::topology;

/// Any error a handler returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns: its result (stored in the inbox, handed to duplicates).
pub type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, BoxError>> + Send + 'a>>;

type HandlerFn =
    Arc<dyn for<'a> Fn(&'a Envelope, &'a mut PgConnection) -> HandlerFuture<'a> + Send + Sync>;

/// How a consumer reads its queue and what it does with failures.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The durable queue to consume; declared if missing, with `{queue}.dead`.
    pub queue: String,
    /// `(exchange, routing pattern)` pairs to bind the queue to.
    pub bindings: Vec<(String, String)>,
    /// Unacknowledged deliveries the broker may send ahead.
    pub prefetch: u16,
    /// Deliveries handled at once.
    pub concurrency: usize,
    /// Handler failures before a message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl ConsumerConfig {
    /// Defaults for `queue`: prefetch 32, 4 at once, 5 attempts, retries after 1 s,
    /// 2 s, 4 s, ... up to a minute.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            bindings: Vec::new(),
            prefetch: 32,
            concurrency: 4,
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }

    /// Declares the queue, `{queue}.dead` and the bindings, as the consumer does when
    /// it starts. Call it ahead of time so that nothing published before the first
    /// consumer connects is unroutable.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        topology::declare(channel, &self.queue, &self.bindings).await
    }

    /// Binds the queue to `exchange` with a routing `pattern` (declared at start).
    pub fn bind(mut self, exchange: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.bindings.push((exchange.into(), pattern.into()));
        self
    }
}

/// Consumes a queue and runs each message's handler through the inbox.
pub struct Consumer {
    pool: PgPool,
    amqp_url: String,
    inbox: Inbox,
    config: ConsumerConfig,
    handlers: HashMap<String, HandlerFn>,
}

/// What becomes of one delivery.
enum Disposition {
    Ack,
    Dead {
        attempts: u32,
        reason: String,
    },
    Retry {
        attempts: u32,
        delay: Duration,
        error: String,
    },
}

impl Consumer {
    /// A consumer whose inbox is named `consumer` (one name per service or handler).
    pub fn new(
        pool: PgPool,
        amqp_url: impl Into<String>,
        consumer: impl Into<String>,
        config: ConsumerConfig,
    ) -> Self {
        let inbox = Inbox::new(consumer);
        Self {
            pool,
            amqp_url: amqp_url.into(),
            inbox,
            config,
            handlers: HashMap::new(),
        }
    }

    /// Handles messages of `step` with `handler`, in the inbox's transaction. A
    /// message whose step has no handler is dead-lettered as unknown.
    pub fn on<F>(mut self, step: impl Into<String>, handler: F) -> Self
    where
        F: for<'a> Fn(&'a Envelope, &'a mut PgConnection) -> HandlerFuture<'a>
            + Send
            + Sync
            + 'static,
    {
        self.handlers.insert(step.into(), Arc::new(handler));
        self
    }

    /// Consumes until `shutdown`, reconnecting after broker failures. Deliveries not
    /// acked when a connection drops are redelivered by the broker.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut pause = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match Arc::clone(&this).session(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "consumer session ended; reconnecting")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// Runs the consumer on a task of its own.
    pub fn spawn(self) -> ConsumerHandle {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.run(shutdown.clone()));
        ConsumerHandle { shutdown, task }
    }

    async fn session(self: Arc<Self>, shutdown: &CancellationToken) -> lapin::Result<()> {
        let connection =
            Connection::connect(&self.amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        self.config.declare(&channel).await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut handling = JoinSet::new();
        let result = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                Some(done) = handling.join_next() => report(done),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                        let (this, publisher) = (Arc::clone(&self), publisher.clone());
                        handling.spawn(async move {
                            let _slot = slot;
                            this.handle(&publisher, delivery).await
                        });
                    }
                    Some(Err(error)) => break Err(error),
                    None => break Ok(()),
                },
            }
        };
        // Finish what is in hand (bounded), so its acks go out before the connection does.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(done) = handling.join_next().await {
                report(done);
            }
        })
        .await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connection.close(200, "consumer stopping".into()),
        )
        .await;
        result
    }

    /// Decides a delivery's fate, then settles it with the broker: a copy to a retry
    /// or dead queue is confirmed before the original is acked, so nothing is lost.
    async fn handle(&self, publisher: &Channel, delivery: Delivery) -> lapin::Result<()> {
        let disposition = self.dispose(&delivery).await;
        let (data, properties) = (&delivery.data, &delivery.properties);
        let handed_over = match &disposition {
            Disposition::Ack => true,
            Disposition::Dead { attempts, reason } => {
                tracing::error!(queue = %self.config.queue, %reason, "dead-lettering a message");
                topology::dead_letter(
                    publisher,
                    &self.config.queue,
                    data,
                    properties,
                    *attempts,
                    reason,
                )
                .await?
            }
            Disposition::Retry {
                attempts,
                delay,
                error,
            } => {
                tracing::warn!(queue = %self.config.queue, %error, attempts, "handler failed; retrying later");
                topology::retry_later(
                    publisher,
                    &self.config.queue,
                    data,
                    properties,
                    *attempts,
                    *delay,
                    error,
                )
                .await?
            }
        };
        if handed_over {
            delivery.ack(BasicAckOptions::default()).await?;
        } else {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }

    async fn dispose(&self, delivery: &Delivery) -> Disposition {
        let envelope = match decode(delivery) {
            Ok(envelope) => envelope,
            Err(reason) => {
                return Disposition::Dead {
                    attempts: 0,
                    reason,
                };
            }
        };
        let Some(handler) = self.handlers.get(&envelope.step) else {
            return Disposition::Dead {
                attempts: envelope.attempt - 1,
                reason: format!("unknown step: {}", envelope.step),
            };
        };
        let key = InboxKey {
            saga_id: &envelope.saga_id,
            step: &envelope.step,
            message_id: envelope.message_id.as_deref(),
        };
        let span =
            tracing::info_span!("message", saga_id = %envelope.saga_id, step = %envelope.step);
        let outcome = self
            .inbox
            .process(&self.pool, key, async |conn: &mut PgConnection| {
                // A panic is the handler failing: its transaction rolls back and the
                // message takes the retry path to the dead queue. Left to unwind, it
                // would kill the task with the delivery unacked, holding a prefetch
                // slot, and panic again after every restart. Unwind safety holds: what
                // the handler may leave half-changed is the transaction, rolled back.
                // The call is inside the block, so a panic before the future is caught too.
                let run = AssertUnwindSafe(async { handler(&envelope, conn).await });
                run.catch_unwind().await.unwrap_or_else(|payload| {
                    let message = panic_message(&*payload);
                    tracing::error!(saga_id = %envelope.saga_id, step = %envelope.step, panic = message, "handler panicked");
                    Err(format!("handler panicked: {message}").into())
                })
            })
            .instrument(span)
            .await;
        match outcome {
            Ok(_) => Disposition::Ack,
            Err(Error::Handler(error)) if envelope.attempt >= self.config.max_attempts => {
                Disposition::Dead {
                    attempts: envelope.attempt,
                    reason: format!("handler failed {} times; last: {error}", envelope.attempt),
                }
            }
            Err(Error::Handler(error)) => Disposition::Retry {
                attempts: envelope.attempt,
                delay: self.delay(envelope.attempt),
                error: error.to_string(),
            },
            // The database, not the message, failed: retry without spending an attempt.
            Err(Error::Database(error)) => Disposition::Retry {
                attempts: envelope.attempt - 1,
                delay: self.config.retry_base,
                error: format!("database: {error}"),
            },
            Err(error) => Disposition::Dead {
                attempts: envelope.attempt,
                reason: error.to_string(),
            },
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        self.config
            .retry_base
            .saturating_mul(1 << exponent)
            .min(self.config.retry_max)
    }
}

/// What a panic carries, as `panic!` leaves it: a `&str` or a `String`.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    match payload.downcast_ref::<&str>() {
        Some(message) => message,
        None => payload
            .downcast_ref::<String>()
            .map_or("a non-string panic payload", String::as_str),
    }
}

/// Logs a delivery task that ended without settling its delivery. A handler's panic
/// is caught in [`Consumer::dispose`], so a panic here is a bug in the consumer itself.
fn report(done: Result<lapin::Result<()>, JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "a delivery was left unacked; the broker will redeliver it")
        }
        Err(error) if error.is_panic() => {
            tracing::error!(%error, "a delivery task panicked; its delivery stays unacked until the channel closes")
        }
        Err(_) => {} // cancelled: the runtime is going away
    }
}

/// A consumer running on its own task.
pub struct ConsumerHandle {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ConsumerHandle {
    /// Stops taking deliveries, finishes those in hand (bounded), and waits.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}
