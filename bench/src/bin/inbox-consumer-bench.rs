//! What the inbox costs a consumer: messages/s through `txoutbox_inbox::Consumer`
//! (handler = one INSERT, in the inbox's transaction) against a plain consumer that
//! only acks, on the same pre-filled queue, with 1 and 4 handlers at once; for
//! quorum queues (the consumer's default) and classic queues; with a transaction
//! per message (`batch_size` 1, as before batching) and per batch.
//! Then the latency a lone message sees at a low steady rate, for each batch size:
//! from its publish to its handler's effect row.
//!
//! Run with: `cargo run --release -p bench --bin inbox-consumer-bench`
//! (`-- --queue-type quorum` for one type, `--messages 5000 --rounds 3` for a short
//! run, `--latency-seconds 0` to skip the latency)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench::broker::{amqp_url, payload};
use bench::{cpu, fresh_database, median};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Semaphore;
use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context, QueueType};

#[derive(Parser)]
struct Args {
    /// Messages per measurement.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Rounds; the report gives medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The queue types to measure, each with both consumers.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Type::Quorum, Type::Classic])]
    queue_type: Vec<Type>,
    /// The inbox consumer's `batch_size`s to measure; 1 is a transaction per message.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16])]
    batch_size: Vec<usize>,
    /// Unacked deliveries either consumer may hold (the inbox consumer's default: 64).
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// Messages per second for the latency measurement.
    #[arg(long, default_value_t = 200)]
    latency_rate: u64,
    /// Seconds of steady load per latency measurement (0 skips it).
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Give the inbox consumer a pool that does not ping a connection before handing
    /// it out (`PgPoolOptions::test_before_acquire(false)`): one round trip less per
    /// batch.
    #[arg(long)]
    skip_pool_ping: bool,
    /// What the inbox consumer's handler does: `insert` one row in the inbox's
    /// transaction (a handler's least work), or `none`, which leaves the inbox's own
    /// cost: its key, the transaction, the commit.
    #[arg(long, value_enum, default_value_t = Work::Insert)]
    handler: Work,
    /// The inbox consumer's `batch_linger`, in ms: how long a batch formed while
    /// another is in hand may wait for more deliveries (0, the default, never waits).
    #[arg(long, default_value_t = 0)]
    batch_linger_ms: u64,
}

/// `--handler`: what the inbox consumer's handler does with each message.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Work {
    Insert,
    None,
}

/// `--queue-type`: the consumer's [`QueueType`]s.
#[derive(Clone, Copy, ValueEnum)]
enum Type {
    Quorum,
    Classic,
}

