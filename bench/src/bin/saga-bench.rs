//! What a saga costs end to end: three-step sagas through relays, an orchestrator and
//! three participants (library tasks in one process, wired as in
//! saga/tests/orchestrated.rs; the participants' handlers do nothing), against a plain
//! request/reply through the same relays and consumers without the saga engine.
//!
//! Run with: `cargo run --release -p bench --bin saga-bench`
//!
//! (a) Throughput: `--sagas` started at once, in transactions of `--batch` sagas, then
//!     the time until every one is completed: sagas/s, median of `--runs`. Baseline:
//!     three requests per saga, started the same way, each answered by an echo
//!     consumer with one outbox row and the answer handled by a reply consumer.
//! (b) Latency at a steady `--rate` sagas/s for `--seconds`: the step round trip, from
//!     one `command_sent` to the next of the same saga (both `saga_event.occurred_at`,
//!     `clock_timestamp()` in the committing transaction), p50/p99/max over all steps,
//!     split at the participant's and the orchestrator's inbox rows; and the whole
//!     saga, `started` to `completed`, p50/p99.
//! (c) Baseline latency: requests at three times the saga rate (the same messages per
//!     second), from the request's `clock_timestamp()` in its transaction to the reply
//!     handler's in its: command committed, relayed, handled with a reply through the
//!     outbox, relayed, handled.
//! (d) A parallel group: the same three steps with the first two side by side, at
//!     (b)'s rate for (b)'s seconds: the whole saga, `started` to `completed`, p50/p99,
//!     against (b)'s sagas whose steps run one after another.
//!
//! Only configuration is tuned (flags below); the engine is as it ships.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bench::broker::amqp_url;
use bench::{fresh_database, median};
use clap::Parser;
use futures_util::{StreamExt, TryStreamExt};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, ConsumerHandle, Context};
use txoutbox_relay::{Relay, RelayConfig, RelayHandle};
use txoutbox_saga::participant::{SagaCommands, Verdict};
use txoutbox_saga::{
    Orchestrator, OrchestratorConfig, OrchestratorHandle, Registry, Saga, SagaState,
};

#[derive(Parser, Clone)]
struct Args {
    /// Sagas per throughput run.
    #[arg(long, default_value_t = 2_000)]
    sagas: u64,
    /// Sagas started per transaction in the throughput runs.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Throughput runs; the report gives medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sagas per second for the latency measurement.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds of steady load for the latency measurement.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Relay instances.
    #[arg(long, default_value_t = 1)]
    relays: usize,
    /// The relays' fallback poll, in milliseconds (an idle relay is woken by NOTIFY).
    #[arg(long, default_value_t = 1_000)]
    relay_poll_ms: u64,
    /// Prefetch of every consumer (participants, orchestrator, baseline).
    #[arg(long, default_value_t = 32)]
    prefetch: u16,
    /// Handlers at once in every consumer.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Handlers at once in the orchestrator's and the baseline's reply consumers,
    /// which take three messages for each one a participant takes (default: as
    /// `--concurrency`).
    #[arg(long)]
    reply_concurrency: Option<usize>,
    /// The orchestrator's sweep interval, in milliseconds.
    #[arg(long, default_value_t = 500)]
    sweep_ms: u64,
}

/// The goals of the issue.
const GOAL_P50_STEP_MS: f64 = 10.0;
const GOAL_SAGAS_PER_S: f64 = 200.0;
const AIM_SAGAS_PER_S: f64 = 500.0;

/// The participants: the service, and the routing pattern of its commands.
const SERVICES: [&str; 3] = ["inventory", "payment", "shipping"];

#[derive(Serialize, Deserialize)]
struct Job {
    n: u64,
}

fn definition() -> Saga<Job> {
    Saga::<Job>::define("bench", 1)
        .step("reserve")
        .action("inventory.reserve", |j| j.n)
        .compensate("inventory.release", |j| j.n)
        .step("charge")
        .action("payment.charge", |j| j.n)
        .compensate("payment.refund", |j| j.n)
        .step("ship")
        .action("shipping.schedule", |j| j.n)
        .build()
        .expect("a valid definition")
}

