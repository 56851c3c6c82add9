//! Shared pieces of the benchmarks: a fresh database per run, a drained queue, medians.

pub mod broker;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Drops and recreates `name` on the server of `DATABASE_URL`, migrates it, and
/// returns a pool of `connections` to it. Checks both servers first, so that a bench
/// with one down stops at once with one line saying which to start.
pub async fn fresh_database(name: &str, connections: u32) -> anyhow::Result<PgPool> {
    testkit::require_servers();
    let server: PgConnectOptions = testkit::database_url().parse()?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(server.database(name))
        .await?;
    txoutbox::migrate(&pool).await?;
    Ok(pool)
}

/// The median of `samples` (the mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// CPU time of processes, read from `/proc` (Linux only; elsewhere it reads nothing).
pub mod cpu {
    use std::collections::HashMap;

    /// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, else 100).
    pub fn clock_ticks() -> u64 {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    }

    /// The command name and utime + stime (in clock ticks, all threads) of `pid`.
    fn stat(pid: u32) -> Option<(String, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        let comm = stat.get(open + 1..close)?.to_owned();
        // After "pid (comm) ": state is field 3, utime field 14, stime field 15.
        let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((comm, utime + stime))
    }

    /// utime + stime of `pid` in clock ticks, 0 if it is gone.
    pub fn ticks_of(pid: u32) -> u64 {
        stat(pid).map_or(0, |(_, ticks)| ticks)
    }

    /// utime + stime in clock ticks of every process whose command name is `comm`.
    pub fn ticks_by_pid(comm: &str) -> HashMap<u32, u64> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return HashMap::new();
        };
        dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let (name, ticks) = stat(pid)?;
                (name == comm).then_some((pid, ticks))
            })
            .collect()
    }

    /// Ticks spent between two snapshots by the processes alive at the second, whose
    /// pid passes `keep`; a process born in between counts whole. Processes that
    /// exited in between are not counted.
    pub fn spent(
        before: &HashMap<u32, u64>,
        after: &HashMap<u32, u64>,
        keep: impl Fn(u32) -> bool,
    ) -> u64 {
        after
            .iter()
            .filter(|(pid, _)| keep(**pid))
            .map(|(pid, ticks)| ticks.saturating_sub(before.get(pid).copied().unwrap_or(0)))
            .sum()
    }
}
