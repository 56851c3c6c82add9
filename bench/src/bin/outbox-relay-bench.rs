//! The relay against its ceiling, in one run on one broker: 256-byte persistent
//! JSON to a durable queue that a consumer drains.
//!
//! Run with: `cargo build --release -p txoutbox-relay -p bench && target/release/outbox-relay-bench`
//! (the relay is measured as users run it: the release `outbox-relay` binary, found
//! next to this bench's executable or given by `--relay-binary`).
//!
//! Each round, interleaved so machine noise hits all alike:
//! (a) raw lapin publishing with confirms, 500 per batch issued together: the ceiling,
//!     in a process of its own (this bench's executable started again), like the
//!     relay, so that its CPU per message is the floor to hold the relay's against.
//! (b) one `outbox-relay` process, started on 100,000 rows committed before it
//!     starts, with its default settings: rows/s from its start until the outbox is
//!     empty, and the ratio to (a).
//! (d) two `outbox-relay` processes, running and their partitions balanced, when
//!     100,000 rows are committed at once: rows/s from that commit until the outbox
//!     is empty, and the ratio to (b).
//! For (b) and (d), CPU per row: the relay processes' (utime + stime from /proc),
//! and PostgreSQL's: every `postgres` process, and those of this bench's database
//! plus the server's background processes (the rest is other databases' work).
//! With `--in-process`, also (e): one relay on a task of this process, as the bench
//! measured it before, from the start of the 100,000-row INSERT and from its commit.
//! (c) commit-to-consumer latency at a steady 500 messages/s: p50 and p99.
//! With `--memory-backlog N`, also the `outbox-relay` binary's peak memory while it
//! drains an N-row backlog.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bench::broker::{DrainedQueue, amqp_url, payload};
use bench::{cpu, fresh_database, median};
use clap::Parser;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use sqlx::PgPool;
use tokio::process::Child;
use txoutbox_relay::{Relay, RelayConfig};

/// The bench's database, also how its backends are told from other databases'.
const DATABASE: &str = "outbox_bench_relay";

/// A drain that has not finished by then has failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// The `outbox-relay` binary to measure (default: the one next to this bench's
    /// executable, as `cargo build --release -p txoutbox-relay` leaves it).
    #[arg(long)]
    relay_binary: Option<PathBuf>,
    /// Also measure (e): one relay in this process, in this runtime, as before.
    #[arg(long)]
    in_process: bool,
    /// More flags for every `outbox-relay` process started, separated by spaces
    /// (e.g. "--batch-size 2000"), to compare settings.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    relay_flags: String,
    /// Internal: publish `--messages` to this queue as (a) does and print the rate
    /// and this process's CPU ticks; how (a) runs as a process of its own.
    #[arg(long, hide = true)]
    raw_publish_to: Option<String>,
}

/// (a) in one round: its rate and its CPU per message, in microseconds.
#[derive(Clone, Copy)]
struct Raw {
    rate: f64,
    cpu_us: f64,
}

