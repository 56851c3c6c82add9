//! The queues a consumer needs: its own, a dead-letter queue, and retry queues,
//! named by the rules of [`outbox::wire`].

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use outbox::wire::{
    ATTEMPTS_HEADER, DEAD_REASON_HEADER, LAST_ERROR_HEADER, dead_queue, retry_queue,
};

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

/// Declares the queue, its dead-letter queue, and binds the queue as asked.
pub(crate) async fn declare(
    channel: &Channel,
    queue: &str,
    bindings: &[(String, String)],
) -> lapin::Result<()> {
    channel
        .queue_declare(queue.into(), durable(), FieldTable::default())
        .await?;
    channel
        .queue_declare(
            dead_queue(queue).as_str().into(),
            durable(),
            FieldTable::default(),
        )
        .await?;
    for (exchange, pattern) in bindings {
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
/// True once the broker has it.
pub(crate) async fn retry_later(
    channel: &Channel,
    queue: &str,
    data: &[u8],
    properties: &BasicProperties,
    attempts: u32,
    delay: Duration,
    error: &str,
) -> lapin::Result<bool> {
    let retry = retry_queue(queue, delay);
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
    channel
        .queue_declare(retry.as_str().into(), durable(), arguments)
        .await?;
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
    publish_copy(channel, &retry, data, properties).await
}
