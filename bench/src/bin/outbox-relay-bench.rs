//! The relay against its ceiling, in one run on one broker: 256-byte persistent
//! JSON to a durable queue that a consumer drains.
//!
//! Run with: `cargo run --release -p bench --bin outbox-relay-bench`
//!
//! (a) raw lapin publishing with confirms, 500 per batch issued together: the ceiling.
//! (b) one relay draining 100,000 rows committed at once: rows/s and the ratio to (a).
//! (c) commit-to-consumer latency at a steady 500 messages/s: p50 and p99.
//! (d) two relays draining the same: rows/s and the ratio to (b).
//! With `--memory-backlog N`, also the `outbox-relay` binary's peak memory while it
//! drains an N-row backlog.

use std::time::{Duration, Instant};

use bench::broker::{DrainedQueue, amqp_url, payload};
use bench::{fresh_database, median};
use clap::Parser;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use outbox_relay::{Relay, RelayConfig};
use sqlx::PgPool;

#[derive(Parser)]
struct Args {
    /// Messages per throughput measurement.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Rounds of (a), (b) and (d); the report gives medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of steady load for the latency measurement.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Messages per second for the latency measurement.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// The type of the queue the messages go to: `classic` or `quorum`.
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    queue_type: String,
    /// Rows of backlog for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 0)]
    memory_backlog: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = fresh_database("outbox_bench_relay", 8).await?;
    let (mut raw, mut one, mut two) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let queue_type = args.queue_type.as_str();
        raw.push(raw_lapin(args.messages, queue_type).await?);
        one.push(relays_drain(&pool, args.messages, 1, queue_type).await?);
        two.push(relays_drain(&pool, args.messages, 2, queue_type).await?);
        eprintln!(
            "round {round}: raw {:.0}/s, one relay {:.0}/s, two relays {:.0}/s",
            raw[round - 1],
            one[round - 1],
            two[round - 1]
        );
    }
    let (raw, one, two) = (median(&raw), median(&one), median(&two));
    println!(
        "\n{} messages of 256 bytes, persistent, durable {} queue, consumer draining; median of {} rounds",
        args.messages, args.queue_type, args.rounds
    );
    println!("(a) raw lapin, confirms, 500 per batch together  {raw:>9.0} msg/s");
    println!(
        "(b) one relay draining the outbox                {one:>9.0} rows/s  ({:.2} of a)",
        one / raw
    );
    println!(
        "(d) two relays draining the outbox               {two:>9.0} rows/s  ({:.2} of b)",
        two / one
    );

    let (p50, p99, max) = latency(&pool, args.latency_seconds, args.rate, &args.queue_type).await?;
    println!(
        "(c) commit to consumer at {}/s for {}s           p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        args.rate, args.latency_seconds
    );

    if args.memory_backlog > 0 {
        let (peak_mib, rate) = memory(&pool, args.memory_backlog, &args.queue_type).await?;
        println!(
            "    outbox-relay binary, {} row backlog           peak RSS {peak_mib:.1} MiB, {rate:.0} rows/s",
            args.memory_backlog
        );
    }
    // Last, for scripts: one relay / raw lapin publishing with confirms, this run.
    println!("ratio {:.2}", one / raw);
    Ok(())
}

