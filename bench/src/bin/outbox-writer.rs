//! What the outbox costs a writer: commits/s of a transaction that writes one
//! domain row, alone and with one outbox message, at 1 and 16 connections.
//!
//! Run with: `cargo run --release -p bench --bin outbox-writer`
//!
//! Modes, interleaved within each round so machine noise hits all alike:
//! - `domain`: the domain row only (the baseline).
//! - `plain-row`: plus one row of the outbox's columns and size in a table with a
//!   primary key only: no trigger, no domain checks, no secondary index. What the
//!   outbox row is measured against.
//! - `outbox`: plus one message. No relay sleeps, as when a relay is busy: the
//!   row's trigger takes its partition's doorbell lock, shared, and rings no bell.
//! - `outbox+notify`: plus one message, with every partition's doorbell lock held
//!   as an idle relay holds them, so every commit sends a NOTIFY (the doorbell's
//!   worst case).

use std::time::{Duration, Instant};

use bench::{fresh_database, median};
use clap::Parser;
use sqlx::{Connection, PgConnection, PgPool};
use txoutbox::Message;

#[derive(Parser)]
struct Args {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds; the report gives the median.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Domain,
    PlainRow,
    Outbox,
    OutboxNotify,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Domain => "domain",
            Mode::PlainRow => "plain-row",
            Mode::Outbox => "outbox",
            Mode::OutboxNotify => "outbox+notify",
        }
    }
}

const MODES: [Mode; 4] = [
    Mode::Domain,
    Mode::PlainRow,
    Mode::Outbox,
    Mode::OutboxNotify,
];

/// The outbox's columns, as base types, behind a primary key and nothing else.
const PLAIN_ROWS: &str = "
    CREATE TABLE plain_rows (
        id uuid PRIMARY KEY, saga_id text NOT NULL, step text NOT NULL,
        routing_key text NOT NULL, payload jsonb NOT NULL, exchange text,
        headers jsonb NOT NULL DEFAULT '{}', ordering_key text,
        available_at timestamptz NOT NULL DEFAULT now(),
        created_at timestamptz NOT NULL DEFAULT now(),
        seq bigint GENERATED ALWAYS AS IDENTITY, partition smallint NOT NULL DEFAULT 0,
        state text NOT NULL DEFAULT 'pending', attempts integer NOT NULL DEFAULT 0,
        last_error text, sent_at timestamptz)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = fresh_database("outbox_bench_writer", 16).await?;
    sqlx::query(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL,
                              total_cents bigint NOT NULL, created_at timestamptz DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    sqlx::query(PLAIN_ROWS).execute(&pool).await?;

    println!(
        "connections  mode            commits/s (median of {})  ratio to domain",
        args.rounds
    );
    let mut outbox_ratio = 0.0;
    for connections in [1usize, 16] {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
        for _ in 0..args.rounds {
            for (i, mode) in MODES.iter().enumerate() {
                let relay = sleeping_relay(&pool, *mode == Mode::OutboxNotify).await?;
                let duration = Duration::from_secs(args.seconds);
                rates[i].push(commit_rate(&pool, *mode, connections, duration).await?);
                if let Some(relay) = relay {
                    relay.close().await?;
                }
                sqlx::query("TRUNCATE outbox, orders, plain_rows")
                    .execute(&pool)
                    .await?;
            }
        }
        let medians: Vec<f64> = rates.iter().map(|samples| median(samples)).collect();
        let baseline = medians[0];
        for (mode, &rate) in MODES.iter().zip(&medians) {
            println!(
                "{connections:>11}  {:<14}  {rate:>25.0}  {:>15.2}",
                mode.name(),
                rate / baseline
            );
            if *mode == Mode::Outbox {
                outbox_ratio = rate / baseline;
            }
        }
        let [domain, plain_row, outbox, _] = medians[..] else {
            unreachable!("one median per mode")
        };
        println!(
            "{connections:>11}  commit time the outbox row adds / a plain row adds: {:.2}",
            added_time(domain, outbox) / added_time(domain, plain_row)
        );
    }
    // Last, for scripts: commits/s with an outbox row / without, 16 connections.
    println!("ratio {outbox_ratio:.2}");
    Ok(())
}

/// Seconds a row adds to each commit: one over the rate with it, less one over the
/// rate without. Where the two rates are within noise of each other, the quotient of
/// two such figures is noise too.
fn added_time(without: f64, with: f64) -> f64 {
    1.0 / with - 1.0 / without
}

/// With `asleep`, a connection of its own (the pool's are the writers') holding the
/// doorbell lock of every partition, as a sleeping relay does, so that every row rings.
async fn sleeping_relay(pool: &PgPool, asleep: bool) -> anyhow::Result<Option<PgConnection>> {
    if !asleep {
        return Ok(None);
    }
    let mut relay = PgConnection::connect_with(&pool.connect_options()).await?;
    sqlx::query("SELECT pg_advisory_lock(1869968482, p) FROM generate_series(0, 63) AS p")
        .execute(&mut relay)
        .await?;
    Ok(Some(relay))
}

async fn commit_rate(
    pool: &PgPool,
    mode: Mode,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + duration;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..connections {
        let pool = pool.clone();
        writers.spawn(async move {
            let mut commits = 0u64;
            while Instant::now() < deadline {
                write_one(&pool, mode, writer, commits).await?;
                commits += 1;
            }
            anyhow::Ok(commits)
        });
    }
    let mut total = 0;
    while let Some(commits) = writers.join_next().await {
        total += commits??;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

async fn write_one(pool: &PgPool, mode: Mode, writer: usize, n: u64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let order_id: i64 = sqlx::query_scalar(
        "INSERT INTO orders (customer, total_cents) VALUES ('ada', 4200) RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await?;
    if mode == Mode::PlainRow {
        plain_row(&mut tx, writer, n, order_id).await?;
    } else if mode != Mode::Domain {
        let message = Message::builder(
            format!("order-{writer}-{n}"),
            "OrderCreated",
            "orders.created",
        )
        .payload(&serde_json::json!({"order_id": order_id, "total_cents": 4200}))?;
        txoutbox::enqueue(&mut *tx, &message).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The outbox row's values, written as `txoutbox::enqueue` writes them, to the plain table.
async fn plain_row(
    tx: &mut PgConnection,
    writer: usize,
    n: u64,
    order_id: i64,
) -> anyhow::Result<()> {
    let payload = serde_json::json!({"order_id": order_id, "total_cents": 4200});
    sqlx::query(
        "INSERT INTO plain_rows
             (id, saga_id, step, routing_key, payload, exchange, headers, ordering_key, available_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + $9 * interval '1 millisecond')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(format!("order-{writer}-{n}"))
    .bind("OrderCreated")
    .bind("orders.created")
    .bind(payload)
    .bind(None::<String>)
    .bind(serde_json::json!({}))
    .bind(None::<String>)
    .bind(0i64)
    .execute(tx)
    .await?;
    Ok(())
}
