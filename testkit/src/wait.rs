//! Polling waits: check, sleep a little, check again, until a deadline.

use std::time::{Duration, Instant};

/// How long to sleep between two checks.
pub(crate) const POLL: Duration = Duration::from_millis(25);

/// Waits until `check` says yes, or fails after `timeout` saying it waited for `what`.
/// An error from `check` ends the wait at once, and so does the deadline while a
/// check is still running: one check that hangs cannot hold a test for ever.
///
/// ```rust,no_run
/// # async fn demo(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// use std::time::Duration;
///
/// testkit::wait_until(Duration::from_secs(10), "the outbox is empty", async || {
///     let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
///         .fetch_one(&pool)
///         .await?;
///     Ok(left == 0)
/// })
/// .await
/// # }
/// ```
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    check: impl AsyncFn() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let timed_out = || anyhow::anyhow!("timed out after {timeout:?} waiting until {what}");
    loop {
        // The last check gets at least one poll's time, even past the deadline.
        let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
        let checked = tokio::time::timeout(left, check()).await;
        if checked.map_err(|_| timed_out())?? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, timed_out());
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_never_returns_ends_at_the_deadline() {
        let waited = wait_until(Duration::from_millis(200), "never", async || {
            std::future::pending::<()>().await;
            Ok(true)
        });
        let error = tokio::time::timeout(Duration::from_secs(10), waited)
            .await
            .expect("the wait ended")
            .expect_err("the wait failed");
        assert!(error.to_string().contains("waiting until never"), "{error}");
    }

    #[tokio::test]
    async fn a_check_that_turns_true_ends_the_wait() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        wait_until(Duration::from_secs(10), "the third call", async || {
            Ok(calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 2)
        })
        .await
        .expect("the wait succeeded");
        assert_eq!(calls.into_inner(), 3);
    }
}