impl From<Type> for QueueType {
    fn from(value: Type) -> Self {
        match value {
            Type::Quorum => QueueType::Quorum,
            Type::Classic => QueueType::Classic,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = fresh_database("outbox_bench_inbox", 8).await?;
    sqlx::query("CREATE TABLE effects (saga_id text NOT NULL, step text NOT NULL)")
        .execute(&setup)
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(!args.skip_pool_ping)
        .connect_with(setup.connect_options().as_ref().clone())
        .await?;
    let ping = if args.skip_pool_ping {
        "no ping before a pooled connection is handed out"
    } else {
        "sqlx's default pool, which pings a connection before handing it out"
    };
    // Every round trip of the inbox pays TLS's framing on both ends when the
    // connection has it (`sslmode` unset means "prefer").
    let tls: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    let tls = if tls { "with TLS" } else { "without TLS" };
    let work = match args.handler {
        Work::Insert => "the inbox's handler inserts one row",
        Work::None => "the inbox's handler does nothing",
    };
    println!(
        "{} messages per run, median of {} rounds; prefetch {} for both consumers; {work}; batch linger {} ms; {ping}; PostgreSQL {tls}",
        args.messages, args.rounds, args.prefetch, args.batch_linger_ms
    );
    let columns: Vec<String> = args
        .batch_size
        .iter()
        .map(|size| format!("  batch {size:>2} msg/s  ratio"))
        .collect();
    println!(
        "queue    handlers  plain ack-only msg/s{}",
        columns.concat()
    );
    let mut headline = None;
    let mut cpu_lines = Vec::new();
    for queue_type in args.queue_type.iter().map(|&t| QueueType::from(t)) {
        for handlers in [1usize, 4] {
            let mut plain = Vec::new();
            let mut inbox = vec![Vec::new(); args.batch_size.len()];
            for _ in 0..args.rounds {
                let plain_shape = Shape {
                    handlers,
                    batch_size: 1,
                    prefetch: args.prefetch,
                    linger: Duration::ZERO, // the plain consumer takes one at a time
                };
                plain.push(plain_consumer(queue_type, args.messages, plain_shape).await?);
                for (runs, &size) in inbox.iter_mut().zip(&args.batch_size) {
                    let shape = Shape {
                        handlers,
                        batch_size: size,
                        prefetch: args.prefetch,
                        linger: Duration::from_millis(args.batch_linger_ms),
                    };
                    runs.push(
                        inbox_consumer(&pool, queue_type, args.messages, shape, args.handler)
                            .await?,
                    );
                }
            }
            let plain = Measured::median(&plain);
            let mut row = format!("{queue_type:<7}  {handlers:>8}  {:>20.0}", plain.rate);
            cpu_lines.push(format!("{queue_type} {handlers}: plain: {}", plain.cpu()));
            let mut last_ratio = 0.0;
            for (runs, size) in inbox.iter().zip(&args.batch_size) {
                let inbox = Measured::median(runs);
                last_ratio = inbox.rate / plain.rate;
                row.push_str(&format!("  {:>14.0}  {last_ratio:>5.2}", inbox.rate));
                cpu_lines.push(format!(
                    "{queue_type} {handlers}: batch {size}: {}",
                    inbox.cpu()
                ));
            }
            println!("{row}");
            if handlers == 4 {
                headline.get_or_insert(last_ratio);
            }
        }
    }
    println!("\nCPU per message, µs (medians; the consumer is this whole process)");
    for line in cpu_lines {
        println!("{line}");
    }
    if args.latency_seconds > 0 {
        let queue_type = QueueType::from(args.queue_type[0]);
        println!(
            "\nlatency, publish to effect, {}/s for {} s, {queue_type} queue, 4 handlers",
            args.latency_rate, args.latency_seconds
        );
        for &batch_size in &args.batch_size {
            let shape = Shape {
                handlers: 4,
                batch_size,
                prefetch: args.prefetch,
                linger: Duration::from_millis(args.batch_linger_ms),
            };
            let (p50, p99) = latency(
                &pool,
                queue_type,
                shape,
                args.latency_rate,
                args.latency_seconds,
            )
            .await?;
            println!("batch {batch_size:>2}: p50 {p50:.1} ms, p99 {p99:.1} ms");
        }
    }
    // Last, for scripts: the inbox consumer (the last batch size given) / the plain
    // one, 4 handlers, the first queue type measured.
    if let Some(ratio) = headline {
        println!("ratio {ratio:.2}");
    }
    Ok(())
}

/// How a consumer runs: handlers (batches) at once, deliveries per batch, prefetch,
/// and how long a batch may linger beside others.
#[derive(Clone, Copy)]
struct Shape {
    handlers: usize,
    batch_size: usize,
    prefetch: u16,
    linger: Duration,
}

/// The queues of `txoutbox_inbox::Consumer`, of `queue_type`, the queue holding
/// `messages` messages in the relay's envelope.
async fn filled_queue(
    connection: &Connection,
    queue_type: QueueType,
    messages: u64,
) -> anyhow::Result<ConsumerConfig> {
    let mut config = ConsumerConfig::new(format!("bench-inbox-{}", uuid::Uuid::now_v7().simple()));
    config.queue_type = queue_type;
    let queue = config.queue.clone();
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    config.declare(&channel).await?;
    for chunk in (0..messages).collect::<Vec<_>>().chunks(500) {
        let publishes = chunk.iter().map(|i| {
            let properties = BasicProperties::default()
                .with_correlation_id(format!("saga-{i}").into())
                .with_type("ReserveStock".into())
                .with_message_id(uuid::Uuid::now_v7().to_string().into())
                .with_delivery_mode(2);
            let body = payload(*i);
            let channel = channel.clone();
            let queue = queue.clone();
            async move {
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
            }
        });
        let confirms = futures_util::future::try_join_all(publishes).await?;
        for confirm in futures_util::future::join_all(confirms).await {
            confirm?;
        }
    }
    Ok(config)
}

async fn remove(connection: &Connection, queues: &ConsumerConfig) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    queues.delete(&channel).await?;
    Ok(())
}

/// The baseline: receive and ack, `handlers` at a time, nothing else.
async fn plain_consumer(
    queue_type: QueueType,
    messages: u64,
    shape: Shape,
) -> anyhow::Result<Measured> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let queues = filled_queue(&connection, queue_type, messages).await?;
    let queue = queues.queue.as_str();
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(shape.prefetch, BasicQosOptions::default())
        .await?;
    let mark = CpuMark::now();
    let started = Instant::now();
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let acked = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(shape.handlers));
    for _ in 0..messages {
        let Some(delivery) = deliveries.next().await else {
            break;
        };
        let delivery = delivery?;
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let _slot = slot;
            if delivery.ack(BasicAckOptions::default()).await.is_ok() {
                acked.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while acked.load(Ordering::Relaxed) < messages {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let measured = Measured::since(started, &mark, messages);
    remove(&connection, &queues).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(measured)
}

/// Handler runs so far in this measurement (some may yet roll back): the wait for
/// the inbox's keys asks PostgreSQL only once this reaches the goal.
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// Nothing but counting: what is left is the inbox's own work.
async fn count_only(_: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// One INSERT in the inbox's transaction; the payload is taken as any JSON.
async fn reserve(mut ctx: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    let envelope = ctx.envelope();
    sqlx::query("INSERT INTO effects (saga_id, step) VALUES ($1, $2)")
        .bind(&envelope.saga_id)
        .bind(&envelope.step)
        .execute(ctx.db())
        .await?;
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The inbox consumer, in `shape`: inbox key and effect in one transaction per
/// batch (per message with `batch_size` 1), then the ack.
async fn inbox_consumer(
    pool: &PgPool,
    queue_type: QueueType,
    messages: u64,
    shape: Shape,
    work: Work,
) -> anyhow::Result<Measured> {
    sqlx::query("TRUNCATE effects, inbox").execute(pool).await?;
    HANDLED.store(0, Ordering::Relaxed);
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let queues = filled_queue(&connection, queue_type, messages).await?;
    let mark = CpuMark::now();
    let started = Instant::now();
    let consumer = Consumer::new(pool.clone(), amqp_url(), "bench", shaped(&queues, shape));
    let consumer = match work {
        Work::Insert => consumer.on("ReserveStock", reserve),
        Work::None => consumer.on("ReserveStock", count_only),
    }
    .spawn()?;
    while HANDLED.load(Ordering::Relaxed) < messages {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    wait_for_keys(pool, messages).await?;
    let measured = Measured::since(started, &mark, messages);
    consumer.shutdown().await?;
    remove(&connection, &queues).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(measured)
}

/// CPU so far, in clock ticks: this process (the consumer measured), every
/// PostgreSQL process, every RabbitMQ (`beam.smp`) process.
struct CpuMark {
    consumer: u64,
    postgres: HashMap<u32, u64>,
    rabbitmq: HashMap<u32, u64>,
}

impl CpuMark {
    fn now() -> Self {
        Self {
            consumer: cpu::ticks_of(std::process::id()),
            postgres: cpu::ticks_by_pid("postgres"),
            rabbitmq: cpu::ticks_by_pid("beam.smp"),
        }
    }
}

/// One drain: its rate, and the CPU each party spent per message, in µs.
#[derive(Clone, Copy, Default)]
struct Measured {
    rate: f64,
    consumer_us: f64,
    postgres_us: f64,
    rabbitmq_us: f64,
}

impl Measured {
    /// `messages` drained since `started` and `mark`. The consumer's figure is this
    /// whole process's, the bench's own waiting included (a few polls).
    fn since(started: Instant, mark: &CpuMark, messages: u64) -> Self {
        let now = CpuMark::now();
        let ticks = *TICKS_PER_SECOND as f64;
        let per_message = |spent: u64| spent as f64 / ticks * 1e6 / messages as f64;
        Self {
            rate: messages as f64 / started.elapsed().as_secs_f64(),
            consumer_us: per_message(now.consumer.saturating_sub(mark.consumer)),
            postgres_us: per_message(cpu::spent(&mark.postgres, &now.postgres, |_| true)),
            rabbitmq_us: per_message(cpu::spent(&mark.rabbitmq, &now.rabbitmq, |_| true)),
        }
    }

    /// Medians, field by field, of `runs`.
    fn median(runs: &[Measured]) -> Self {
        let of = |field: fn(&Measured) -> f64| median(&runs.iter().map(field).collect::<Vec<_>>());
        Self {
            rate: of(|m| m.rate),
            consumer_us: of(|m| m.consumer_us),
            postgres_us: of(|m| m.postgres_us),
            rabbitmq_us: of(|m| m.rabbitmq_us),
        }
    }

    fn cpu(&self) -> String {
        format!(
            "consumer {:.0}, PostgreSQL {:.0}, RabbitMQ {:.0}",
            self.consumer_us, self.postgres_us, self.rabbitmq_us
        )
    }
}

/// Clock ticks per second of `/proc` CPU times, asked once.
static TICKS_PER_SECOND: std::sync::LazyLock<u64> = std::sync::LazyLock::new(cpu::clock_ticks);

/// Waits until the inbox holds `keys` keys: that many messages took effect.
async fn wait_for_keys(pool: &PgPool, keys: u64) -> anyhow::Result<()> {
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(pool)
            .await?;
        if done as u64 >= keys {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn shaped(queues: &ConsumerConfig, shape: Shape) -> ConsumerConfig {
    let mut config = queues.clone();
    config.concurrency = shape.handlers;
    config.batch_size = shape.batch_size;
    config.prefetch = shape.prefetch;
    config.batch_linger = shape.linger;
    config
}

/// The payload of a latency probe: when it was published, in µs since the epoch.
#[derive(serde::Deserialize)]
struct Probe {
    sent_us: i64,
}

/// Records when the probe was published and when its effect was written.
async fn probe(mut ctx: Context<'_>, probe: Probe) -> Result<(), BoxError> {
    sqlx::query("INSERT INTO probes (sent_us, done_at) VALUES ($1, clock_timestamp())")
        .bind(probe.sent_us)
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// p50 and p99, in ms, from publish to the handler's effect, publishing `rate` a
/// second for `seconds` to a consumer of `shape` waiting on an empty queue.
async fn latency(
    pool: &PgPool,
    queue_type: QueueType,
    shape: Shape,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(f64, f64)> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS probes (sent_us bigint NOT NULL, done_at timestamptz NOT NULL)",
    )
    .execute(pool)
    .await?;
    sqlx::query("TRUNCATE probes, inbox").execute(pool).await?;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let queues = filled_queue(&connection, queue_type, 0).await?;
    let consumer = Consumer::new(pool.clone(), amqp_url(), "bench", shaped(&queues, shape))
        .on("Probe", probe)
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let channel = connection.create_channel().await?;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let total = rate * seconds;
    for i in 0..total {
        ticks.tick().await;
        let sent_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros() as i64;
        let properties = BasicProperties::default()
            .with_correlation_id(format!("probe-{i}").into())
            .with_type("Probe".into())
            .with_delivery_mode(2);
        let body = serde_json::to_vec(&serde_json::json!({ "sent_us": sent_us }))?;
        channel
            .basic_publish(
                "".into(),
                queues.queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?;
    }
    wait_for_keys(pool, total).await?;
    let (p50, p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT ((extract(epoch FROM done_at) * 1e6 - sent_us) / 1000.0)::float8 AS ms FROM probes) AS l",
    )
    .fetch_one(pool)
    .await?;
    consumer.shutdown().await?;
    remove(&connection, &queues).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok((p50, p99))
}
