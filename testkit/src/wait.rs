//! Polling waits: check, sleep a little, check again, until a deadline.

use std::time::{Duration, Instant};

/// How long to sleep between two checks.
pub(crate) const POLL: Duration = Duration::from_millis(25);

/// Waits until `check` says yes, or fails after `timeout` saying it waited for `what`.
/// An error from `check` ends the wait at once.
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
    while !check().await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}
