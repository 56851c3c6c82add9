//! The broker's side of sending back: `{queue}.dead` read with `basic.get`, every
//! message held unacked while the scan goes on (so that one passed over is not got
//! again), a copy published back to `{queue}` and confirmed before its dead letter
//! is acked, and what was passed over released at the end.
//!
//! A scan looks at the messages that were in `.dead` when it began, at most
//! [`SCAN_BOUND`]: dead letters that arrive meanwhile (a message sent back that fails
//! again) wait for the next scan. What is passed over is released with
//! `basic.nack` and requeue: on RabbitMQ 4.3 and later that does not count toward a
//! quorum queue's delivery limit; on 4.0 to 4.2 it does (`.dead` has the default limit
//! of 20 there), so sending one message back from a long `.dead` many times over
//! wears the others' count down.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use txoutbox::nodes::Nodes;
use txoutbox::wire::{ATTEMPTS_HEADER, DEAD_REASON_HEADER, LAST_ERROR_HEADER, dead_queue};

use super::Refusal;
use crate::error::{Error, Result};

/// The most messages one scan looks at.
pub(super) const SCAN_BOUND: u32 = 10_000;

/// How long connecting to one node may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the broker may take to confirm one copy.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The headers a consumer's retries and dead-lettering add: removed from a message
/// sent back, so that it gets a fresh set of attempts.
const CONSUMER_HEADERS: [&str; 3] = [ATTEMPTS_HEADER, DEAD_REASON_HEADER, LAST_ERROR_HEADER];

/// A scan of one queue's `.dead`, on a confirming channel of its own.
pub(super) struct DeadQueue {
    connection: Connection,
    channel: Channel,
    queue: String,
    dead: String,
    /// Messages still to look at, of those there when the scan began.
    left: u32,
    /// Messages got so far.
    got: usize,
    /// More were there than one scan looks at.
    pub(super) bound_reached: bool,
    /// Tags of the messages got and passed over, released at the end.
    passed_over: Vec<u64>,
}

impl DeadQueue {
    /// Connects to the first node of `amqp_url` that lets it in, and counts what
    /// waits in `{queue}.dead`.
    pub(super) async fn open(amqp_url: &str, queue: &str) -> Result<Self> {
        let connection = connect(&Nodes::parse(amqp_url)?).await?;
        let opened = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let dead = dead_queue(queue);
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let waiting = channel
                .queue_declare(dead.as_str().into(), passive, FieldTable::default())
                .await?
                .message_count();
            Ok::<_, lapin::Error>((channel, dead, waiting))
        }
        .await;
        let (channel, dead, waiting) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                let _ = connection.close(200, "dead letters: stopping".into()).await;
                return Err(error.into());
            }
        };
        Ok(Self {
            connection,
            channel,
            queue: queue.to_owned(),
            dead,
            left: waiting.min(SCAN_BOUND),
            got: 0,
            bound_reached: waiting > SCAN_BOUND,
            passed_over: Vec::new(),
        })
    }

    /// The queue messages are sent back to.
    pub(super) fn queue(&self) -> &str {
        &self.queue
    }

    /// How many messages the scan got so far.
    pub(super) fn scanned(&self) -> usize {
        self.got
    }

    /// The next message to look at, held unacked; none once the scan has seen what
    /// was there when it began.
    pub(super) async fn next(&mut self) -> Result<Option<Delivery>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let options = BasicGetOptions { no_ack: false };
        let got = self
            .channel
            .basic_get(self.dead.as_str().into(), options)
            .await?;
        self.got += usize::from(got.is_some());
        Ok(got.map(|message| message.delivery))
    }

    /// Leaves `delivery` in `.dead`: released when the scan ends.
    pub(super) fn pass_over(&mut self, delivery: &Delivery) {
        self.passed_over.push(delivery.delivery_tag);
    }

    /// Publishes `delivery` back to its queue, without the consumer's headers, and
    /// waits for the broker's confirm. An error leaves it in `.dead`.
    pub(super) async fn publish_back(&mut self, delivery: &Delivery) -> Result<()> {
        let published = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                fresh(&delivery.properties),
            )
            .await;
        let confirm = match published {
            Ok(confirm) => tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await,
            Err(error) => Ok(Err(error)),
        };
        let refused = |why: String| {
            Error::from(Refusal::NotTaken {
                queue: self.queue.clone(),
                why,
            })
        };
        let outcome = match confirm {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(refused(format!(
                "no queue named {} (the message was returned)",
                self.queue
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(refused("the broker nacked it".to_owned())),
            Ok(Ok(Confirmation::NotRequested)) => Err(Error::Unconfirmed),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(Error::ConfirmTimeout(CONFIRM_TIMEOUT)),
        };
        if outcome.is_err() {
            self.pass_over(delivery);
        }
        outcome
    }

    /// Takes `delivery` out of `.dead`, once its copy is confirmed in its queue.
    pub(super) async fn ack(&self, delivery: &Delivery) -> Result<()> {
        self.channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        Ok(())
    }

    /// Releases what was passed over back to `.dead`, and closes the connection.
    pub(super) async fn close(self) -> Result<()> {
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let mut released = Ok(());
        for tag in &self.passed_over {
            if let Err(error) = self.channel.basic_nack(*tag, requeue).await {
                // Closing the channel gives back the rest all the same.
                released = Err(error.into());
                break;
            }
        }
        let _ = self.channel.close(200, "dead letters: done".into()).await;
        let _ = self
            .connection
            .close(200, "dead letters: done".into())
            .await;
        released
    }
}

/// The first node of `nodes` that lets us in, each tried for [`CONNECT_TIMEOUT`].
/// Logs and errors name nodes only as redacted.
async fn connect(nodes: &Nodes) -> Result<Connection> {
    let properties = || {
        ConnectionProperties::default()
            .with_connection_name("outbox-relay dead-letters send-back".into())
    };
    let mut last = None;
    for node in nodes.iter() {
        let connecting = Connection::connect_uri(node.uri().clone(), properties());
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => {
                tracing::warn!(%node, %error, "could not connect to the broker node");
                last = Some(Error::Broker(error));
            }
            Err(_) => {
                tracing::warn!(%node, "the broker node did not let us in in time");
                last = Some(Error::ConnectTimeout(CONNECT_TIMEOUT));
            }
        }
    }
    Err(last.unwrap_or(Error::ConnectTimeout(CONNECT_TIMEOUT)))
}

/// `properties` without the consumer's headers.
fn fresh(properties: &BasicProperties) -> BasicProperties {
    let Some(headers) = properties.headers() else {
        return properties.clone();
    };
    let kept: FieldTable = headers
        .inner()
        .iter()
        .filter(|(name, _)| !CONSUMER_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    properties.clone().with_headers(kept)
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, LongString};

    use super::*;

    #[test]
    fn a_message_sent_back_loses_the_consumer_headers_and_keeps_the_rest() {
        let mut headers = FieldTable::default();
        for name in CONSUMER_HEADERS {
            headers.insert(name.into(), AMQPValue::LongLongInt(3));
        }
        headers.insert(
            "tenant".into(),
            AMQPValue::LongString(LongString::from("acme")),
        );
        let properties = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(headers);
        let sent = fresh(&properties);
        let kept = sent.headers().clone().unwrap_or_default();
        assert_eq!(
            kept.inner().keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["tenant"]
        );
        assert_eq!(sent.message_id(), properties.message_id());
    }
}
