//! Reading the figures: a process's resident memory and open files from `/proc`,
//! PostgreSQL's connections to the run's databases from `pg_stat_activity`.

use std::collections::BTreeMap;

use sqlx::PgPool;

/// A process's resident set in KiB (`VmRSS` of `/proc/PID/status`), `None` if it is
/// gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's open file descriptors (entries of `/proc/PID/fd`), `None` if it is gone.
pub fn fds(pid: u32) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.count() as u64)
}

/// Connections to each of `databases` (database name to count; a database with none
/// is 0), the demo's own progress pool included. `None` if the server did not answer.
pub async fn pg_connections(pool: &PgPool, databases: &[String]) -> Option<BTreeMap<String, u64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT datname::text, count(*) FROM pg_stat_activity
          WHERE datname = ANY($1) GROUP BY datname",
    )
    .bind(databases)
    .fetch_all(pool)
    .await
    .ok()?;
    let mut counts: BTreeMap<String, u64> = databases.iter().map(|d| (d.clone(), 0)).collect();
    for (database, count) in rows {
        counts.insert(database, count.max(0) as u64);
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        assert!(fds(me).is_some_and(|n| n >= 3));
        assert_eq!(rss_kib(u32::MAX), None);
        assert_eq!(fds(u32::MAX), None);
    }
}
