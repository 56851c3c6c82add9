//! The queues a consumer needs: its own, a dead-letter queue, and retry queues,
//! named by the rules of [`txoutbox::wire`], with the arguments of their
//! [`QueueType`].

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, ErrorKind};
use txoutbox::wire::{
    ATTEMPTS_HEADER, DEAD_REASON_HEADER, LAST_ERROR_HEADER, dead_queue, retry_queue,
};

use crate::config::ConsumerConfig;
use crate::error::DeclareError;
use crate::queue_type::{QueueType, existing_type};

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Deletes `queue`, its dead-letter queue and its retry queues (one per delay).
pub(crate) async fn delete(
    channel: &Channel,
    queue: &str,
    retry_delays: &[Duration],
) -> lapin::Result<()> {
    let retries = retry_delays.iter().map(|delay| retry_queue(queue, *delay));
    for name in [queue.to_owned(), dead_queue(queue)]
        .into_iter()
        .chain(retries)
    {
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}

/// Declares the dead-letter queue, the queue, its retry queues, and binds the queue
/// as asked. `.dead` goes first: its only argument is its type, so RabbitMQ's refusal
/// of it names the type (for the others it names the first argument that differs,
/// in its own order, which puts the type late). Every retry queue is declared here,
/// so that one left from before with other arguments stops the consumer at its
/// start, not a retry later.
pub(crate) async fn declare(
    channel: &Channel,
    config: &ConsumerConfig,
) -> Result<(), DeclareError> {
    let (queue, queue_type) = (config.queue.as_str(), config.queue_type);
    let dead = dead_queue(queue);
    declare_queue(channel, &dead, queue_type, queue_type.dead_arguments()).await?;
    let arguments = queue_type.main_arguments(queue);
    declare_queue(channel, queue, queue_type, arguments).await?;
    for delay in config.retry_delays() {
        let retry = retry_queue(queue, delay);
        let arguments = queue_type.retry_arguments(queue, delay);
        declare_queue(channel, &retry, queue_type, arguments).await?;
    }
    for (exchange, pattern) in &config.bindings {
        channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

async fn declare_queue(
    channel: &Channel,
    queue: &str,
    queue_type: QueueType,
    arguments: FieldTable,
) -> Result<(), DeclareError> {
    match channel
        .queue_declare(queue.into(), durable(), arguments)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) => Err(refusal(queue, queue_type, error)),
    }
}

/// What a failed declaration of `queue` means. The broker refuses one by closing the
/// channel with 406 PRECONDITION_FAILED; which argument it objects to is only in its
/// words, so those refine the error (a type mismatch) and are kept whole otherwise.
fn refusal(queue: &str, declared: QueueType, error: lapin::Error) -> DeclareError {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return error.into();
    };
    if amqp.kind() != &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
        return error.into();
    }
    let reason = amqp.get_message().to_string();
    match existing_type(&reason) {
        Some(existing) => DeclareError::TypeMismatch {
            queue: queue.to_owned(),
            declared,
            existing,
        },
        None => DeclareError::Refused {
            queue: queue.to_owned(),
            declared,
            reason,
        },
    }
}

/// Publishes a copy of a message, with confirms, and fails unless the broker acked it.
async fn publish_copy(
    channel: &Channel,
    routing_key: &str,
    data: &[u8],
    properties: BasicProperties,
) -> lapin::Result<bool> {
    let confirm = channel
        .basic_publish(
            "".into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            data,
            properties,
        )
        .await?
        .await?;
    Ok(matches!(confirm, Confirmation::Ack(None)))
}

fn with_headers(properties: &BasicProperties, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        headers.insert(ShortString::from(*name), value.clone());
    }
    properties.clone().with_headers(headers)
}

/// Sends a message to `{queue}.dead` with the reason. True once the broker has it.
pub(crate) async fn dead_letter(
    channel: &Channel,
    queue: &str,
    data: &[u8],
    properties: &BasicProperties,
    attempts: u32,
    reason: &str,
) -> lapin::Result<bool> {
    let properties = with_headers(
        properties,
        &[
            (
                DEAD_REASON_HEADER,
                AMQPValue::LongString(LongString::from(reason)),
            ),
            (ATTEMPTS_HEADER, AMQPValue::LongLongInt(i64::from(attempts))),
        ],
    );
    publish_copy(channel, &dead_queue(queue), data, properties).await
}

/// Sends a message to wait `delay` in a retry queue, which returns it to `queue`.
/// True once the broker has it; false if the retry queue is missing (it is declared
/// when the consumer starts, with the others).
pub(crate) async fn retry_later(
    channel: &Channel,
    queue: &str,
    data: &[u8],
    properties: &BasicProperties,
    attempts: u32,
    delay: Duration,
    error: &str,
) -> lapin::Result<bool> {
    let properties = with_headers(
        properties,
        &[
            (ATTEMPTS_HEADER, AMQPValue::LongLongInt(i64::from(attempts))),
            (
                LAST_ERROR_HEADER,
                AMQPValue::LongString(LongString::from(error)),
            ),
        ],
    );
    publish_copy(channel, &retry_queue(queue, delay), data, properties).await
}
