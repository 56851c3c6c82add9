//! The consumer's connection to RabbitMQ: consume, hand each delivery to the
//! consumer, settle it, and when the connection ends reconnect, to the next node of
//! the list at once and with backoff after a round of failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use txoutbox::BrokerConnection;
use txoutbox::nodes::{Node, Nodes, Rotation};

use crate::ack_window::{AckWindow, Acks};
use crate::consumer::Consumer;
use crate::dead_record::{DeadLetter, DeadLetterLog};
use crate::decision::Decision;
use crate::error::{ConsumerError, DeclareError};
use crate::forming::{linger, linger_for, may_linger, others_done_or, take_ready};
use crate::metrics::Metrics;
use crate::topology;

/// How long deliveries in hand may take to finish when a session ends, so their
/// acks go out before the connection closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection may wait for the broker's reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting to one node may take, from TCP to consuming, before the next
/// node is tried: a black-holed node never answers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs sessions on the nodes in turn until `shutdown`: a lost node's successor is
/// tried at once, and only a round of failures on every node waits for the backoff.
/// Stops for good when the broker refuses the queues as declared: queue definitions
/// are the cluster's, so every node would refuse them alike.
pub(crate) async fn run(
    consumer: Arc<Consumer>,
    nodes: Nodes,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let queue = &consumer.config.queue;
    consumer.open_connections_ahead(&shutdown).await;
    let mut rotation = Rotation::new(nodes);
    while !shutdown.is_cancelled() {
        let node = rotation.node().clone();
        let mut connected_at = None;
        let Err(error) = session(&consumer, &node, &shutdown, &mut connected_at).await else {
            return Ok(());
        };
        let error = match error {
            Ended::Declare(error) if error.is_permanent() => {
                tracing::error!(%error, %queue, "the broker refused the consumer's queues; the consumer stops");
                return Err(ConsumerError::Declare(error));
            }
            error => error,
        };
        let pause = match connected_at {
            Some(at) => rotation.session_ended(at.elapsed()),
            None => rotation.connect_failed(),
        };
        let (next, retry_in_ms) = (rotation.node(), pause.as_millis() as u64);
        if connected_at.is_some() {
            tracing::warn!(%error, %queue, %node, %next, retry_in_ms, "consumer session ended; reconnecting");
        } else {
            tracing::warn!(%error, %queue, %node, %next, retry_in_ms, "consumer could not connect to the broker node; trying the next");
        }
        if pause.is_zero() {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    Ok(())
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Declare(#[from] DeclareError),
    #[error("the broker node did not let the consumer in within {0:?}")]
    ConnectTimeout(Duration),
}

/// The channels of a session, once the consumer is in.
struct Opened {
    channel: Channel,
    publisher: Channel,
    deliveries: lapin::Consumer,
}

/// Sets up a session on `connection`: declare, prefetch, a confirming publisher, consume.
async fn open(consumer: &Consumer, connection: &Connection) -> Result<Opened, Ended> {
    let config = &consumer.config;
    let channel = connection.create_channel().await?;
    config.declare(&channel).await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let deliveries = channel
        .basic_consume(
            config.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Opened {
        channel,
        publisher,
        deliveries,
    })
}

/// One connection to `node`: declare, consume until shutdown or a broker failure,
/// then drain what is in hand and close. `connected_at` is set once the consumer is
/// in: a failure before that is a failed connect, after it the end of a session.
async fn session(
    consumer: &Arc<Consumer>,
    node: &Node,
    shutdown: &CancellationToken,
    connected_at: &mut Option<Instant>,
) -> Result<(), Ended> {
    let connecting = Connection::connect_uri(node.uri().clone(), ConnectionProperties::default());
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| Ended::ConnectTimeout(CONNECT_TIMEOUT))??;
    // Closed even when the task is aborted half-way through `open`: lapin alone would
    // keep a consumer whose `basic_consume` was cancelled, with what it was sent.
    let connection = BrokerConnection::new(connection);
    let opening = tokio::time::timeout(CONNECT_TIMEOUT, open(consumer, &connection))
        .await
        .map_err(|_| Ended::ConnectTimeout(CONNECT_TIMEOUT))
        .and_then(|opened| opened);
    let opened = match opening {
        Ok(opened) => opened,
        Err(error) => {
            connection
                .close("consumer could not set up", CLOSE_TIMEOUT)
                .await;
            return Err(error);
        }
    };
    *connected_at = Some(Instant::now());
    // Disconnected however the session ends: returned, aborted with its task, or
    // panicked; the gauge must not say connected for a consumer that is gone.
    let _connected = Connected::mark(&consumer.metrics);
    tracing::info!(queue = %consumer.config.queue, %node, "consumer connected");
    let Opened {
        channel,
        publisher,
        mut deliveries,
    } = opened;
    let slots = Arc::new(Semaphore::new(consumer.config.concurrency));
    let window = Arc::new(Mutex::new(AckWindow::default()));
    let mut handling = JoinSet::new();
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            Some(done) = handling.join_next() => report(done),
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                    // What arrived while the slot was busy joins this batch; a lone
                    // delivery goes on its own, at once, unless other batches are in
                    // hand and `batch_linger` lets it wait for company.
                    let (mut batch, mut ended) = take_ready(delivery, &mut deliveries, consumer.config.batch_size);
                    let others_in_flight = slots.available_permits() + 1 < consumer.config.concurrency;
                    if ended.is_none() && may_linger(&consumer.config, others_in_flight) {
                        let held = window.lock().await.len();
                        if let Some(how) = linger_for(&consumer.config, others_in_flight, held, batch.len()) {
                            // The window is not locked meanwhile: other batches' acks,
                            // which let more deliveries in, must not wait for this one.
                            let stop = others_done_or(&slots, consumer.config.concurrency, shutdown);
                            ended = linger(&mut batch, &mut deliveries, how, stop).await;
                        }
                    }
                    window.lock().await.taken(batch.iter().map(|d| d.delivery_tag));
                    let settling = Settling {
                        queue: consumer.config.queue.clone(),
                        publisher: publisher.clone(),
                        channel: channel.clone(),
                        window: Arc::clone(&window),
                        metrics: Arc::clone(&consumer.metrics),
                        dead_letters: Arc::clone(&consumer.dead_letters),
                    };
                    let consumer = Arc::clone(consumer);
                    handling.spawn(async move {
                        let _slot = slot;
                        let started = Instant::now();
                        let decisions = consumer.process(&batch).await;
                        let settled = settling.settle(batch, decisions).await;
                        consumer.metrics.batch_done(started.elapsed());
                        settled
                    });
                    if let Some(ended) = ended {
                        break ended;
                    }
                }
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            },
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(done) = handling.join_next().await {
            report(done);
        }
    })
    .await;
    connection.close("consumer stopping", CLOSE_TIMEOUT).await;
    result.map_err(Ended::from)
}