/// (d): the first two steps of [`definition`] side by side.
fn parallel_definition() -> Saga<Job> {
    Saga::<Job>::define("bench_parallel", 1)
        .parallel(|p| {
            p.step("reserve")
                .action("inventory.reserve", |j| j.n)
                .compensate("inventory.release", |j| j.n)
                .step("charge")
                .action("payment.charge", |j| j.n)
                .compensate("payment.refund", |j| j.n)
        })
        .step("ship")
        .action("shipping.schedule", |j| j.n)
        .build()
        .expect("a valid definition")
}

async fn done(_: Context<'_>, _: serde_json::Value) -> Result<Verdict<()>, BoxError> {
    Ok(Verdict::Done(()))
}

async fn undone(_: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    Ok(())
}

/// The baseline's participant: answers each request with one outbox row.
async fn echo(mut ctx: Context<'_>, request: serde_json::Value) -> Result<(), BoxError> {
    ctx.emit("pong", "echo.reply", &request).await?;
    Ok(())
}

/// The baseline's requester: notes when the answer was handled.
async fn answered(mut ctx: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    let id = ctx.envelope().saga_id.clone();
    sqlx::query("UPDATE pings SET replied_at = clock_timestamp() WHERE id = $1")
        .bind(id)
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// Everything the bench runs, on an exchange and queues of its own.
struct Rig {
    relays: Vec<RelayHandle>,
    consumers: Vec<ConsumerHandle>,
    orchestrator: OrchestratorHandle,
    queues: Vec<ConsumerConfig>,
    exchange: String,
    broker: Connection,
}

impl Rig {
    async fn start(pool: &PgPool, args: &Args) -> anyhow::Result<Self> {
        let exchange = format!("saga-bench-{}", uuid::Uuid::now_v7().simple());
        let config = |name: &str, pattern: &str| {
            let mut config = ConsumerConfig::new(format!("{exchange}-{name}"));
            config.prefetch = args.prefetch;
            config.concurrency = args.concurrency;
            config.bind(&exchange, pattern)
        };
        let mut queues: Vec<ConsumerConfig> = SERVICES
            .iter()
            .map(|service| config(service, &format!("{service}.*")))
            .collect();
        queues.push(
            config(
                "orchestrator",
                &txoutbox_saga::wire::reply_routing_key("bench"),
            )
            .bind(
                &exchange,
                txoutbox_saga::wire::reply_routing_key("bench_parallel"),
            ),
        );
        queues.extend(SERVICES.map(|service| config(&format!("echo-{service}"), service)));
        queues.push(config("echo-replies", "echo.reply"));
        let broker = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = broker.create_channel().await?;
        let options = ExchangeDeclareOptions::default();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await?;
        for queue in &queues {
            queue.declare(&channel).await?;
        }

        let relays = (0..args.relays)
            .map(|_| {
                let mut config = RelayConfig::default();
                config.exchange = exchange.clone();
                config.poll_interval = Duration::from_millis(args.relay_poll_ms);
                Relay::new(pool.clone(), amqp_url(), config).spawn()
            })
            .collect();
        let consumer =
            |i: usize, name: &str| Consumer::new(pool.clone(), amqp_url(), name, queues[i].clone());
        let consumers = vec![
            (consumer(0, "inventory"))
                .action("inventory.reserve", done)
                .compensation("inventory.release", undone)
                .spawn()?,
            (consumer(1, "payment"))
                .action("payment.charge", done)
                .compensation("payment.refund", undone)
                .spawn()?,
            (consumer(2, "shipping"))
                .action("shipping.schedule", done)
                .spawn()?,
            consumer(4, "echo-inventory").on("ping", echo).spawn()?,
            consumer(5, "echo-payment").on("ping", echo).spawn()?,
            consumer(6, "echo-shipping").on("ping", echo).spawn()?,
            consumer(7, "echo-replies").on("pong", answered).spawn()?,
        ];
        let mut config = OrchestratorConfig::new(&exchange);
        config.consumer = queues[3].clone();
        config.sweep_interval = Duration::from_millis(args.sweep_ms);
        let registry = Registry::new()
            .register(definition())
            .register(parallel_definition());
        let orchestrator = Orchestrator::new(pool.clone(), amqp_url(), registry, config).spawn()?;
        wait_for_relays(pool, args.relays).await?;
        Ok(Self {
            relays,
            consumers,
            orchestrator,
            queues,
            exchange,
            broker,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.orchestrator.shutdown().await?;
        for consumer in self.consumers {
            consumer.shutdown().await?;
        }
        for relay in self.relays {
            relay.shutdown().await?;
        }
        let channel = self.broker.create_channel().await?;
        for config in &self.queues {
            config.delete(&channel).await?;
        }
        channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        let _ = self.broker.close(200, "bench done".into()).await;
        Ok(())
    }
}

/// Until the relays hold every partition between them.
async fn wait_for_relays(pool: &PgPool, instances: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: Vec<usize> = txoutbox_relay::instances(pool)
            .await?
            .iter()
            .map(|i| i.partitions.len())
            .collect();
        if held.len() == instances && held.iter().sum::<usize>() == 64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "partitions never all held: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where this database's backends are, sampled every 10 ms until `stop` fires: a wait
/// event, running (`CPU`), or in a transaction waiting for its client (`app`).
async fn sample_waits(
    pool: PgPool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut seen = BTreeMap::new();
    loop {
        let now: Vec<String> = sqlx::query_scalar(
            "SELECT CASE WHEN state = 'idle in transaction' THEN 'app (idle in transaction)'
                         ELSE coalesce(wait_event_type || ':' || wait_event, 'CPU') END
             FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND state IN ('active', 'idle in transaction')
               AND query NOT LIKE 'LISTEN%'",
        )
        .fetch_all(&pool)
        .await?;
        for key in now {
            *seen.entry(key).or_insert(0) += 1;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = &mut stop => return Ok(seen),
        }
    }
}

/// The commonest of `seen`, as shares of all samples.
fn top(seen: &BTreeMap<String, u64>) -> String {
    let total: u64 = seen.values().sum();
    let mut by_count: Vec<_> = seen.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1));
    let shares: Vec<String> = by_count
        .iter()
        .take(6)
        .map(|(k, n)| format!("{k} {:.0}%", 100.0 * **n as f64 / total.max(1) as f64))
        .collect();
    shares.join(", ")
}

/// The machine's CPU time so far, busy and in all, in clock ticks (`/proc/stat`).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let total = ticks.iter().sum();
    (total - idle, total)
}

/// The machine's CPU busy share between two [`cpu_ticks`], in percent.
fn busy(from: (u64, u64), to: (u64, u64)) -> f64 {
    100.0 * (to.0 - from.0) as f64 / (to.1 - from.1).max(1) as f64
}

/// This database's commits and rows written so far (`pg_stat_database`, which a
/// backend updates at most once a second: read it after a pause).
async fn writes(pool: &PgPool) -> anyhow::Result<[i64; 4]> {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (commits, inserted, updated, deleted): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    Ok([commits, inserted, updated, deleted])
}

/// The one-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Empties what a run leaves, so that each run starts from the same tables.
async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE saga_instance, saga_event, inbox, pings")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    Ok(())
}