fn properties(i: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "saga_id".into(),
        AMQPValue::LongString(format!("saga-{}", i % 1000).into()),
    );
    headers.insert("step".into(), AMQPValue::LongString("OrderCreated".into()));
    BasicProperties::default()
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_correlation_id(format!("saga-{}", i % 1000).into())
        .with_type("OrderCreated".into())
        .with_timestamp(0)
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// (a) The ceiling: lapin alone, 500 publishes issued together, then their confirms.
async fn raw_lapin(messages: u64, queue_type: &str) -> anyhow::Result<f64> {
    let queue = DrainedQueue::of_type(false, queue_type).await?;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let bodies: Vec<Vec<u8>> = (0..messages).map(payload).collect();
    let started = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(500) {
        let publishes = chunk.iter().map(|i| {
            channel.basic_publish(
                "".into(),
                queue.name.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &bodies[*i as usize],
                properties(*i),
            )
        });
        let confirms = futures_util::future::try_join_all(publishes).await?;
        for confirm in futures_util::future::join_all(confirms).await {
            anyhow::ensure!(
                matches!(confirm?, Confirmation::Ack(None)),
                "the broker refused a publish"
            );
        }
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let _ = connection.close(200, "done".into()).await;
    queue.remove().await?;
    Ok(rate)
}

fn bench_config() -> RelayConfig {
    let mut config = RelayConfig::default();
    config.heartbeat_interval = Duration::from_millis(300);
    config.lease_ttl = Duration::from_secs(2);
    config.confirm_timeout = Duration::from_secs(2);
    config
}

/// (b) and (d): `instances` relays, their partitions balanced, then `messages` rows
/// committed in one statement; rows/s from that commit until all are confirmed.
async fn relays_drain(
    pool: &PgPool,
    messages: u64,
    instances: usize,
    queue_type: &str,
) -> anyhow::Result<f64> {
    let queue = DrainedQueue::of_type(false, queue_type).await?;
    let relays: Vec<Relay> = (0..instances)
        .map(|_| Relay::new(pool.clone(), amqp_url(), bench_config()))
        .collect();
    let metrics: Vec<_> = relays.iter().map(Relay::metrics).collect();
    let handles: Vec<_> = relays.into_iter().map(Relay::spawn).collect();
    wait_for_balance(pool, instances).await?;

    let started = Instant::now();
    fill(pool, &queue.name, messages).await?;
    while metrics.iter().map(|m| m.published_total()).sum::<u64>() < messages {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    for handle in handles {
        handle.shutdown().await?;
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "{left} rows left in the outbox");
    // Each drain pays for its own deleted rows; the next one should not pay for them too.
    sqlx::query("VACUUM outbox").execute(pool).await?;
    queue.remove().await?;
    Ok(rate)
}

async fn wait_for_balance(pool: &PgPool, instances: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held: Vec<usize> = outbox_relay::instances(pool)
            .await?
            .iter()
            .map(|i| i.partitions.len())
            .collect();
        if held.len() == instances
            && held.iter().sum::<usize>() == 64
            && held.iter().all(|h| *h >= 64 / instances)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "partitions never balanced: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `messages` rows of about 256 bytes of JSON, over 1,000 sagas, in one statement.
async fn fill(pool: &PgPool, routing_key: &str, messages: u64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload)
         SELECT 'saga-' || (i % 1000), 'OrderCreated', $1,
                jsonb_build_object('order_id', i, 'pad', repeat('x', 222))
         FROM generate_series(1, $2) i",
    )
    .bind(routing_key)
    .bind(messages as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// (c) One message per transaction at a steady `rate`; from each commit to its arrival.
async fn latency(
    pool: &PgPool,
    seconds: u64,
    rate: u64,
    queue_type: &str,
) -> anyhow::Result<(f64, f64, f64)> {
    let queue = DrainedQueue::of_type(true, queue_type).await?;
    let relay = Relay::new(pool.clone(), amqp_url(), RelayConfig::default()).spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut committed = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut i = 0u64;
    while Instant::now() < until {
        ticks.tick().await;
        let message = outbox::Message::builder(
            format!("saga-{}", i % 1000),
            "OrderCreated",
            queue.name.as_str(),
        )
        .payload(&serde_json::json!({"order_id": i, "pad": "x".repeat(222)}))?;
        let mut tx = pool.begin().await?;
        let id = outbox::enqueue(&mut *tx, &message).await?;
        tx.commit().await?;
        committed.push((id.to_string(), Instant::now()));
        i += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.shutdown().await?;
    let arrivals = queue.arrivals.lock().unwrap().clone();
    let mut latencies: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            arrivals
                .get(id)
                .map(|arrived| arrived.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    anyhow::ensure!(
        latencies.len() == committed.len(),
        "{} of {} never arrived",
        committed.len() - latencies.len(),
        committed.len()
    );
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    queue.remove().await?;
    Ok((at(0.50), at(0.99), at(1.0)))
}

/// The `outbox-relay` binary's peak resident memory while it drains `backlog` rows.
async fn memory(pool: &PgPool, backlog: u64, queue_type: &str) -> anyhow::Result<(f64, f64)> {
    let queue = DrainedQueue::of_type(false, queue_type).await?;
    for _ in 0..backlog / 100_000 {
        fill(pool, &queue.name, 100_000).await?;
    }
    fill(pool, &queue.name, backlog % 100_000).await?;
    let binary = std::env::current_exe()?.with_file_name("outbox-relay");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args(["run", "--http-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", testkit::database_url_of(pool))
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut peak_kib = 0u64;
    loop {
        peak_kib = peak_kib.max(resident_kib(pid));
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rate = backlog as f64 / started.elapsed().as_secs_f64();
    peak_kib = peak_kib.max(resident_kib(pid));
    testkit::stop(&mut child, Duration::from_secs(30)).await?;
    queue.remove().await?;
    Ok((peak_kib as f64 / 1024.0, rate))
}

/// The high-water mark of resident memory (VmHWM) of process `pid`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
