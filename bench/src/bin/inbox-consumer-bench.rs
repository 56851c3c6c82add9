//! What the inbox costs a consumer: messages/s through `idempotency::Consumer`
//! (handler = one INSERT, in the inbox's transaction) against a plain consumer that
//! only acks, on the same pre-filled queue, with 1 and 4 handlers at once; for
//! quorum queues (the consumer's default) and classic queues.
//!
//! Run with: `cargo run --release -p bench --bin inbox-consumer-bench`
//! (`-- --queue-type quorum` for one type, `--messages 5000 --rounds 3` for a short run)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench::broker::{amqp_url, payload};
use bench::{fresh_database, median};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use idempotency::{BoxError, Consumer, ConsumerConfig, Context, QueueType};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::PgPool;
use tokio::sync::Semaphore;

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
    let pool = fresh_database("outbox_bench_inbox", 8).await?;
    sqlx::query("CREATE TABLE effects (saga_id text NOT NULL, step text NOT NULL)")
        .execute(&pool)
        .await?;
    println!(
        "{} messages per run, median of {} rounds",
        args.messages, args.rounds
    );
    println!(
        "queue    handlers  plain ack-only msg/s  inbox consumer msg/s  ratio  inbox ms/message/handler"
    );
    let mut headline = None;
    for queue_type in args.queue_type.iter().map(|&t| QueueType::from(t)) {
        for handlers in [1usize, 4] {
            let (mut plain, mut inbox) = (Vec::new(), Vec::new());
            for _ in 0..args.rounds {
                plain.push(plain_consumer(queue_type, args.messages, handlers).await?);
                inbox.push(inbox_consumer(&pool, queue_type, args.messages, handlers).await?);
            }
            let (plain, inbox) = (median(&plain), median(&inbox));
            let per_message_ms = 1000.0 * handlers as f64 / inbox;
            println!(
                "{queue_type:<7}  {handlers:>8}  {plain:>20.0}  {inbox:>20.0}  {:>5.2}  {per_message_ms:>24.2}",
                inbox / plain
            );
            if handlers == 4 {
                headline.get_or_insert(inbox / plain);
            }
        }
    }
    // Last, for scripts: the inbox consumer / the plain one, 4 handlers, the first
    // queue type measured.
    if let Some(ratio) = headline {
        println!("ratio {ratio:.2}");
    }
    Ok(())
}

/// The queues of `idempotency::Consumer`, of `queue_type`, the queue holding
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
    handlers: usize,
) -> anyhow::Result<f64> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let queues = filled_queue(&connection, queue_type, messages).await?;
    let queue = queues.queue.as_str();
    let channel = connection.create_channel().await?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
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
    let slots = Arc::new(Semaphore::new(handlers));
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
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    remove(&connection, &queues).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}

/// One INSERT in the inbox's transaction; the payload is taken as any JSON.
async fn reserve(mut ctx: Context<'_>, _: serde_json::Value) -> Result<(), BoxError> {
    let envelope = ctx.envelope();
    sqlx::query("INSERT INTO effects (saga_id, step) VALUES ($1, $2)")
        .bind(&envelope.saga_id)
        .bind(&envelope.step)
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// The inbox consumer: one transaction per message (inbox key + effect), then the ack.
async fn inbox_consumer(
    pool: &PgPool,
    queue_type: QueueType,
    messages: u64,
    handlers: usize,
) -> anyhow::Result<f64> {
    sqlx::query("TRUNCATE effects, inbox").execute(pool).await?;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let queues = filled_queue(&connection, queue_type, messages).await?;
    let mut config = queues.clone();
    config.concurrency = handlers;
    let started = Instant::now();
    let consumer = Consumer::new(pool.clone(), amqp_url(), "bench", config)
        .on("ReserveStock", reserve)
        .spawn()?;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(pool)
            .await?;
        if done as u64 >= messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    consumer.shutdown().await?;
    remove(&connection, &queues).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}
