//! How fast the console's pages answer on large tables: the saga page for a saga with
//! 1,000 records across four databases of 1,000,000 outbox and 1,000,000 inbox rows
//! each, and the home page with 1,000,000 sagas in the orchestrator's database. Each
//! page is loaded 50 times (after 5 loads to warm up) and reported as p50 and p99.
//! The baseline, measured in the same run: the saga's records read straight with
//! sqlx from the four databases, one after the other, without the console.
//!
//! Run with: cargo run --release -p bench --bin console-bench (about 3 minutes to fill
//! the tables; `--reuse` keeps the tables of the previous run). Needs
//! `cargo build --release -p txoutbox-relay` for the console binary.

use std::time::{Duration, Instant};

use clap::Parser;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[derive(Parser)]
struct Args {
    /// Rows in each database's outbox and in its inbox.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Sagas in the orchestrator's database.
    #[arg(long, default_value_t = 1_000_000)]
    sagas: i64,
    /// Loads of each page measured.
    #[arg(long, default_value_t = 50)]
    loads: usize,
    /// Keep the databases of the previous run instead of filling them again.
    #[arg(long)]
    reuse: bool,
}

const SERVICES: [&str; 4] = ["order", "inventory", "payment", "shipping"];
const SAGA: &str = "order-bench-000001";
/// Records of the measured saga per database, half outbox and half inbox: 1,000 in all.
const RECORDS_PER_DATABASE: i64 = 250;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    testkit::require_servers();
    let server: PgConnectOptions = testkit::database_url().parse()?;
    let mut pools = Vec::new();
    for (index, service) in SERVICES.iter().enumerate() {
        let name = format!("console_bench_{service}");
        let pool = if args.reuse {
            PgPoolOptions::new()
                .max_connections(2)
                .connect_with(server.clone().database(&name))
                .await?
        } else {
            let pool = bench::fresh_database(&name, 2).await?;
            fill(&pool, args.rows, index == 0, args.sagas).await?;
            pool
        };
        pools.push((service.to_string(), name, pool));
    }

    let relay = std::env::current_exe()?.with_file_name("outbox-relay");
    anyhow::ensure!(
        relay.is_file(),
        "build the console first: cargo build --release -p txoutbox-relay"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let entries: Vec<String> = pools
        .iter()
        .map(|(service, name, _)| {
            format!(
                "{service}={}",
                replace_database(&testkit::database_url(), name)
            )
        })
        .collect();
    let mut console = tokio::process::Command::new(relay)
        .args(["console", "--listen", &format!("127.0.0.1:{port}")])
        .env("CONSOLE_DATABASES", entries.join("\n"))
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    testkit::wait_until(Duration::from_secs(20), "the console listens", async || {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok())
    })
    .await?;

    // The console looks for stuck sagas in the background, at its start and every 30 s;
    // the pages are measured after the first look, and the look is timed on its own.
    let looking = Instant::now();
    testkit::wait_until(
        Duration::from_secs(120),
        "the first look for stuck sagas ends",
        async || {
            let home = testkit::http_get(port, "/api/home").await?;
            let value: serde_json::Value = serde_json::from_str(testkit::body(&home))?;
            Ok(!value["stuck"].is_null())
        },
    )
    .await?;
    println!(
        "the first look for stuck sagas (4 databases) took {:.2} s",
        looking.elapsed().as_secs_f64()
    );

    let saga_page = format!("/saga?id={SAGA}");
    let page = testkit::http_get(port, &saga_page).await?;
    let shown = page.matches("<tr").count().saturating_sub(1);
    println!("saga page shows {shown} timeline rows and table rows for {SAGA}");
    let saga = time_loads(args.loads, || async {
        testkit::http_get(port, &saga_page).await.map(drop)
    })
    .await?;
    let home = time_loads(args.loads, || async {
        testkit::http_get(port, "/").await.map(drop)
    })
    .await?;
    let baseline = time_loads(args.loads, || async {
        for (_, _, pool) in &pools {
            read_directly(pool).await?;
        }
        Ok(())
    })
    .await?;
    testkit::stop(&mut console, Duration::from_secs(10)).await?;

    println!(
        "{} rows per table, {} sagas, {} loads each",
        args.rows, args.sagas, args.loads
    );
    report("saga page (4 databases, 1,000 records)", &saga);
    report("home page (4 databases)", &home);
    report("baseline: the saga's rows read with sqlx", &baseline);
    println!(
        "ratio {:.2}",
        percentile(&saga, 0.5) / percentile(&baseline, 0.5)
    );
    Ok(())
}

