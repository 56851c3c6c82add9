//! What a row the broker refuses costs the relay, and what bounding batches by bytes
//! saves in memory.
//!
//! Run with: `cargo build --release -p txoutbox-relay && cargo run --release -p bench --bin relay-refusal-bench`
//!
//! (A) The relay library draining `--rows` small rows over `--keys` ordering keys, with
//!     and without `--bad-rows` rows among them whose `exchange` names a missing
//!     exchange (the broker closes the channel with 404): rows/s until every good row
//!     is confirmed, and the ratio. Each bad row has an ordering key of its own, so it
//!     holds back no good row. Runs interleaved; the report gives medians.
//! (B) The `outbox-relay` binary (found next to this one) draining `--big-rows` rows of
//!     `--big-row-kib` each, once with the default `--batch-max-bytes` and once with
//!     `--wide-batch-max-bytes`: peak resident memory (VmHWM) and time to drain.
//!
//! Messages go to an exchange of the bench's own, bound to a queue that keeps only the
//! newest message, so the broker holds next to nothing. Each measurement ends with a
//! line of JSON. `RUST_LOG` is passed on to the binary in (B) (default `warn`).
//!
//! `--custom-plans` runs every relay connection with `plan_cache_mode =
//! force_custom_plan`: the claim function is PL/pgSQL, whose cached generic plan,
//! made while the outbox was empty, scans the whole table for each row it claims.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bench::broker::amqp_url;
use bench::{fresh_database, median};
use clap::Parser;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use txoutbox_relay::{Relay, RelayConfig};

const DATABASE: &str = "outbox_bench_refusal";

/// The setting `--custom-plans` gives the relay's connections.
const CUSTOM_PLANS: (&str, &str) = ("plan_cache_mode", "force_custom_plan");

#[derive(Parser)]
struct Args {
    /// (A) Good rows per drain.
    #[arg(long, default_value_t = 50_000)]
    rows: u64,
    /// (A) Ordering keys the good rows are spread over.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// (A) Rows naming a missing exchange, spread among the good ones.
    #[arg(long, default_value_t = 5)]
    bad_rows: u64,
    /// (A) Drains of each kind, interleaved; the report gives medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// (A) The relay's attempts before a refused row is parked as dead.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// (A) The relay's first retry delay, in milliseconds.
    #[arg(long, default_value_t = 100)]
    retry_base_ms: u64,
    /// (A) Milliseconds the relay idles on the empty outbox before the rows commit, as
    /// a relay in service does between bursts.
    #[arg(long, default_value_t = 5000)]
    idle_ms: u64,
    /// (B) Rows of the memory measurement (0 skips it).
    #[arg(long, default_value_t = 1000)]
    big_rows: u64,
    /// (B) Size of each row's JSON string, in KiB.
    #[arg(long, default_value_t = 5 * 1024)]
    big_row_kib: u64,
    /// (B) The `--batch-max-bytes` to contrast with the default.
    #[arg(long, default_value = "64MiB")]
    wide_batch_max_bytes: String,
    /// Skip (A).
    #[arg(long)]
    skip_drain: bool,
    /// Relay connections plan every claim afresh (`plan_cache_mode = force_custom_plan`).
    #[arg(long)]
    custom_plans: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = fresh_database(DATABASE, 4).await?;
    let sink = Sink::new().await?;
    let ratio = if args.skip_drain {
        None
    } else {
        Some(refusal_cost(&pool, &sink, &args).await?)
    };
    if args.big_rows > 0 {
        memory(&pool, &sink, &args).await?;
    }
    sink.remove().await?;
    pool.close().await;
    drop_database(DATABASE).await?;
    // Last, for scripts: good rows per second with bad rows / without, in this run.
    if let Some(ratio) = ratio {
        println!("ratio {ratio:.2}");
    }
    Ok(())
}

