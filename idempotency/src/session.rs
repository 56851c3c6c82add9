//! The consumer's connection to RabbitMQ: consume, hand each delivery to the
//! consumer, settle it, and reconnect with backoff when the connection ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::consumer::Consumer;
use crate::decision::Decision;
use crate::error::{ConsumerError, DeclareError};
use crate::topology;

/// How long deliveries in hand may take to finish when a session ends, so their
/// acks go out before the connection closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection may wait for the broker's reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs sessions until `shutdown`, pausing between them after failures; stops for
/// good when the broker refuses the queues as declared.
pub(crate) async fn run(
    consumer: Arc<Consumer>,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let mut backoff = outbox::backoff::reconnect();
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let Err(error) = session(&consumer, &shutdown).await else {
            return Ok(());
        };
        if error.is_permanent() {
            tracing::error!(%error, queue = %consumer.config.queue, "the broker refused the consumer's queues; the consumer stops");
            return Err(ConsumerError::Declare(error));
        }
        if started.elapsed() >= outbox::backoff::HEALTHY_SESSION {
            backoff = outbox::backoff::reconnect();
        }
        let pause = backoff.next().unwrap_or(outbox::backoff::RECONNECT_MAX);
        tracing::warn!(%error, queue = %consumer.config.queue, retry_in_ms = pause.as_millis() as u64, "consumer session ended; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    Ok(())
}

/// One connection: declare, consume until shutdown or a broker failure, then drain
/// what is in hand and close.
async fn session(
    consumer: &Arc<Consumer>,
    shutdown: &CancellationToken,
) -> Result<(), DeclareError> {
    let config = &consumer.config;
    let connection =
        Connection::connect(&consumer.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    config.declare(&channel).await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            config.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut handling = JoinSet::new();
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            Some(done) = handling.join_next() => report(done),
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                    let (consumer, publisher) = (Arc::clone(consumer), publisher.clone());
                    handling.spawn(async move {
                        let _slot = slot;
                        let decision = consumer.process(&delivery).await;
                        settle(&consumer.config.queue, &publisher, delivery, decision).await
                    });
                }
                Some(Err(error)) => break Err(error.into()),
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
    let goodbye = connection.close(200, "consumer stopping".into());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    result
}

/// Carries out a decision: a copy to a retry or dead queue is confirmed before the
/// original is acked, so nothing is lost; if the broker did not take the copy, the
/// original goes back to the queue.
async fn settle(
    queue: &str,
    publisher: &Channel,
    delivery: Delivery,
    decision: Decision,
) -> lapin::Result<()> {
    let (data, properties) = (&delivery.data, &delivery.properties);
    let handed_over = match &decision {
        Decision::Ack => true,
        Decision::Dead { attempts, reason } => {
            tracing::error!(%queue, %reason, "dead-lettering a message");
            topology::dead_letter(publisher, queue, data, properties, *attempts, reason).await?
        }
        Decision::Retry {
            attempts,
            delay,
            error,
        } => {
            tracing::warn!(%queue, %error, attempts, "handler failed; retrying later");
            topology::retry_later(publisher, queue, data, properties, *attempts, *delay, error)
                .await?
        }
    };
    if handed_over {
        delivery.ack(BasicAckOptions::default()).await?;
    } else {
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        delivery.nack(requeue).await?;
    }
    Ok(())
}

/// Logs a delivery task that ended without settling its delivery. A handler's panic
/// is caught in [`Consumer::process`], so a panic here is a bug in the consumer itself.
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