/// `rows` sent outbox rows and inbox records over 100,000 other sagas, the measured
/// saga's 250 records, and, for the orchestrator, `sagas` saga rows.
async fn fill(pool: &PgPool, rows: i64, orchestrator: bool, sagas: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload, state, sent_at, attempts, created_at)
         SELECT 'order-' || lpad((n % 100000)::text, 6, '0'), 'Step' || (n % 7), 'orders', '{\"n\": 1}',
                'sent', now() - interval '1 hour', 1, now() - interval '1 hour'
         FROM generate_series(1, $1) n",
    )
    .bind(rows)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO inbox (consumer, saga_id, step, message_id, result, processed_at)
         SELECT 'consumer', 'order-' || lpad((n % 100000)::text, 6, '0'), 'Step' || n, n::text, NULL,
                now() - interval '1 hour'
         FROM generate_series(1, $1) n",
    )
    .bind(rows)
    .execute(pool)
    .await?;
    let half = RECORDS_PER_DATABASE / 2;
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload, state, sent_at, attempts)
         SELECT $1, 'Bench' || n, 'orders', '{}', 'sent', now(), 1 FROM generate_series(1, $2) n",
    )
    .bind(SAGA)
    .bind(half)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO inbox (consumer, saga_id, step, message_id)
         SELECT 'consumer', $1, 'Bench' || n, 'bench-' || n FROM generate_series(1, $2) n",
    )
    .bind(SAGA)
    .bind(half)
    .execute(pool)
    .await?;
    if orchestrator {
        sqlx::query(
            "INSERT INTO saga_instance (saga_id, saga_type, definition_version, state, data, deadline_at, finished_at)
             SELECT 'saga-' || n, 'order', 1,
                    CASE WHEN n % 100 = 0 THEN 'running' WHEN n % 10 = 0 THEN 'compensated' ELSE 'completed' END,
                    '{}',
                    CASE WHEN n % 100 = 0 THEN now() + interval '1 hour' END,
                    CASE WHEN n % 100 = 0 THEN NULL ELSE now() END
             FROM generate_series(1, $1) n",
        )
        .bind(sagas)
        .execute(pool)
        .await?;
    }
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    println!(
        "filled a database in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The measured saga's records, as the console's queries read them.
async fn read_directly(pool: &PgPool) -> anyhow::Result<()> {
    let _: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, step FROM outbox WHERE saga_id = $1 ORDER BY seq")
            .bind(SAGA)
            .fetch_all(pool)
            .await?;
    let _: Vec<(String, String)> =
        sqlx::query_as("SELECT consumer, step FROM inbox WHERE saga_id = $1")
            .bind(SAGA)
            .fetch_all(pool)
            .await?;
    Ok(())
}

async fn time_loads<F, Fut>(loads: usize, load: F) -> anyhow::Result<Vec<f64>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..5 {
        load().await?;
    }
    let mut samples = Vec::with_capacity(loads);
    for _ in 0..loads {
        let started = Instant::now();
        load().await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(what: &str, samples: &[f64]) {
    println!(
        "{what}: p50 {:.1} ms, p99 {:.1} ms",
        percentile(samples, 0.5),
        percentile(samples, 0.99)
    );
}

fn replace_database(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => url.to_owned(),
    }
}