/// (A): clean and spoiled drains, interleaved, then their medians. Returns the ratio
/// of their rates, with bad rows / without.
async fn refusal_cost(pool: &PgPool, sink: &Sink, args: &Args) -> anyhow::Result<f64> {
    // Every drain starts from an outbox vacuumed while empty, as autovacuum leaves one
    // in service; a table never vacuumed would give the first drain other plans.
    sqlx::query("VACUUM outbox").execute(pool).await?;
    let (mut clean, mut spoiled) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        // Alternate which goes first, so drift over the run falls on both.
        let order = if run % 2 == 0 {
            [0, args.bad_rows]
        } else {
            [args.bad_rows, 0]
        };
        for bad in order {
            let drain = drain(pool, sink, args, bad).await?;
            eprintln!(
                "run {}: {bad} bad rows: {:.0} rows/s, {:.2} s, {} batches, {} refusals, bad rows dead after {}",
                run + 1,
                drain.rate,
                drain.seconds,
                drain.batches,
                drain.refusals,
                drain
                    .all_dead_after
                    .map_or("-".to_owned(), |s| format!("{s:.2} s")),
            );
            if bad == 0 { &mut clean } else { &mut spoiled }.push(drain);
        }
    }
    let summary = |drains: &[Drain]| {
        let of = |f: fn(&Drain) -> f64| median(&drains.iter().map(f).collect::<Vec<_>>());
        (
            of(|d| d.rate),
            of(|d| d.seconds),
            of(|d| d.batches as f64),
            of(|d| d.refusals as f64),
        )
    };
    let (clean_rate, clean_seconds, clean_batches, _) = summary(&clean);
    let (bad_rate, bad_seconds, bad_batches, refusals) = summary(&spoiled);
    let dead: Vec<f64> = spoiled.iter().filter_map(|d| d.all_dead_after).collect();
    let dead_after = (dead.len() == spoiled.len() && !dead.is_empty()).then(|| median(&dead));
    let ratio = bad_rate / clean_rate;

    println!(
        "\n(A) {} rows of ~256 B over {} ordering keys, relay library, max_attempts {}, \
         retry base {} ms, plan_cache_mode {}; median of {} interleaved runs",
        args.rows,
        args.keys,
        args.max_attempts,
        args.retry_base_ms,
        plan_cache_mode(args),
        args.runs
    );
    println!(
        "    {:<28}{:>10}{:>10}{:>10}{:>11}{:>16}",
        "", "rows/s", "seconds", "batches", "refusals", "all bad dead"
    );
    println!(
        "    {:<28}{clean_rate:>10.0}{clean_seconds:>10.2}{clean_batches:>10.0}{:>11}{:>16}",
        "without bad rows", 0, "-"
    );
    println!(
        "    {:<28}{bad_rate:>10.0}{bad_seconds:>10.2}{bad_batches:>10.0}{refusals:>11.0}{:>16}",
        format!("with {} bad rows", args.bad_rows),
        dead_after.map_or("not all".to_owned(), |s| format!("after {s:.2} s")),
    );
    println!("    ratio, with / without: {ratio:.3}");
    println!(
        "{}",
        json!({
            "bench": "relay-refusal",
            "measurement": "drain_with_bad_rows",
            "rows": args.rows,
            "keys": args.keys,
            "bad_rows": args.bad_rows,
            "runs": args.runs,
            "plan_cache_mode": plan_cache_mode(args),
            "rows_per_s_without": clean_rate.round(),
            "rows_per_s_with": bad_rate.round(),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "batches_without": clean_batches,
            "batches_with": bad_batches,
            "refusals_with": refusals,
            "all_bad_dead_after_s": dead_after.map(|s| (s * 100.0).round() / 100.0),
        })
    );
    Ok(ratio)
}

/// One drain of (A).
struct Drain {
    /// Good rows per second, from their commit until the last one was confirmed.
    rate: f64,
    seconds: f64,
    /// Batches the relay settled, isolation groups included.
    batches: u64,
    /// Attempts the broker refused with 404.
    refusals: u64,
    /// Seconds from the commit until every bad row was dead, if they all were.
    all_dead_after: Option<f64>,
}

