//! What the consumer tests share: a queue of each test's own, published to as the
//! relay publishes, and read back from its dead-letter queue.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use testkit::{amqp_url, drain_headers, header_text};
use txoutbox::wire::{ATTEMPTS_HEADER, dead_queue};
use txoutbox_inbox::{ConsumerConfig, DEAD_REASON_HEADER};

/// A queue of the test's own, a publisher, and the dead-letter queue to read.
pub(crate) struct Sandbox {
    pub(crate) queue: String,
    connection: Connection,
    channel: lapin::Channel,
}

impl Sandbox {
    pub(crate) async fn new() -> anyhow::Result<Self> {
        let queue = format!("test-consumer-{}", uuid_like());
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Declared as the consumers will declare them, so that nothing published
        // before one starts is lost.
        config(&queue).declare(&channel).await?;
        Ok(Self {
            queue,
            connection,
            channel,
        })
    }

    /// Publishes as the relay does: correlation_id = saga_id, type = step.
    pub(crate) async fn publish(
        &self,
        saga_id: Option<&str>,
        step: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default()
            .with_type(step.into())
            .with_message_id(uuid_like().into());
        if let Some(saga_id) = saga_id {
            properties = properties.with_correlation_id(saga_id.into());
        }
        self.publish_with(properties, body).await
    }

    pub(crate) async fn publish_with(
        &self,
        properties: BasicProperties,
        body: &[u8],
    ) -> anyhow::Result<()> {
        self.channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    pub(crate) async fn waiting(&self, queue: &str) -> anyhow::Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        Ok(self
            .channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?
            .message_count())
    }

    /// Everything in the dead-letter queue: each message's dead reason.
    pub(crate) async fn dead_reasons(&self) -> anyhow::Result<Vec<String>> {
        let letters = self.dead_letters().await?;
        Ok(letters.into_iter().map(|(reason, _)| reason).collect())
    }

    /// Everything in the dead-letter queue now, without waiting (the tests wait for
    /// what they expect first): each message's dead reason, and the handler runs it
    /// had (-1 without the header).
    pub(crate) async fn dead_letters(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let dead = self.dead_headers().await?;
        Ok(dead
            .iter()
            .map(|headers| {
                let reason = header_text(headers, DEAD_REASON_HEADER);
                let attempts = match headers.inner().get(ATTEMPTS_HEADER) {
                    Some(AMQPValue::LongLongInt(n)) => *n,
                    _ => -1,
                };
                (reason, attempts)
            })
            .collect())
    }

    /// Everything in the dead-letter queue now, without waiting: each message's
    /// headers.
    pub(crate) async fn dead_headers(&self) -> anyhow::Result<Vec<FieldTable>> {
        drain_headers(&self.channel, &dead_queue(&self.queue)).await
    }

    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        // The queues `config` declares and retries through (also after a test failed).
        let _ = config(&self.queue).delete(&self.channel).await;
        let _ = self.connection.close(200, "test done".into()).await;
        Ok(())
    }
}

/// A name no other test or run uses: process id, clock, and a counter.
pub(crate) fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The consumer config of the tests: short retries, three attempts.
pub(crate) fn config(queue: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(queue);
    config.retry_base = Duration::from_millis(100);
    config.retry_max = Duration::from_millis(400);
    config.max_attempts = 3;
    config
}

/// Rows in the test's `effects` table: one per handler run that committed.
pub(crate) async fn effects(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await?)
}

/// The `effects` table of the tests that count one row per saga: see [`record_saga`].
pub(crate) async fn create_saga_effects(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE effects (saga_id text NOT NULL)")
        .execute(pool)
        .await?;
    Ok(())
}

/// A handler whose effect is one row naming the message's saga, in the inbox's
/// transaction: a second effect of one message shows as a second row.
pub(crate) async fn record_saga(
    mut ctx: txoutbox_inbox::Context<'_>,
    _: serde_json::Value,
) -> Result<(), txoutbox_inbox::BoxError> {
    let saga_id = ctx.envelope().saga_id.clone();
    sqlx::query("INSERT INTO effects (saga_id) VALUES ($1)")
        .bind(saga_id)
        .execute(ctx.db())
        .await?;
    Ok(())
}