async fn start_sagas(pool: &PgPool, ids: std::ops::Range<u64>) -> anyhow::Result<()> {
    start_sagas_of(pool, &definition(), ids).await
}

async fn start_sagas_of(
    pool: &PgPool,
    definition: &Saga<Job>,
    ids: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for n in ids {
        txoutbox_saga::start(&mut tx, definition, &format!("s-{n}"), &Job { n }).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn send_pings(pool: &PgPool, ids: std::ops::Range<u64>) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for n in ids {
        let id = format!("p-{n}");
        sqlx::query("INSERT INTO pings (id, sent_at) VALUES ($1, clock_timestamp())")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let service = SERVICES[(n % 3) as usize];
        let message = txoutbox::Message::builder(&id, "ping", service).payload(&n)?;
        txoutbox::enqueue(&mut *tx, &message).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Starts `count` in transactions of `batch`, four transactions at a time.
async fn in_batches<F, Fut>(count: u64, batch: u64, start: F) -> anyhow::Result<()>
where
    F: Fn(std::ops::Range<u64>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let batches = (0..count.div_ceil(batch)).map(|b| b * batch..((b + 1) * batch).min(count));
    futures_util::stream::iter(batches.map(start))
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// What a run waits for.
#[derive(Clone, Copy)]
enum Finished {
    Sagas,
    Pings,
}

/// Waits until `count` sagas are completed, or `count` requests answered.
async fn wait_for(pool: &PgPool, what: Finished, count: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done: i64 = match what {
            Finished::Sagas => {
                sqlx::query_scalar("SELECT count(*) FROM saga_instance WHERE state = $1")
                    .bind(SagaState::Completed.as_str())
                    .fetch_one(pool)
                    .await?
            }
            Finished::Pings => {
                sqlx::query_scalar("SELECT count(*) FROM pings WHERE replied_at IS NOT NULL")
                    .fetch_one(pool)
                    .await?
            }
        };
        if done as u64 >= count {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{done} of {count} after 5 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one throughput run measured.
struct Throughput {
    sagas_per_s: f64,
    round_trips_per_s: f64,
    saga_waits: BTreeMap<String, u64>,
    baseline_waits: BTreeMap<String, u64>,
    /// The machine's CPU busy share while the sagas ran, and while the baseline did.
    cpu: (f64, f64),
    /// Commits and rows inserted, updated and deleted per saga, and per three
    /// round trips of the baseline.
    writes: ([f64; 4], [f64; 4]),
}

/// `after - before`, per `count`.
fn per(before: [i64; 4], after: [i64; 4], count: u64) -> [f64; 4] {
    std::array::from_fn(|i| (after[i] - before[i]) as f64 / count as f64)
}

/// Runs `work` while sampling the database's wait events.
async fn sampled<Fut>(pool: &PgPool, work: Fut) -> anyhow::Result<BTreeMap<String, u64>>
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(sample_waits(pool.clone(), stopped));
    work.await?;
    let _ = stop.send(());
    sampler.await?
}

/// (a) Sagas/s, and the baseline's round trips/s, of one run.
async fn throughput(pool: &PgPool, args: &Args) -> anyhow::Result<Throughput> {
    reset(pool).await?;
    let before = writes(pool).await?;
    let (cpu, started) = (cpu_ticks(), Instant::now());
    let saga_waits = sampled(pool, async {
        in_batches(args.sagas, args.batch, |ids| start_sagas(pool, ids)).await?;
        wait_for(pool, Finished::Sagas, args.sagas).await
    })
    .await?;
    let sagas_per_s = args.sagas as f64 / started.elapsed().as_secs_f64();
    let saga_cpu = busy(cpu, cpu_ticks());
    let saga_writes = per(before, writes(pool).await?, args.sagas);
    let not_completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM saga_instance WHERE state <> $1")
            .bind(SagaState::Completed.as_str())
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(not_completed == 0, "{not_completed} sagas did not complete");

    reset(pool).await?;
    let pings = 3 * args.sagas;
    let before = writes(pool).await?;
    let (cpu, started) = (cpu_ticks(), Instant::now());
    let baseline_waits = sampled(pool, async {
        in_batches(pings, args.batch, |ids| send_pings(pool, ids)).await?;
        wait_for(pool, Finished::Pings, pings).await
    })
    .await?;
    let round_trips_per_s = pings as f64 / started.elapsed().as_secs_f64();
    let baseline_cpu = busy(cpu, cpu_ticks());
    let baseline_writes = per(before, writes(pool).await?, args.sagas);
    Ok(Throughput {
        sagas_per_s,
        round_trips_per_s,
        saga_waits,
        baseline_waits,
        cpu: (saga_cpu, baseline_cpu),
        writes: (saga_writes, baseline_writes),
    })
}

/// Calls `start(i)` `rate` times a second for `seconds`, each on a task of its own;
/// returns the rate achieved.
async fn steady<F, Fut>(rate: u64, seconds: u64, start: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut tasks = tokio::task::JoinSet::new();
    let began = Instant::now();
    let total = rate * seconds;
    for i in 0..total {
        ticks.tick().await;
        tasks.spawn(start(i));
    }
    let achieved = total as f64 / began.elapsed().as_secs_f64();
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(achieved)
}

/// p50, p99 and max of `samples`, in their unit.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99), at(1.0))
}

/// What (b) measured.
struct Latency {
    achieved_rate: f64,
    /// The machine's CPU busy share meanwhile.
    cpu: f64,
    steps: (f64, f64, f64),
    step_count: usize,
    last_step: (f64, f64, f64),
    saga: (f64, f64, f64),
    /// Medians of: command → participant's transaction begins; → orchestrator's
    /// transaction begins; → the next command is written.
    split: (f64, f64, f64),
}

/// (b) Sagas at a steady rate, one per transaction; timings from `saga_event`.
async fn saga_latency(pool: &PgPool, args: &Args) -> anyhow::Result<Latency> {
    reset(pool).await?;
    let ticks = cpu_ticks();
    let achieved_rate = steady(args.rate, args.seconds, |n| {
        let pool = pool.clone();
        async move { start_sagas(&pool, n..n + 1).await }
    })
    .await?;
    wait_for(pool, Finished::Sagas, args.rate * args.seconds).await?;
    let cpu = busy(ticks, cpu_ticks());
    let completed = SagaState::Completed.as_str();
    let steps: Vec<f64> = sqlx::query_scalar(
        "SELECT ms FROM (
             SELECT extract(epoch FROM occurred_at - lag(occurred_at) OVER w)::float8 * 1e3 AS ms
             FROM saga_event WHERE kind = 'command_sent'
             WINDOW w AS (PARTITION BY saga_id ORDER BY id)) s
         WHERE ms IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    let last_step: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM f.occurred_at - c.occurred_at)::float8 * 1e3
         FROM saga_event f JOIN LATERAL (
             SELECT occurred_at FROM saga_event c WHERE c.saga_id = f.saga_id
             AND c.kind = 'command_sent' ORDER BY id DESC LIMIT 1) c ON true
         WHERE f.to_state = $1",
    )
    .bind(completed)
    .fetch_all(pool)
    .await?;
    let saga = saga_durations(pool).await?;
    let split: Vec<(f64, f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM p.processed_at - c.occurred_at)::float8 * 1e3,
                extract(epoch FROM o.processed_at - p.processed_at)::float8 * 1e3,
                extract(epoch FROM n.occurred_at - o.processed_at)::float8 * 1e3
         FROM saga_event c
         JOIN inbox p ON p.consumer <> 'saga-orchestrator' AND p.saga_id = c.saga_id
                     AND p.message_id = c.message_id
         JOIN inbox o ON o.consumer = 'saga-orchestrator' AND o.saga_id = c.saga_id
                     AND split_part(o.step, '#', 2) = replace(c.message_id, '-', '')
         JOIN LATERAL (SELECT occurred_at FROM saga_event n WHERE n.saga_id = c.saga_id
                       AND n.id > c.id AND n.kind = 'command_sent' ORDER BY id LIMIT 1) n ON true
         WHERE c.kind = 'command_sent'",
    )
    .fetch_all(pool)
    .await?;
    let part = |f: fn(&(f64, f64, f64)) -> f64| median(&split.iter().map(f).collect::<Vec<_>>());
    Ok(Latency {
        achieved_rate,
        cpu,
        step_count: steps.len(),
        steps: percentiles(steps),
        last_step: percentiles(last_step),
        saga: percentiles(saga),
        split: (part(|s| s.0), part(|s| s.1), part(|s| s.2)),
    })
}

/// (d) Sagas whose first two steps run side by side, at a steady rate: the whole
/// saga, `started` to `completed`.
async fn parallel_latency(pool: &PgPool, args: &Args) -> anyhow::Result<(f64, f64, f64)> {
    reset(pool).await?;
    let parallel = std::sync::Arc::new(parallel_definition());
    steady(args.rate, args.seconds, |n| {
        let (pool, parallel) = (pool.clone(), std::sync::Arc::clone(&parallel));
        async move { start_sagas_of(&pool, &parallel, n..n + 1).await }
    })
    .await?;
    wait_for(pool, Finished::Sagas, args.rate * args.seconds).await?;
    Ok(percentiles(saga_durations(pool).await?))
}

/// Each completed saga's whole time, `started` to `completed`, in milliseconds.
async fn saga_durations(pool: &PgPool) -> anyhow::Result<Vec<f64>> {
    Ok(sqlx::query_scalar(
        "SELECT extract(epoch FROM f.occurred_at - s.occurred_at)::float8 * 1e3
         FROM saga_event f JOIN saga_event s ON s.saga_id = f.saga_id AND s.kind = 'started'
         WHERE f.to_state = $1",
    )
    .bind(SagaState::Completed.as_str())
    .fetch_all(pool)
    .await?)
}

/// (c) Requests at a steady rate, one per transaction: request to reply handled.
async fn baseline_latency(
    pool: &PgPool,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<((f64, f64, f64), f64)> {
    reset(pool).await?;
    let ticks = cpu_ticks();
    steady(rate, seconds, |n| {
        let pool = pool.clone();
        async move { send_pings(&pool, n..n + 1).await }
    })
    .await?;
    wait_for(pool, Finished::Pings, rate * seconds).await?;
    let cpu = busy(ticks, cpu_ticks());
    let trips: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM replied_at - sent_at)::float8 * 1e3 FROM pings",
    )
    .fetch_all(pool)
    .await?;
    Ok((percentiles(trips), cpu))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = fresh_database("outbox_bench_saga", 48).await?;
    sqlx::query("CREATE TABLE pings (id text PRIMARY KEY, sent_at timestamptz NOT NULL, replied_at timestamptz)")
        .execute(&pool)
        .await?;
    let rig = Rig::start(&pool, &args).await?;
    println!(
        "saga-bench: {} relay(s) (poll {} ms), consumers prefetch {} concurrency {} (replies {}), sweep {} ms; load {} at start",
        args.relays,
        args.relay_poll_ms,
        args.prefetch,
        args.concurrency,
        args.reply_concurrency.unwrap_or(args.concurrency),
        args.sweep_ms,
        load()
    );
    // Warm up: connections, prepared statements, leases.
    let warm = Args {
        sagas: 200,
        ..args.clone()
    };
    throughput(&pool, &warm).await?;

    let (mut sagas, mut trips) = (Vec::new(), Vec::new());
    let (mut saga_waits, mut baseline_waits) = (BTreeMap::new(), BTreeMap::new());
    let (mut cpu, mut saga_writes, mut baseline_writes) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let measured = throughput(&pool, &args).await?;
        let (s, t) = (measured.sagas_per_s, measured.round_trips_per_s);
        eprintln!(
            "run {run}: {s:.0} sagas/s (CPU {:.0}% busy), baseline {t:.0} round trips/s (CPU {:.0}%); load {}",
            measured.cpu.0,
            measured.cpu.1,
            load()
        );
        cpu.push(measured.cpu);
        saga_writes.push(measured.writes.0);
        baseline_writes.push(measured.writes.1);
        sagas.push(s);
        trips.push(t);
        for (into, from) in [
            (&mut saga_waits, measured.saga_waits),
            (&mut baseline_waits, measured.baseline_waits),
        ] {
            for (key, n) in from {
                *into.entry(key).or_insert(0) += n;
            }
        }
    }
    let load_a = load();
    let latency = saga_latency(&pool, &args).await?;
    let load_b = load();
    let (baseline, baseline_cpu) = baseline_latency(&pool, 3 * args.rate, args.seconds).await?;
    let load_c = load();
    let parallel = parallel_latency(&pool, &args).await?;
    let load_d = load();
    rig.stop().await?;

    let (sagas_per_s, trips_per_s) = (median(&sagas), median(&trips));
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let ms3 = |(p50, p99, max): (f64, f64, f64)| {
        format!("p50 {p50:>6.1}  p99 {p99:>6.1}  max {max:>6.1} ms")
    };
    println!();
    println!(
        "(a) throughput: {} three-step sagas, {} per transaction, median of {} runs",
        args.sagas, args.batch, args.runs
    );
    println!(
        "    sagas                         {sagas_per_s:>7.0} sagas/s       runs {}   goal >= {GOAL_SAGAS_PER_S:.0} (aim {AIM_SAGAS_PER_S:.0}): {}",
        list(&sagas),
        verdict(sagas_per_s >= GOAL_SAGAS_PER_S)
    );
    println!(
        "    baseline request/reply        {trips_per_s:>7.0} round trips/s  runs {}   = {:.0} sagas/s of 3 steps",
        list(&trips),
        trips_per_s / 3.0
    );
    println!(
        "    sagas / baseline              {:>7.2}    load {load_a} after",
        sagas_per_s / (trips_per_s / 3.0)
    );
    let cpu_of = |f: fn(&(f64, f64)) -> f64| median(&cpu.iter().map(f).collect::<Vec<_>>());
    println!(
        "    machine CPU busy (2 cores)    sagas {:.0}%, baseline {:.0}%",
        cpu_of(|c| c.0),
        cpu_of(|c| c.1)
    );
    let writes_of = |runs: &[[f64; 4]]| {
        let at = |i: usize| median(&runs.iter().map(|w| w[i]).collect::<Vec<_>>());
        format!(
            "{:.1} commits (polls included), rows {:.1} inserted {:.1} updated {:.1} deleted",
            at(0),
            at(1),
            at(2),
            at(3)
        )
    };
    println!(
        "    per saga                      {}",
        writes_of(&saga_writes)
    );
    println!(
        "    per 3 baseline round trips    {}",
        writes_of(&baseline_writes)
    );
    println!(
        "    database backends (sampled every 10 ms), sagas:    {}",
        top(&saga_waits)
    );
    println!(
        "    database backends (sampled every 10 ms), baseline: {}",
        top(&baseline_waits)
    );
    println!(
        "(b) latency: {} sagas/s for {} s (achieved {:.1}/s), CPU {:.0}% busy, load {load_b} after",
        args.rate, args.seconds, latency.achieved_rate, latency.cpu
    );
    println!(
        "    step round trip ({} steps)  {}   goal p50 <= {GOAL_P50_STEP_MS:.0} ms: {}",
        latency.step_count,
        ms3(latency.steps),
        verdict(latency.steps.0 <= GOAL_P50_STEP_MS)
    );
    println!(
        "      median split: command -> participant's transaction {:.1} ms, -> orchestrator's transaction {:.1} ms, -> next command {:.1} ms",
        latency.split.0, latency.split.1, latency.split.2
    );
    println!(
        "    last step (-> completed)      {}",
        ms3(latency.last_step)
    );
    println!("    saga (started -> completed)   {}", ms3(latency.saga));
    println!(
        "(c) baseline: request/reply at {}/s for {} s, CPU {baseline_cpu:.0}% busy, load {load_c} after",
        3 * args.rate,
        args.seconds
    );
    println!("    request -> reply handled      {}", ms3(baseline));
    println!(
        "    step / baseline (p50)         {:>7.2}",
        latency.steps.0 / baseline.0
    );
    println!(
        "(d) parallel group: the first two steps side by side, {} sagas/s for {} s, load {load_d} after",
        args.rate, args.seconds
    );
    println!("    saga (started -> completed)   {}", ms3(parallel));
    println!(
        "    parallel / sequential (b)     p50 {:.2}  p99 {:.2}",
        parallel.0 / latency.saga.0,
        parallel.1 / latency.saga.1
    );
    println!(
        "p50_step_ms {:.1} p99_step_ms {:.1} sagas_per_s {sagas_per_s:.0} baseline_p50_ms {:.1} baseline_sagas_per_s {:.0} ratio {:.2}",
        latency.steps.0,
        latency.steps.1,
        baseline.0,
        trips_per_s / 3.0,
        sagas_per_s / (trips_per_s / 3.0)
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
