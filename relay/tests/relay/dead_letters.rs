//! `outbox-relay dead-letters ...` against a real consumer: what it dead-letters is
//! listed by saga, sent back to a consumer that now takes it, recorded as sent back
//! and audited; nothing moves when the message is gone or no reason is given, and the
//! AMQP password is never printed.

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sqlx::PgPool;
use txoutbox::wire::{ATTEMPTS_HEADER, DEAD_REASON_HEADER, dead_queue};
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, ConsumerHandle, Context, Reject};

use crate::support::*;

/// How long a test waits for the consumer to get somewhere.
const WAIT: Duration = Duration::from_secs(30);

const CONSUMER: &str = "shipping";

/// Rejects until told to accept.
async fn ship(
    _: Context<'_>,
    _: serde_json::Value,
    accepting: Arc<AtomicBool>,
) -> Result<(), BoxError> {
    if accepting.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(Reject::new("warehouse closed").into())
    }
}

/// A consumer's queues of the test's own, and a publisher.
struct Queues {
    name: String,
    connection: Connection,
    channel: Channel,
}

impl Queues {
    async fn new() -> anyhow::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "test-dead-letters-{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let queues = Self {
            name,
            connection,
            channel,
        };
        queues.config().declare(&queues.channel).await?;
        Ok(queues)
    }

    fn config(&self) -> ConsumerConfig {
        ConsumerConfig::new(&self.name)
    }

    fn consumer(
        &self,
        pool: &PgPool,
        accepting: &Arc<AtomicBool>,
    ) -> anyhow::Result<ConsumerHandle> {
        Ok(
            Consumer::new(pool.clone(), amqp_url(), CONSUMER, self.config())
                .on_with("Ship", Arc::clone(accepting), ship)
                .spawn()?,
        )
    }

    /// Publishes as the relay does: message id, correlation id = saga, type = step.
    async fn publish(&self, message_id: &str, saga_id: &str) -> anyhow::Result<()> {
        let properties = BasicProperties::default()
            .with_message_id(message_id.into())
            .with_correlation_id(saga_id.into())
            .with_type("Ship".into());
        self.channel
            .basic_publish(
                "".into(),
                self.name.as_str().into(),
                BasicPublishOptions::default(),
                br#"{"order": 7}"#,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    async fn waiting(&self, queue: &str) -> anyhow::Result<u32> {
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

    fn dead(&self) -> String {
        dead_queue(&self.name)
    }

    /// Waits until the consumer has dead-lettered `count` messages, rows and copies.
    async fn wait_for_dead(&self, pool: &PgPool, count: u32) -> anyhow::Result<()> {
        wait_until(WAIT, "the messages are dead-lettered", async || {
            Ok(self.waiting(&self.dead()).await? == count
                && dead_rows(pool).await? == i64::from(count))
        })
        .await
    }

    async fn remove(self) -> anyhow::Result<()> {
        let _ = self.config().delete(&self.channel).await;
        let _ = self.connection.close(200, "test done".into()).await;
        Ok(())
    }
}

async fn dead_rows(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM inbox_dead_letter WHERE state = 'dead'")
            .fetch_one(pool)
            .await?,
    )
}

async fn audit_rows(
    pool: &PgPool,
) -> anyhow::Result<Vec<(String, String, Option<String>, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT action, target, saga_id, reason, actor FROM txoutbox_audit ORDER BY id",
    )
    .fetch_all(pool)
    .await?)
}

/// Runs `outbox-relay dead-letters ARGS` against `pool`'s database and `amqp`.
async fn dead_letters_cli(pool: &PgPool, amqp: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut all = vec!["dead-letters"];
    all.extend_from_slice(args);
    relay_cli(
        &all,
        &[("DATABASE_URL", &database_url_of(pool)), ("AMQP_URL", amqp)],
    )
    .await
}

/// `:password@` of the test's AMQP URL, which no output may hold.
fn password_of(url: &str) -> anyhow::Result<String> {
    let uri = url
        .parse::<lapin::uri::AMQPUri>()
        .map_err(anyhow::Error::msg)?;
    Ok(format!(":{}@", uri.authority.userinfo.password))
}

