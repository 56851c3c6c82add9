//! A broker sandbox: an exchange and a queue of a test's own, and a consumer that
//! records every delivery.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::{amqp_url, require_servers, wait_until};

/// How long the broker may take over setting a sandbox up or removing it.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// The error for a broker that did not answer in [`BROKER_TIMEOUT`]: a test fails
/// saying so, rather than waiting for ever.
fn silent(doing: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the broker did not answer in {BROKER_TIMEOUT:?} while {doing}; see \
         docs/operations/troubleshooting.md#the-broker-takes-connections-and-never-answers"
    )
}

/// A message as the sandbox's consumer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// AMQP `message_id`.
    pub message_id: String,
    /// AMQP `correlation_id`, where the relay puts the saga id.
    pub saga_id: String,
    /// AMQP `type`, where the relay puts the step.
    pub step: String,
    /// The body as JSON (`null` when it is not JSON).
    pub payload: serde_json::Value,
    /// The AMQP headers.
    pub headers: BTreeMap<String, AMQPValue>,
    /// AMQP `content_type`.
    pub content_type: Option<String>,
    /// AMQP `delivery_mode` (2 is persistent).
    pub delivery_mode: Option<u8>,
    /// The routing key it was published with.
    pub routing_key: String,
}

impl Received {
    fn from_delivery(delivery: &Delivery) -> Self {
        let props = &delivery.properties;
        let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.to_string()).unwrap_or_default();
        Self {
            message_id: text(props.message_id()),
            saga_id: text(props.correlation_id()),
            step: text(props.kind()),
            payload: serde_json::from_slice(&delivery.data).unwrap_or(serde_json::Value::Null),
            headers: props
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            content_type: props.content_type().as_ref().map(|s| s.to_string()),
            delivery_mode: *props.delivery_mode(),
            routing_key: delivery.routing_key.to_string(),
        }
    }
}

/// A topic exchange and a durable queue with names of their own (`test-ex-<uuid>`,
/// `test-q-<uuid>`) on the broker of `AMQP_URL`, and a consumer that records every
/// delivery. [`Sandbox::remove`] deletes both.
pub struct Sandbox {
    /// The exchange to publish to.
    pub exchange: String,
    /// The queue bound to it.
    pub queue: String,
    received: Arc<Mutex<Vec<Received>>>,
    connection: Connection,
}

impl Sandbox {
    /// Declares the exchange and the queue, binds them with `binding` (a topic
    /// pattern: `#` takes everything) and starts recording. Checks the servers first
    /// ([`require_servers`]).
    pub async fn new(binding: &str) -> anyhow::Result<Self> {
        require_servers();
        Self::on(&amqp_url(), binding, FieldTable::default()).await
    }

    /// [`Sandbox::new`] on the broker at `url` (one node of a cluster, say), its
    /// queue declared with `arguments` (`x-queue-type: quorum`, say).
    pub async fn on(url: &str, binding: &str, arguments: FieldTable) -> anyhow::Result<Self> {
        tokio::time::timeout(BROKER_TIMEOUT, Self::set_up(url, binding, arguments))
            .await
            .map_err(|_| silent("setting up a sandbox"))?
    }

    async fn set_up(url: &str, binding: &str, arguments: FieldTable) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let exchange = format!("test-ex-{suffix}");
        let queue = format!("test-q-{suffix}");
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, arguments)
            .await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "recorder".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let message = Received::from_delivery(&delivery);
                sink.lock().unwrap().push(message);
            }
        });
        let sandbox = Self {
            exchange,
            queue,
            received,
            connection,
        };
        sandbox.bind_queue(&sandbox.exchange, binding).await?;
        Ok(sandbox)
    }

    /// Binds another routing pattern to the queue.
    pub async fn bind(&self, binding: &str) -> anyhow::Result<()> {
        self.bind_queue(&self.exchange, binding).await
    }

    /// Declares a fanout exchange `name`, deleted with its last binding, and binds the
    /// queue to it: what a row naming an exchange of its own publishes to.
    pub async fn bind_exchange(&self, name: &str) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        let auto_delete = ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Fanout,
                auto_delete,
                FieldTable::default(),
            )
            .await?;
        self.bind_queue(name, "").await
    }

    async fn bind_queue(&self, exchange: &str, binding: &str) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Every delivery so far, in arrival order, duplicates included.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The message ids delivered so far.
    pub fn distinct_ids(&self) -> HashSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.message_id.clone())
            .collect()
    }

    /// The ids of `ids` that arrived, in the order they first arrived.
    pub fn first_arrivals_of(&self, ids: &HashSet<String>) -> Vec<String> {
        let mut seen = HashSet::new();
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| ids.contains(&r.message_id) && seen.insert(r.message_id.clone()))
            .map(|r| r.message_id.clone())
            .collect()
    }

    /// Waits until every one of `ids` has arrived, or fails after `timeout`.
    pub async fn wait_for_all(
        &self,
        ids: &HashSet<String>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let missing = || ids.difference(&self.distinct_ids()).count();
        wait_until(
            timeout,
            "every message arrived",
            async || Ok(missing() == 0),
        )
        .await
        .with_context(|| format!("{} of {} messages never arrived", missing(), ids.len()))
    }

    /// Waits until at least `count` deliveries have arrived, or fails after `timeout`.
    pub async fn wait_for_count(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let arrived = || self.received.lock().unwrap().len();
        wait_until(timeout, "enough deliveries arrived", async || {
            Ok(arrived() >= count)
        })
        .await
        .with_context(|| format!("only {} of {count} deliveries arrived", arrived()))
    }

    /// Deletes the queue and the exchange, and closes the connection.
    pub async fn remove(self) -> anyhow::Result<()> {
        tokio::time::timeout(BROKER_TIMEOUT, self.tear_down())
            .await
            .map_err(|_| silent("removing a sandbox"))?
    }

    /// A new channel on the sandbox's connection: for a test to delete the queues its
    /// consumers declared (`ConsumerConfig::delete`), so that none outlives it.
    pub async fn channel(&self) -> anyhow::Result<lapin::Channel> {
        tokio::time::timeout(BROKER_TIMEOUT, self.connection.create_channel())
            .await
            .map_err(|_| silent("opening a channel"))?
            .context("opening a channel on the sandbox's connection")
    }

    async fn tear_down(self) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        let _ = self.connection.close(200, "test done".into()).await;
        Ok(())
    }
}
