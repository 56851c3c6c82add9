//! Forgetting old inbox keys, so the table does not grow without bound.

use std::time::Duration;

use sqlx::PgPool;

/// How long inbox keys are kept by default. A duplicate that arrives after its key
/// was deleted takes effect again: keep keys longer than any redelivery can lag.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Deletes inbox keys processed more than `retention` ago, `batch_size` per
/// statement and oldest first, until none is left or 100 batches ran (so one call is
/// bounded). Returns how many keys went.
pub async fn cleanup(
    pool: &PgPool,
    retention: Duration,
    batch_size: u32,
) -> Result<u64, sqlx::Error> {
    let retention = txoutbox::postgres::interval(retention);
    let mut total = 0;
    for _ in 0..100 {
        let deleted = sqlx::query(
            "DELETE FROM inbox WHERE (consumer, saga_id, step) IN (
                 SELECT consumer, saga_id, step FROM inbox
                 WHERE processed_at < now() - $1 ORDER BY processed_at LIMIT $2)",
        )
        .bind(retention)
        .bind(i64::from(batch_size))
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < u64::from(batch_size) {
            break;
        }
    }
    Ok(total)
}