/// Starts a relay on connections of its own, lets it idle, commits `args.rows` good
/// rows and `bad` bad ones in one statement, and times the relay until every good row
/// is confirmed.
async fn drain(pool: &PgPool, sink: &Sink, args: &Args, bad: u64) -> anyhow::Result<Drain> {
    let mut config = RelayConfig::default();
    config.exchange = sink.exchange.clone();
    config.max_attempts = args.max_attempts;
    config.retry_base = Duration::from_millis(args.retry_base_ms);
    config.heartbeat_interval = Duration::from_millis(300);
    config.lease_ttl = Duration::from_secs(2);
    config.confirm_timeout = Duration::from_secs(2);
    // Five connections, as the binary has; new ones, so that no drain inherits the
    // plans another one left cached.
    let mut options = server()?.database(DATABASE);
    if args.custom_plans {
        options = options.options([CUSTOM_PLANS]);
    }
    let relay_pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await?;
    let relay = Relay::new(relay_pool.clone(), amqp_url(), config);
    let metrics = relay.metrics();
    let relay = relay.spawn();
    wait_for_leases(pool).await?;
    tokio::time::sleep(Duration::from_millis(args.idle_ms)).await;

    fill(pool, args, bad).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    while metrics.published_total() < args.rows {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} good rows confirmed after 30 minutes",
            metrics.published_total(),
            args.rows
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut all_dead_after = None;
    let give_up = Instant::now() + Duration::from_secs(30);
    while bad > 0 && Instant::now() < give_up {
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'dead'")
            .fetch_one(pool)
            .await?;
        if dead as u64 >= bad {
            all_dead_after = Some(started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let figures = metrics.render(None);
    relay.shutdown().await?;
    relay_pool.close().await;

    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE exchange IS NULL")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "{left} good rows left in the outbox");
    sqlx::query("DELETE FROM outbox").execute(pool).await?;
    // Each drain pays for its own deleted rows; the next one should not pay for them too.
    sqlx::query("VACUUM outbox").execute(pool).await?;
    Ok(Drain {
        rate: args.rows as f64 / seconds,
        seconds,
        batches: figure(&figures, "outbox_relay_batch_size_count"),
        refusals: figure(
            &figures,
            "outbox_relay_failures_total{reason=\"not_found\"}",
        ),
        all_dead_after,
    })
}

/// `args.rows` rows of about 256 bytes of JSON over `args.keys` keys, and `bad` rows
/// naming a missing exchange at even intervals among them, each with a key of its
/// own; one statement, so one commit.
async fn fill(pool: &PgPool, args: &Args, bad: u64) -> anyhow::Result<()> {
    let total = args.rows + bad;
    let spots: Vec<i64> = (0..bad)
        .map(|k| ((2 * k + 1) * total / (2 * bad) + 1) as i64)
        .collect();
    let missing = format!("bench-missing-{}", uuid::Uuid::now_v7().simple());
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload, exchange)
         SELECT CASE WHEN bad THEN 'bad-' || i ELSE 'saga-' || (i % $3) END,
                'OrderCreated', 'orders.created',
                jsonb_build_object('order_id', i, 'pad', repeat('x', 222)),
                CASE WHEN bad THEN $4 END
         FROM (SELECT i, i = ANY($2) AS bad FROM generate_series(1, $1) i) AS rows",
    )
    .bind(total as i64)
    .bind(&spots)
    .bind(args.keys.max(1) as i64)
    .bind(&missing)
    .execute(pool)
    .await?;
    Ok(())
}

/// Waits until one relay instance holds all 64 partitions.
async fn wait_for_leases(pool: &PgPool) -> anyhow::Result<()> {
    let what = "the relay holds all 64 partitions";
    testkit::wait_until(Duration::from_secs(30), what, async || {
        let instances = txoutbox_relay::instances(pool).await?;
        Ok(instances.iter().any(|i| i.partitions.len() == 64))
    })
    .await
}

/// The value of the sample `name` (with its labels) in a Prometheus exposition.
fn figure(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0) as u64
}

/// (B): the binary draining big rows, with the default and a wide byte bound.
async fn memory(pool: &PgPool, sink: &Sink, args: &Args) -> anyhow::Result<()> {
    let binary = std::env::current_exe()?.with_file_name("outbox-relay");
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it first with `cargo build --release -p txoutbox-relay`",
        binary.display()
    );
    let row_mib = args.big_row_kib as f64 / 1024.0;
    let mut results = Vec::new();
    for bound in [None, Some(args.wide_batch_max_bytes.as_str())] {
        let filled = Instant::now();
        fill_big(pool, args).await?;
        eprintln!(
            "filled {} rows of {row_mib:.1} MiB in {:.1} s",
            args.big_rows,
            filled.elapsed().as_secs_f64()
        );
        let url = database_url(pool, args.custom_plans);
        let peak = drain_binary(pool, sink, &binary, &url, bound, args.big_rows).await?;
        eprintln!(
            "--batch-max-bytes {}: VmHWM {:.1} MiB, drained in {:.1} s",
            bound.unwrap_or("default"),
            peak.hwm_mib,
            peak.seconds
        );
        results.push((bound.unwrap_or("4MiB (default)"), peak));
    }

    println!(
        "\n(B) outbox-relay binary draining {} rows of {row_mib:.1} MiB (a JSON string of 'x'), \
         plan_cache_mode {}",
        args.big_rows,
        plan_cache_mode(args)
    );
    println!(
        "    {:<22}{:>18}{:>14}{:>10}{:>10}",
        "--batch-max-bytes", "peak RSS (VmHWM)", "max VmRSS", "seconds", "MiB/s"
    );
    for (bound, peak) in &results {
        println!(
            "    {bound:<22}{:>14.1} MiB{:>10.1} MiB{:>10.1}{:>10.0}",
            peak.hwm_mib,
            peak.rss_mib,
            peak.seconds,
            args.big_rows as f64 * row_mib / peak.seconds
        );
    }
    let runs: Vec<_> = results
        .iter()
        .map(|(bound, peak)| {
            json!({
                "batch_max_bytes": bound.trim_end_matches(" (default)"),
                "peak_rss_mib": (peak.hwm_mib * 10.0).round() / 10.0,
                "max_sampled_rss_mib": (peak.rss_mib * 10.0).round() / 10.0,
                "seconds": (peak.seconds * 100.0).round() / 100.0,
            })
        })
        .collect();
    println!(
        "{}",
        json!({
            "bench": "relay-refusal",
            "measurement": "big_rows_memory",
            "rows": args.big_rows,
            "row_kib": args.big_row_kib,
            "plan_cache_mode": plan_cache_mode(args),
            "runs": runs,
        })
    );
    Ok(())
}