/// One drain: its rate and what it cost per row, in microseconds of CPU.
#[derive(Clone, Copy)]
struct Drain {
    rate: f64,
    relay_us: f64,
    postgres_us: f64,
    database_us: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(queue) = &args.raw_publish_to {
        let (rate, ticks) = publish_raw(queue, args.messages).await?;
        println!("{rate} {ticks}");
        return Ok(());
    }
    let binary = match &args.relay_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("outbox-relay"),
    };
    anyhow::ensure!(
        binary.is_file(),
        "no relay binary at {}: build it with `cargo build --release -p txoutbox-relay`, or pass --relay-binary",
        binary.display()
    );
    let pool = fresh_database(DATABASE, 8).await?;
    let relay = RelayBinary {
        path: binary,
        flags: args
            .relay_flags
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        database_url: testkit::database_url_of(&pool),
        ticks_per_second: cpu::clock_ticks() as f64,
    };
    let queue_type = args.queue_type.as_str();
    let (mut raw, mut one, mut two, mut inside) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        raw.push(raw_lapin(args.messages, queue_type, relay.ticks_per_second).await?);
        one.push(backlog_drain(&pool, &relay, args.messages, queue_type).await?);
        two.push(balanced_drain(&pool, &relay, args.messages, 2, queue_type).await?);
        let (r, b, d) = (raw[round - 1], one[round - 1], two[round - 1]);
        eprintln!(
            "round {round}: raw {:.0}/s ({:.1} us/message), one relay {:.0}/s ({:.1} + {:.1} us/row relay + postgres), \
             two relays {:.0}/s ({:.1} + {:.1} us/row)",
            r.rate, r.cpu_us, b.rate, b.relay_us, b.postgres_us, d.rate, d.relay_us, d.postgres_us
        );
        if args.in_process {
            let (from_insert, from_commit) =
                in_process_drain(&pool, args.messages, queue_type).await?;
            eprintln!(
                "round {round}: one relay in-process {from_commit:.0}/s from the commit, \
                 {from_insert:.0}/s from the start of the INSERT"
            );
            inside.push((from_insert, from_commit));
        }
    }
    let raw_cpu_us = median(&raw.iter().map(|r| r.cpu_us).collect::<Vec<_>>());
    let raw = median(&raw.iter().map(|r| r.rate).collect::<Vec<_>>());
    let (one, two) = (medians(&one), medians(&two));
    println!(
        "\n{} messages of 256 bytes, persistent, durable {} queue, consumer draining; median of {} rounds",
        args.messages, args.queue_type, args.rounds
    );
    if !args.relay_flags.is_empty() {
        println!("outbox-relay flags: {}", args.relay_flags);
    }
    println!("(a) raw lapin, confirms, 500 per batch together  {raw:>9.0} msg/s");
    println!("    CPU per message: the publisher's process {raw_cpu_us:.1} us");
    println!(
        "(b) one outbox-relay, backlog before its start   {:>9.0} rows/s  ({:.2} of a)",
        one.rate,
        one.rate / raw
    );
    one.print_cpu();
    println!(
        "    the relay's CPU per row over raw lapin's per message: {:.2}",
        one.relay_us / raw_cpu_us
    );
    println!(
        "(d) two outbox-relays, balanced, then the rows   {:>9.0} rows/s  ({:.2} of b)",
        two.rate,
        two.rate / one.rate
    );
    two.print_cpu();
    if !inside.is_empty() {
        let from_insert: Vec<f64> = inside.iter().map(|(i, _)| *i).collect();
        let from_commit: Vec<f64> = inside.iter().map(|(_, c)| *c).collect();
        println!(
            "(e) one relay in this process, from the commit   {:>9.0} rows/s  ({:.2} of a)",
            median(&from_commit),
            median(&from_commit) / raw
        );
        println!(
            "    the same from the start of the INSERT        {:>9.0} rows/s  ({:.2} of a)",
            median(&from_insert),
            median(&from_insert) / raw
        );
    }

    let (p50, p99, max) = latency(&pool, args.latency_seconds, args.rate, queue_type).await?;
    println!(
        "(c) commit to consumer at {}/s for {}s           p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        args.rate, args.latency_seconds
    );

    if args.memory_backlog > 0 {
        let (peak_mib, rate) = memory(&pool, &relay, args.memory_backlog, queue_type).await?;
        println!(
            "    outbox-relay binary, {} row backlog           peak RSS {peak_mib:.1} MiB, {rate:.0} rows/s",
            args.memory_backlog
        );
    }
    // Last, for scripts: one relay / raw lapin publishing with confirms, this run.
    println!("ratio {:.2}", one.rate / raw);
    Ok(())
}