fn one_id(output: &Output) -> anyhow::Result<i64> {
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let rows = listed.as_array().cloned().unwrap_or_default();
    anyhow::ensure!(rows.len() == 1, "one dead letter expected: {listed}");
    rows[0]["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no id in {listed}"))
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_dead_letter_is_found_by_its_saga_and_sent_back_to_a_consumer_that_now_takes_it(
    pool: PgPool,
) -> TestResult {
    let queues = Queues::new().await?;
    let accepting = Arc::new(AtomicBool::new(false));
    let consumer = queues.consumer(&pool, &accepting)?;
    queues.publish("m-x", "order-x").await?;
    queues.publish("m-y", "order-y").await?;
    queues.wait_for_dead(&pool, 2).await?;

    let amqp = amqp_url();
    let listed =
        dead_letters_cli(&pool, &amqp, &["list", "--saga-id", "order-x", "--json"]).await?;
    assert!(listed.status.success(), "{}", text(&listed));
    let id = one_id(&listed)?;
    let letter: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    let letter = &letter[0];
    assert_eq!(letter["queue"], queues.name.as_str());
    assert_eq!(letter["message_id"], "m-x");
    assert_eq!(letter["reason"], "rejected: warehouse closed");
    assert_eq!(letter["kind"], "rejected");
    assert_eq!(letter["payload"], serde_json::json!({"order": 7}));
    assert_eq!(letter["state"], "dead");

    let shown = dead_letters_cli(&pool, &amqp, &["show", &id.to_string()]).await?;
    assert!(shown.status.success(), "{}", text(&shown));
    let said = text(&shown);
    assert!(
        said.contains("rejected: warehouse closed") && said.contains("\"order\": 7"),
        "{said}"
    );

    accepting.store(true, Ordering::SeqCst);
    let sent = dead_letters_cli(
        &pool,
        &amqp,
        &[
            "send-back",
            &id.to_string(),
            "--reason",
            "warehouse reopened",
        ],
    )
    .await?;
    let said = text(&sent);
    assert!(sent.status.success(), "{said}");
    assert!(
        !said.contains(&password_of(&amqp)?),
        "a password leaked: {said}"
    );
    wait_until(WAIT, "the consumer takes it", async || {
        let taken: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE consumer = $1 AND saga_id = 'order-x'",
        )
        .bind(CONSUMER)
        .fetch_one(&pool)
        .await?;
        Ok(taken == 1)
    })
    .await?;
    consumer.shutdown().await?;
    assert_eq!(
        queues.waiting(&queues.dead()).await?,
        1,
        "only order-y is left in .dead"
    );
    let (state, why): (String, Option<String>) = sqlx::query_as(
        "SELECT state, sent_back_reason FROM inbox_dead_letter WHERE id = $1 AND sent_back_at IS NOT NULL",
    )
    .bind(id)
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        (state.as_str(), why.as_deref()),
        ("sent_back", Some("warehouse reopened"))
    );
    assert_eq!(
        audit_rows(&pool).await?,
        [(
            "dead_letter_send_back".to_owned(),
            id.to_string(),
            Some("order-x".to_owned()),
            "warehouse reopened".to_owned(),
            "cli".to_owned()
        )]
    );
    let waiting =
        dead_letters_cli(&pool, &amqp, &["list", "--saga-id", "order-x", "--json"]).await?;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&waiting.stdout)?,
        serde_json::json!([])
    );
    let all = dead_letters_cli(
        &pool,
        &amqp,
        &["list", "--saga-id", "order-x", "--all", "--json"],
    )
    .await?;
    assert_eq!(one_id(&all)?, id, "--all shows it, sent back");
    queues.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn send_back_all_of_a_queue_moves_every_message_with_a_fresh_set_of_attempts(
    pool: PgPool,
) -> TestResult {
    let queues = Queues::new().await?;
    let accepting = Arc::new(AtomicBool::new(false));
    let consumer = queues.consumer(&pool, &accepting)?;
    queues.publish("m-1", "order-1").await?;
    queues.publish("m-2", "order-2").await?;
    queues.wait_for_dead(&pool, 2).await?;
    // Stopped, so that what is sent back stays in the queue to be looked at.
    consumer.shutdown().await?;

    let sent = dead_letters_cli(
        &pool,
        &amqp_url(),
        &[
            "send-back",
            "--all-of",
            &queues.name,
            "--reason",
            "bug fixed",
            "--json",
        ],
    )
    .await?;
    assert!(sent.status.success(), "{}", text(&sent));
    let report: serde_json::Value = serde_json::from_slice(&sent.stdout)?;
    assert_eq!(
        report["moved"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(
        queues.waiting(&queues.dead()).await?,
        0,
        "none left in .dead"
    );
    assert_eq!(queues.waiting(&queues.name).await?, 2);
    for _ in 0..2 {
        let message = queues
            .channel
            .basic_get(
                queues.name.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("a message sent back"))?;
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert!(
            !headers.contains_key(DEAD_REASON_HEADER) && !headers.contains_key(ATTEMPTS_HEADER),
            "sent back with the consumer's headers: {headers:?}"
        );
    }
    assert_eq!(dead_rows(&pool).await?, 0, "both rows are sent back");
    let audit = audit_rows(&pool).await?;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit.iter().all(
        |(action, _, _, reason, _)| action == "dead_letter_send_back" && reason == "bug fixed"
    ));
    queues.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_dead_letter_gone_from_dead_is_refused_and_nothing_changes(pool: PgPool) -> TestResult {
    let queues = Queues::new().await?;
    let accepting = Arc::new(AtomicBool::new(false));
    let consumer = queues.consumer(&pool, &accepting)?;
    queues.publish("m-gone", "order-gone").await?;
    queues.wait_for_dead(&pool, 1).await?;
    consumer.shutdown().await?;
    queues
        .channel
        .queue_purge(queues.dead().as_str().into(), QueuePurgeOptions::default())
        .await?;
    let id: i64 = sqlx::query_scalar("SELECT id FROM inbox_dead_letter")
        .fetch_one(&pool)
        .await?;

    let sent = dead_letters_cli(
        &pool,
        &amqp_url(),
        &["send-back", &id.to_string(), "--reason", "retry"],
    )
    .await?;
    let said = text(&sent);
    assert!(!sent.status.success(), "{said}");
    let expected = format!(
        "dead letter {id} (message m-gone) is not in {}: already sent back or purged",
        queues.dead()
    );
    assert!(said.contains(&expected), "{said}");
    assert_eq!(dead_rows(&pool).await?, 1, "the row is unchanged");
    assert!(audit_rows(&pool).await?.is_empty());
    queues.remove().await
}

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn an_empty_reason_is_refused_and_a_password_is_never_printed(pool: PgPool) -> TestResult {
    let queues = Queues::new().await?;
    let accepting = Arc::new(AtomicBool::new(false));
    let consumer = queues.consumer(&pool, &accepting)?;
    queues.publish("m-1", "order-1").await?;
    queues.wait_for_dead(&pool, 1).await?;
    consumer.shutdown().await?;
    let id: i64 = sqlx::query_scalar("SELECT id FROM inbox_dead_letter")
        .fetch_one(&pool)
        .await?;
    let id = id.to_string();

    let amqp = amqp_url();
    for reason in ["", "  "] {
        let sent = dead_letters_cli(&pool, &amqp, &["send-back", &id, "--reason", reason]).await?;
        let said = text(&sent);
        assert!(!sent.status.success(), "{said}");
        assert!(said.contains("a reason is required"), "{said}");
    }
    let everything = dead_letters_cli(
        &pool,
        &amqp,
        &["send-back", "--all-of", &queues.name, "--reason", ""],
    )
    .await?;
    assert!(!everything.status.success(), "{}", text(&everything));
    assert_eq!(queues.waiting(&queues.dead()).await?, 1, "nothing moved");
    assert_eq!(dead_rows(&pool).await?, 1);
    assert!(audit_rows(&pool).await?.is_empty());

    // A broker that does not answer: the error names the node, never its password.
    let unreachable = "amqp://guest:pw-never-printed@127.0.0.1:1/%2f";
    let sent =
        dead_letters_cli(&pool, unreachable, &["send-back", &id, "--reason", "retry"]).await?;
    let said = text(&sent);
    assert!(!sent.status.success(), "{said}");
    assert!(
        !said.contains("pw-never-printed"),
        "a password leaked: {said}"
    );
    assert_eq!(dead_rows(&pool).await?, 1);
    queues.remove().await
}
