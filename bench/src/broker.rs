//! A durable queue of the benchmark's own with a consumer draining it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
pub use testkit::amqp_url;

/// A durable queue, reached through the default exchange by its name, drained by a
/// consumer that counts deliveries and notes when each message id arrived.
pub struct DrainedQueue {
    /// The queue's name, also the routing key that reaches it.
    pub name: String,
    /// Deliveries so far.
    pub delivered: Arc<AtomicU64>,
    /// Arrival time per message id, when recording is on.
    pub arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    connection: Connection,
}

impl DrainedQueue {
    /// Declares a classic queue and starts draining it.
    pub async fn new(record_arrivals: bool) -> anyhow::Result<Self> {
        Self::of_type(record_arrivals, "classic").await
    }

    /// Declares a queue of `queue_type` (`classic` or `quorum`) and starts draining it.
    pub async fn of_type(record_arrivals: bool, queue_type: &str) -> anyhow::Result<Self> {
        let name = format!("bench-{}", uuid::Uuid::now_v7().simple());
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString(queue_type.into()),
        );
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        channel.basic_qos(1000, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                name.as_str().into(),
                "drain".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let delivered = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(Mutex::new(HashMap::new()));
        let (count, seen) = (Arc::clone(&delivered), Arc::clone(&arrivals));
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                if record_arrivals {
                    let id = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    seen.lock().unwrap().insert(id, Instant::now());
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Self {
            name,
            delivered,
            arrivals,
            connection,
        })
    }

    /// Deletes the queue.
    pub async fn remove(self) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await?;
        let _ = self.connection.close(200, "bench done".into()).await;
        Ok(())
    }
}

/// A 256-byte JSON body.
pub fn payload(i: u64) -> Vec<u8> {
    let head = format!("{{\"order_id\":{i:>12},\"pad\":\"");
    let mut body = head.into_bytes();
    body.resize(254, b'x');
    body.extend_from_slice(b"\"}");
    body
}
