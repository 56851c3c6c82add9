//! What only the relay tests share: a migrator that checks the servers first, an
//! outbox to fill, order per key to check, relay settings and processes. The broker
//! sandbox, URLs, waits, proxy and signals come from `testkit`.

use std::collections::{BTreeMap, HashSet};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::process::{Child, Command};
use txoutbox::Message;

pub(crate) use testkit::{
    FaultyProxy, Received, Sandbox, amqp_url, amqp_url_as, database_url_of, http_get, stop,
    wait_until,
};

pub(crate) type TestResult = anyhow::Result<()>;

/// The outbox's migrations, applied only once the servers are known to be up:
/// `#[sqlx::test(migrator = "crate::support::MIGRATOR")]`.
pub(crate) static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

static WRITTEN: AtomicI64 = AtomicI64::new(0);

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
                    txoutbox::enqueue_batch(pool, &batch)
                        .await?
                        .iter()
                        .map(|id| id.to_string()),
                );
                batch.clear();
            }
        }
    }
    ids.extend(
        txoutbox::enqueue_batch(pool, &batch)
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

pub(crate) async fn unsent(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state <> 'sent'")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until the outbox has no unsent rows.
pub(crate) async fn wait_until_drained(pool: &PgPool, timeout: Duration) -> anyhow::Result<()> {
    wait_until(timeout, "the outbox has no unsent rows", async || {
        Ok(unsent(pool).await? == 0)
    })
    .await
}

/// Relay settings that make failover quick enough for a test.
pub(crate) fn fast_config(exchange: &str) -> txoutbox_relay::RelayConfig {
    let mut config = txoutbox_relay::RelayConfig::default();
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

/// Starts the `outbox-relay` binary with fast failover settings and `extra` flags, its
/// logs kept with the test's output.
pub(crate) fn spawn_relay(
    database_url: &str,
    amqp_url: &str,
    exchange: &str,
    extra: &[&str],
) -> anyhow::Result<Child> {
    let mut child = relay_command(database_url, amqp_url, exchange, "127.0.0.1:0")
        .args(extra)
        .spawn()?;
    testkit::forward_stderr(&mut child);
    Ok(child)
}

/// `outbox-relay run` with fast failover settings and its HTTP endpoints on
/// `http_addr`, its logs (from `info`) piped for the test to read or pass on with
/// `testkit::forward_stderr`; add flags, or change the environment and where output
/// goes, before spawning it.
pub(crate) fn relay_command(
    database_url: &str,
    amqp_url: &str,
    exchange: &str,
    http_addr: &str,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    command
        .args(["run", "--exchange", exchange, "--http-addr", http_addr])
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
        .env("DATABASE_URL", database_url)
        .env("AMQP_URL", amqp_url)
        .env("RUST_LOG", "info,lapin::returned_messages=off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits (up to 20 s) for the first moment a relay on this database is idle and
/// asks writers to ring (`listening`), looking every millisecond.
pub(crate) async fn first_idle(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listening: Option<bool> =
            sqlx::query_scalar("SELECT bool_or(listening) FROM outbox_relay_instance")
                .fetch_one(pool)
                .await?;
        if listening == Some(true) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the relay never went idle");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs the `outbox-relay` binary with `args`, with only `env` for its URLs (neither
/// of the test's own leaks in), bounded to 30 s.
pub(crate) async fn relay_cli(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL");
    for (name, value) in env {
        command.env(name, value);
    }
    Ok(tokio::time::timeout(Duration::from_secs(30), command.output()).await??)
}

/// What a command printed, stdout then stderr.
pub(crate) fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