/// `args.big_rows` rows whose payload is `{"blob": "xxx…"}` of `args.big_row_kib`
/// KiB: compressible, so TOAST keeps them small on disk. Ten per statement.
async fn fill_big(pool: &PgPool, args: &Args) -> anyhow::Result<()> {
    let mut first = 1;
    while first <= args.big_rows {
        let last = (first + 9).min(args.big_rows);
        sqlx::query(
            "INSERT INTO outbox (saga_id, step, routing_key, payload)
             SELECT 'big-' || (i % 100), 'BlobStored', 'blobs.stored',
                    jsonb_build_object('blob', repeat('x', $3))
             FROM generate_series($1, $2) i",
        )
        .bind(first as i64)
        .bind(last as i64)
        .bind((args.big_row_kib * 1024) as i32)
        .execute(pool)
        .await?;
        first = last + 1;
    }
    Ok(())
}

/// Peak memory of one drain by the binary.
struct Peak {
    /// VmHWM at the end of the drain (or the largest sample, if higher).
    hwm_mib: f64,
    /// The largest VmRSS sampled while draining.
    rss_mib: f64,
    seconds: f64,
}

/// Runs the binary (with `--batch-max-bytes bound`, if given) until the outbox is
/// drained, sampling its resident memory; then stops it with SIGTERM.
async fn drain_binary(
    pool: &PgPool,
    sink: &Sink,
    binary: &std::path::Path,
    database_url: &str,
    bound: Option<&str>,
    rows: u64,
) -> anyhow::Result<Peak> {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(["run", "--exchange", &sink.exchange])
        .args(["--http-addr", "127.0.0.1:0", "--migrate"])
        .args(
            bound
                .map(|b| ["--batch-max-bytes", b])
                .into_iter()
                .flatten(),
        )
        .env("DATABASE_URL", database_url)
        .env("AMQP_URL", amqp_url())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    let started = Instant::now();
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut rss_kib = 0;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "outbox-relay exited early ({status}); is {} built from this tree? \
                 `cargo build --release -p txoutbox-relay`",
                binary.display()
            );
        }
        rss_kib = rss_kib.max(status_kib(pid, "VmRSS:"));
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state IN ('pending', 'retry')")
                .fetch_one(pool)
                .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "{left} of {rows} rows left after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let hwm_kib = status_kib(pid, "VmHWM:");
    let status = testkit::stop(&mut child, Duration::from_secs(30)).await?;
    anyhow::ensure!(status.success(), "outbox-relay stopped with {status}");
    sqlx::query("DELETE FROM outbox").execute(pool).await?;
    sqlx::query("VACUUM outbox").execute(pool).await?;
    Ok(Peak {
        // VmHWM is folded in from per-thread counters lazily: a sample can pass it.
        hwm_mib: hwm_kib.max(rss_kib) as f64 / 1024.0,
        rss_mib: rss_kib as f64 / 1024.0,
        seconds,
    })
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) of `/proc/<pid>/status`, 0 if unreadable.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A fanout exchange of the bench's own, bound to a queue that keeps only the newest
/// message (older ones are dropped, and confirms still come back as acks). The queue
/// is exclusive and the exchange auto-deleted, so both go when the bench does.
struct Sink {
    exchange: String,
    connection: Connection,
}

impl Sink {
    async fn new() -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::now_v7().simple();
        let exchange = format!("bench-refusal-{suffix}");
        let queue = format!("bench-refusal-{suffix}");
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            exchange,
            connection,
        })
    }

    async fn remove(self) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        // Closing the connection deletes the exclusive queue.
        self.connection.close(200, "bench done".into()).await?;
        Ok(())
    }
}

fn server() -> anyhow::Result<PgConnectOptions> {
    Ok(testkit::database_url().parse()?)
}

/// The URL of `pool`'s database, for the binary, with `--custom-plans` applied.
fn database_url(pool: &PgPool, custom_plans: bool) -> String {
    let mut url = testkit::database_url_of(pool);
    if custom_plans {
        // The URL has a query already (`sslmode=...`); `options` is not part of it.
        let (key, value) = CUSTOM_PLANS;
        url.push_str(&format!("&options=-c%20{key}%3D{value}"));
    }
    url
}

fn plan_cache_mode(args: &Args) -> &'static str {
    if args.custom_plans {
        CUSTOM_PLANS.1
    } else {
        "auto"
    }
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server()?)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    Ok(())
}
