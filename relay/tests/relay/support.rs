//! What the relay tests share: a broker sandbox, a consumer that records, relay
//! processes, and a TCP proxy that injects network faults.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox::Message;
use sqlx::PgPool;

use tokio::process::{Child, Command};

pub(crate) type TestResult = anyhow::Result<()>;

pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The URL of the database `#[sqlx::test]` made for this test, for a child process.
pub(crate) fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = base.split('?').next().unwrap_or(&base);
    let server = &base[..base.rfind('/').unwrap_or(base.len())];
    let database = pool
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    format!("{server}/{database}")
}

/// A message as a consumer saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) message_id: String,
    pub(crate) saga_id: String,
    pub(crate) step: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) headers: BTreeMap<String, AMQPValue>,
    pub(crate) content_type: Option<String>,
    pub(crate) delivery_mode: Option<u8>,
    pub(crate) routing_key: String,
}

/// A topic exchange and a queue of this test's own, bound with `binding`, and a
/// consumer that records everything delivered.
pub(crate) struct Sandbox {
    pub(crate) exchange: String,
    pub(crate) queue: String,
    received: Arc<Mutex<Vec<Received>>>,
    connection: Connection,
}

impl Sandbox {
    pub(crate) async fn new(binding: &str) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let exchange = format!("test-ex-{suffix}");
        let queue = format!("test-q-{suffix}");
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "recorder".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let props = &delivery.properties;
                let headers = props
                    .headers()
                    .as_ref()
                    .map(|h| {
                        h.inner()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let text = |s: &Option<lapin::types::ShortString>| {
                    s.as_ref().map(|s| s.to_string()).unwrap_or_default()
                };
                sink.lock().unwrap().push(Received {
                    message_id: text(props.message_id()),
                    saga_id: text(props.correlation_id()),
                    step: text(props.kind()),
                    payload: serde_json::from_slice(&delivery.data)
                        .unwrap_or(serde_json::Value::Null),
                    headers,
                    content_type: props.content_type().as_ref().map(|s| s.to_string()),
                    delivery_mode: *props.delivery_mode(),
                    routing_key: delivery.routing_key.to_string(),
                });
            }
        });
        Ok(Self {
            exchange,
            queue,
            received,
            connection,
        })
    }

    /// Binds another routing pattern to the queue.
    pub(crate) async fn bind(&self, binding: &str) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub(crate) fn distinct_ids(&self) -> HashSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.message_id.clone())
            .collect()
    }

    /// Waits until `ids` have all arrived, or fails after `timeout`.
    pub(crate) async fn wait_for_all(
        &self,
        ids: &HashSet<String>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.distinct_ids();
            let missing = ids.difference(&seen).count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("{missing} of {} messages never arrived", ids.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `count` deliveries arrived.
    pub(crate) async fn wait_for_count(
        &self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.received.lock().unwrap().len() < count {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "only {} of {count} deliveries arrived",
                    self.received.lock().unwrap().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub(crate) async fn remove(self) -> anyhow::Result<()> {
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

static WRITTEN: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Writes `per_key` messages for each of `keys` ordering keys, interleaved, with
/// payload `{"key": k, "n": n}`, `n` growing in write order; returns their ids.
pub(crate) async fn fill(
    pool: &PgPool,
    keys: usize,
    per_key: usize,
    routing_key: &str,
) -> anyhow::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let mut batch = Vec::new();
    for _ in 0..per_key {
        for k in 0..keys {
            // One counter for the whole test binary: `n` grows in write order across calls.
            let n = WRITTEN.fetch_add(1, Ordering::SeqCst);
            let message = Message::builder(format!("saga-{k}"), format!("step-{n}"), routing_key)
                .payload(&serde_json::json!({"key": k, "n": n}))?;
            batch.push(message);
            if batch.len() == 1000 {
                ids.extend(
                    outbox::enqueue_batch(pool, &batch)
                        .await?
                        .iter()
                        .map(|id| id.to_string()),
                );
                batch.clear();
            }
        }
    }
    ids.extend(
        outbox::enqueue_batch(pool, &batch)
            .await?
            .iter()
            .map(|id| id.to_string()),
    );
    Ok(ids)
}

/// Asserts that, per key, messages first arrived in write order (`n` ascending).
/// Duplicates after a failure are allowed; a message overtaking an earlier one is not.
pub(crate) fn assert_order_per_key(received: &[Received]) {
    let mut seen = HashSet::new();
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for message in received {
        if !seen.insert(message.message_id.clone()) {
            continue;
        }
        let key = message.payload["key"].as_i64().expect("key");
        let n = message.payload["n"].as_i64().expect("n");
        if let Some(previous) = last.insert(key, n) {
            assert!(
                n > previous,
                "key {key}: message {n} arrived first after {previous}"
            );
        }
    }
}

/// The ids of `ids` in the order they first arrived.
pub(crate) fn first_arrivals_of(received: &[Received], ids: &HashSet<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    received
        .iter()
        .filter(|r| ids.contains(&r.message_id) && seen.insert(r.message_id.clone()))
        .map(|r| r.message_id.clone())
        .collect()
}

pub(crate) async fn unsent(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state <> 'sent'")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until the outbox has no unsent rows.
pub(crate) async fn wait_until_drained(pool: &PgPool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = unsent(pool).await?;
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{left} rows still unsent");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Relay settings that make failover quick enough for a test.
pub(crate) fn fast_config(exchange: &str) -> outbox_relay::RelayConfig {
    let mut config = outbox_relay::RelayConfig::default();
    config.exchange = exchange.to_owned();
    config.lease_ttl = Duration::from_secs(2);
    config.heartbeat_interval = Duration::from_millis(300);
    config.confirm_timeout = Duration::from_secs(2);
    config.poll_interval = Duration::from_millis(200);
    config.retry_base = Duration::from_millis(50);
    config.retry_max = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(5);
    config
}

/// Starts the `outbox-relay` binary with fast failover settings and `extra` flags.
pub(crate) fn spawn_relay(
    database_url: &str,
    amqp_url: &str,
    exchange: &str,
    extra: &[&str],
) -> anyhow::Result<Child> {
    let child = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["run", "--exchange", exchange, "--http-addr", "127.0.0.1:0"])
        .args([
            "--lease-ttl",
            "2s",
            "--heartbeat-interval",
            "300ms",
            "--confirm-timeout",
            "2s",
        ])
        .args([
            "--poll-interval",
            "200ms",
            "--retry-base",
            "50ms",
            "--retry-max",
            "200ms",
        ])
        .args(extra)
        .env("DATABASE_URL", database_url)
        .env("AMQP_URL", amqp_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// Sends SIGTERM to a child process.
pub(crate) fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("child already exited"))?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    Ok(())
}

pub(crate) use testkit::FaultyProxy;