/// `inbox_connected` while this lives: set on [`Connected::mark`], cleared on drop.
struct Connected<'a>(&'a Metrics);

impl<'a> Connected<'a> {
    fn mark(metrics: &'a Metrics) -> Self {
        metrics.set_connected(true);
        Self(metrics)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.set_connected(false);
    }
}

/// What a finished batch needs to settle its deliveries with the broker.
struct Settling {
    queue: String,
    publisher: Channel,
    channel: Channel,
    window: Arc<Mutex<AckWindow>>,
    metrics: Arc<Metrics>,
    dead_letters: Arc<DeadLetterLog>,
}

impl Settling {
    /// Carries out the decisions: a copy to a retry or dead queue is confirmed before
    /// the original is acked, so nothing is lost; if the broker did not take the
    /// copy, the original goes back to the queue. Then the acks: one multiple-ack
    /// for the batch when nothing below it is still in hand, else one by one.
    async fn settle(self, batch: Vec<Delivery>, decisions: Vec<Decision>) -> lapin::Result<()> {
        let mut requeue = Vec::new();
        let mut acked = Vec::new();
        for (delivery, decision) in batch.iter().zip(&decisions) {
            if self.hand_over(delivery, decision).await? {
                acked.push(delivery.delivery_tag);
            } else {
                requeue.push(delivery);
            }
        }
        let settled: Vec<u64> = batch.iter().map(|d| d.delivery_tag).collect();
        // Decided and sent under one lock: a multiple-ack must not overtake the
        // acks of an earlier decision, or it would ack a tag twice (a channel error).
        let mut window = self.window.lock().await;
        let requeue_options = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        // Frames for distinct tags, so their order among themselves does not
        // matter; sent together, the I/O thread writes them at once instead of
        // waking this task once per frame. All are sent before the acks below,
        // so a multiple-ack cannot reach a requeued delivery.
        let nacks = requeue
            .iter()
            .map(|delivery| delivery.nack(requeue_options));
        futures_util::future::try_join_all(nacks).await?;
        match window.settle(&settled, &acked) {
            Acks::UpTo(tag) => {
                let multiple = BasicAckOptions { multiple: true };
                self.channel.basic_ack(tag, multiple).await?;
            }
            Acks::Each(tags) => {
                let acks = tags
                    .iter()
                    .map(|&tag| self.channel.basic_ack(tag, BasicAckOptions::default()));
                futures_util::future::try_join_all(acks).await?;
            }
        }
        Ok(())
    }

    /// Publishes the copy a retry or a dead letter needs, confirmed; true if the
    /// original may be acked. A dead letter is recorded in the database first (see
    /// [`crate::dead_record`]); if that fails, it is not moved.
    async fn hand_over(&self, delivery: &Delivery, decision: &Decision) -> lapin::Result<bool> {
        let (queue, publisher) = (&self.queue, &self.publisher);
        let (data, properties) = (&delivery.data, &delivery.properties);
        match decision {
            Decision::Ack => Ok(true),
            Decision::Dead {
                attempts,
                reason,
                kind,
                last_error,
            } => {
                tracing::error!(%queue, %reason, "dead-lettering a message");
                let dead = DeadLetter {
                    queue,
                    attempts: *attempts,
                    reason,
                    kind: *kind,
                    last_error: last_error.as_deref(),
                };
                if !self.dead_letters.record(delivery, &dead).await {
                    return Ok(false);
                }
                let moved =
                    topology::dead_letter(publisher, queue, data, properties, *attempts, reason)
                        .await?;
                if moved {
                    self.metrics.dead_lettered(*kind);
                }
                Ok(moved)
            }
            Decision::Retry {
                attempts,
                delay,
                error,
            } => {
                tracing::warn!(%queue, %error, attempts, "handler failed; retrying later");
                let moved = topology::retry_later(
                    publisher, queue, data, properties, *attempts, *delay, error,
                )
                .await?;
                if moved {
                    self.metrics.retried();
                }
                Ok(moved)
            }
        }
    }
}

/// Logs a delivery task that ended without settling its delivery. A handler's panic
/// is caught where the batch runs it, so a panic here is a bug in the consumer itself.
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
