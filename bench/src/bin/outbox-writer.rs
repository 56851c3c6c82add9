//! What the outbox costs a writer: commits/s of a transaction that writes one
//! domain row, alone and with one outbox message, at 1 and 16 connections.
//!
//! Run with: `cargo run --release -p bench --bin outbox-writer`
//!
//! Modes, interleaved within each round so machine noise hits all alike:
//! - `domain`: the domain row only (the baseline).
//! - `outbox`: plus one message. No relay sleeps, as when a relay is busy: the
//!   row's trigger takes its partition's doorbell lock, shared, and rings no bell.
//! - `outbox+notify`: plus one message, with every partition's doorbell lock held
//!   as an idle relay holds them, so every commit sends a NOTIFY (the doorbell's
//!   worst case).

use std::time::{Duration, Instant};

use bench::{fresh_database, median};
use clap::Parser;
use outbox::Message;
use sqlx::{Connection, PgConnection, PgPool};

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
    Outbox,
    OutboxNotify,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Domain => "domain",
            Mode::Outbox => "outbox",
            Mode::OutboxNotify => "outbox+notify",
        }
    }
}

const MODES: [Mode; 3] = [Mode::Domain, Mode::Outbox, Mode::OutboxNotify];

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
                sqlx::query("TRUNCATE outbox, orders")
                    .execute(&pool)
                    .await?;
            }
        }
        let baseline = median(&rates[0]);
        for (mode, samples) in MODES.iter().zip(&rates) {
            let rate = median(samples);
            println!(
                "{connections:>11}  {:<14}  {rate:>25.0}  {:>15.2}",
                mode.name(),
                rate / baseline
            );
            if *mode == Mode::Outbox {
                outbox_ratio = rate / baseline;
            }
        }
    }
    // Last, for scripts: commits/s with an outbox row / without, 16 connections.
    println!("ratio {outbox_ratio:.2}");
    Ok(())
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
    if mode != Mode::Domain {
        let message = Message::builder(
            format!("order-{writer}-{n}"),
            "OrderCreated",
            "orders.created",
        )
        .payload(&serde_json::json!({"order_id": order_id, "total_cents": 4200}))?;
        outbox::enqueue(&mut *tx, &message).await?;
    }
    tx.commit().await?;
    Ok(())
}