/// The median of each figure of a set of drains.
fn medians(drains: &[Drain]) -> Drain {
    let pick = |f: fn(&Drain) -> f64| median(&drains.iter().map(f).collect::<Vec<_>>());
    Drain {
        rate: pick(|d| d.rate),
        relay_us: pick(|d| d.relay_us),
        postgres_us: pick(|d| d.postgres_us),
        database_us: pick(|d| d.database_us),
    }
}

impl Drain {
    fn print_cpu(&self) {
        println!(
            "    CPU per row: relay {:.1} us, PostgreSQL {:.1} us ({:.1} us in this database's backends and the background processes)",
            self.relay_us, self.postgres_us, self.database_us
        );
    }
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

/// (a) The ceiling: lapin alone in a process of its own, 500 publishes issued
/// together, then their confirms, to a queue this process drains.
async fn raw_lapin(messages: u64, queue_type: &str, ticks_per_second: f64) -> anyhow::Result<Raw> {
    let queue = DrainedQueue::of_type(false, queue_type).await?;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--raw-publish-to", &queue.name])
        .args(["--messages", &messages.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "the raw publisher failed");
    let report = String::from_utf8(output.stdout)?;
    let mut fields = report.split_whitespace();
    let (Some(rate), Some(ticks)) = (fields.next(), fields.next()) else {
        anyhow::bail!("the raw publisher printed {report:?}");
    };
    let (rate, ticks): (f64, u64) = (rate.parse()?, ticks.parse()?);
    queue.remove().await?;
    Ok(Raw {
        rate,
        cpu_us: ticks as f64 / ticks_per_second * 1e6 / messages as f64,
    })
}

/// What (a)'s own process does: connect, publish `messages` to `queue` 500 at a
/// time with confirms; the rate and this process's CPU ticks from the first publish
/// to the last confirm (the connect and making the bodies not counted).
async fn publish_raw(queue: &str, messages: u64) -> anyhow::Result<(f64, u64)> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let bodies: Vec<Vec<u8>> = (0..messages).map(payload).collect();
    let ticks_before = cpu::ticks_of(std::process::id());
    let started = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(500) {
        let publishes = chunk.iter().map(|i| {
            channel.basic_publish(
                "".into(),
                queue.into(),
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
    let ticks = cpu::ticks_of(std::process::id()).saturating_sub(ticks_before);
    let _ = connection.close(200, "done".into()).await;
    Ok((rate, ticks))
}

/// The `outbox-relay` binary, and what it is started with.
struct RelayBinary {
    path: PathBuf,
    flags: Vec<String>,
    database_url: String,
    ticks_per_second: f64,
}

impl RelayBinary {
    /// Starts `outbox-relay run` with its defaults, plus `flags` and `--relay-flags`.
    fn start(&self, flags: &[&str]) -> anyhow::Result<Child> {
        Ok(tokio::process::Command::new(&self.path)
            .args(["run", "--http-addr", "127.0.0.1:0"])
            .args(flags)
            .args(&self.flags)
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?)
    }
}

/// What PostgreSQL and the relay processes have spent so far, to subtract from later.
struct CpuMark {
    postgres: std::collections::HashMap<u32, u64>,
    relays: u64,
}

fn cpu_mark(relays: &[u32]) -> CpuMark {
    CpuMark {
        postgres: cpu::ticks_by_pid("postgres"),
        relays: relays.iter().map(|pid| cpu::ticks_of(*pid)).sum(),
    }
}

/// Per-row CPU since `mark`, in microseconds: the relays', all of PostgreSQL's, and
/// that of this database's backends plus the server's background processes (call
/// while the relays are still connected).
async fn cpu_per_row(
    pool: &PgPool,
    relay: &RelayBinary,
    mark: &CpuMark,
    relays: &[u32],
    rows: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let now = cpu_mark(relays);
    let ours: HashSet<u32> = sqlx::query_scalar::<_, i32>(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR datname IS NULL",
    )
    .bind(DATABASE)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|pid| pid as u32)
    .collect();
    let per_row = |ticks: u64| ticks as f64 / relay.ticks_per_second * 1e6 / rows as f64;
    Ok((
        per_row(now.relays.saturating_sub(mark.relays)),
        per_row(cpu::spent(&mark.postgres, &now.postgres, |_| true)),
        per_row(cpu::spent(&mark.postgres, &now.postgres, |pid| {
            ours.contains(&pid)
        })),
    ))
}

/// Waits until the consumer has had `messages` deliveries and the outbox is empty:
/// every row published, confirmed and deleted.
async fn drained(
    pool: &PgPool,
    queue: &DrainedQueue,
    messages: u64,
    children: &mut [Child],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while queue.delivered.load(Ordering::Relaxed) < messages {
        anyhow::ensure!(Instant::now() < deadline, "the drain took too long");
        running(children)?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox)")
            .fetch_one(pool)
            .await?;
        if !left {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the drain took too long");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Fails if a relay process has exited: a drain would wait for it in vain.
fn running(children: &mut [Child]) -> anyhow::Result<()> {
    for child in children.iter_mut() {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("outbox-relay exited during the drain: {status}");
        }
    }
    Ok(())
}

/// Stops the relays (SIGTERM, as an orchestrator would), then [`clear`]s.
async fn finish(pool: &PgPool, children: Vec<Child>, queue: DrainedQueue) -> anyhow::Result<()> {
    for mut child in children {
        let status = testkit::stop(&mut child, Duration::from_secs(30)).await?;
        anyhow::ensure!(status.success(), "outbox-relay exited with {status}");
    }
    clear(pool, queue).await
}

/// Checks the outbox is empty, vacuums it so that the next drain does not pay for
/// this one's deleted rows, and removes the drained queue.
async fn clear(pool: &PgPool, queue: DrainedQueue) -> anyhow::Result<()> {
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "{left} rows left in the outbox");
    sqlx::query("VACUUM outbox").execute(pool).await?;
    queue.remove().await?;
    Ok(())
}

/// (b) `messages` rows committed, then one `outbox-relay` started with its defaults;
/// rows/s from its start until the outbox is empty.
async fn backlog_drain(
    pool: &PgPool,
    relay: &RelayBinary,
    messages: u64,
    queue_type: &str,
) -> anyhow::Result<Drain> {
    let queue = DrainedQueue::of_type(false, queue_type).await?;
    fill(pool, &queue.name, messages).await?;
    let mark = cpu_mark(&[]);
    let started = Instant::now();
    let mut children = vec![relay.start(&[])?];
    let pids: Vec<u32> = children.iter().filter_map(Child::id).collect();
    while queue.delivered.load(Ordering::Relaxed) == 0 {
        anyhow::ensure!(started.elapsed() < DRAIN_TIMEOUT, "nothing was published");
        running(&mut children)?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = started.elapsed();
    drained(pool, &queue, messages, &mut children).await?;
    let took = started.elapsed();
    let rate = messages as f64 / took.as_secs_f64();
    let (relay_us, postgres_us, database_us) =
        cpu_per_row(pool, relay, &mark, &pids, messages).await?;
    // For profilers (perf record -a, then filter by these pids).
    let backends: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(DATABASE)
    .fetch_all(pool)
    .await?;
    eprintln!(
        "    one relay (pid {pids:?}): first row published {:.0} ms after its start, {:.0} rows/s after that; \
         backends of this database {backends:?}",
        first.as_secs_f64() * 1e3,
        messages as f64 / (took - first).as_secs_f64()
    );
    finish(pool, children, queue).await?;
    Ok(Drain {
        rate,
        relay_us,
        postgres_us,
        database_us,
    })
}

/// (d) `instances` relays running, their partitions balanced (short leases and
/// heartbeats, as the library tests use, so that takes a second, not a minute),
/// then `messages` rows committed in one statement; rows/s from that commit until
/// the outbox is empty.
async fn balanced_drain(
    pool: &PgPool,
    relay: &RelayBinary,
    messages: u64,
    instances: usize,
    queue_type: &str,
) -> anyhow::Result<Drain> {
    let queue = DrainedQueue::of_type(false, queue_type).await?;
    let flags = [
        "--heartbeat-interval",
        "300ms",
        "--lease-ttl",
        "2s",
        "--confirm-timeout",
        "2s",
    ];
    let mut children = (0..instances)
        .map(|_| relay.start(&flags))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pids: Vec<u32> = children.iter().filter_map(Child::id).collect();
    wait_for_balance(pool, instances).await?;
    fill(pool, &queue.name, messages).await?;
    // From the commit: the INSERT's own time and CPU are the writer's, not the relays'.
    let started = Instant::now();
    let mark = cpu_mark(&pids);
    drained(pool, &queue, messages, &mut children).await?;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let (relay_us, postgres_us, database_us) =
        cpu_per_row(pool, relay, &mark, &pids, messages).await?;
    finish(pool, children, queue).await?;
    Ok(Drain {
        rate,
        relay_us,
        postgres_us,
        database_us,
    })
}

fn bench_config() -> RelayConfig {
    let mut config = RelayConfig::default();
    config.heartbeat_interval = Duration::from_millis(300);
    config.lease_ttl = Duration::from_secs(2);
    config.confirm_timeout = Duration::from_secs(2);
    config
}

/// (e) One relay on a task of this process, in the runtime that also runs the
/// consumer, then `messages` rows committed in one statement: rows/s from the start
/// of that INSERT (as this bench measured before) and from its commit.
async fn in_process_drain(
    pool: &PgPool,
    messages: u64,
    queue_type: &str,
) -> anyhow::Result<(f64, f64)> {
    let queue = DrainedQueue::of_type(false, queue_type).await?;
    let relay = Relay::new(pool.clone(), amqp_url(), bench_config());
    let metrics = relay.metrics();
    let handle = relay.spawn();
    wait_for_balance(pool, 1).await?;

    let started = Instant::now();
    fill(pool, &queue.name, messages).await?;
    let committed = Instant::now();
    while metrics.published_total() < messages {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let from_insert = messages as f64 / started.elapsed().as_secs_f64();
    let from_commit = messages as f64 / committed.elapsed().as_secs_f64();
    handle.shutdown().await?;
    clear(pool, queue).await?;
    Ok((from_insert, from_commit))
}

async fn wait_for_balance(pool: &PgPool, instances: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held: Vec<usize> = txoutbox_relay::instances(pool)
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
    // The relay shares the bench's pool with the writer, as in a service: every
    // connection of it opened now, so that none is opened (~90 ms with TLS) while
    // rows wait.
    let connections = pool.options().get_max_connections();
    txoutbox::postgres::open_ahead(pool, connections, std::future::pending()).await;
    let relay = Relay::new(pool.clone(), amqp_url(), RelayConfig::default()).spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut committed = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut i = 0u64;
    while Instant::now() < until {
        ticks.tick().await;
        let message = txoutbox::Message::builder(
            format!("saga-{}", i % 1000),
            "OrderCreated",
            queue.name.as_str(),
        )
        .payload(&serde_json::json!({"order_id": i, "pad": "x".repeat(222)}))?;
        let mut tx = pool.begin().await?;
        let id = txoutbox::enqueue(&mut *tx, &message).await?;
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
async fn memory(
    pool: &PgPool,
    relay: &RelayBinary,
    backlog: u64,
    queue_type: &str,
) -> anyhow::Result<(f64, f64)> {
    let queue = DrainedQueue::of_type(false, queue_type).await?;
    for _ in 0..backlog / 100_000 {
        fill(pool, &queue.name, 100_000).await?;
    }
    fill(pool, &queue.name, backlog % 100_000).await?;
    let started = Instant::now();
    let mut child = relay.start(&[])?;
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
