//! Opening the relay's database connections before its first claim
//! (see [`txoutbox::postgres::open_ahead`] for why).

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Connections the relay uses at once when busy: one claim, one settling task per
/// batch in flight, and the lease heartbeat.
pub(crate) fn working_set(max_in_flight_batches: usize) -> u32 {
    u32::try_from(max_in_flight_batches)
        .unwrap_or(u32::MAX)
        .saturating_add(2)
}

/// Opens the working set ahead. Opened lazily instead, each of the first few
/// connections stalled the publishing loop for ~90 ms with rows waiting behind it
/// (`outbox-relay-bench` (c): a p99 of 50-85 ms at 500 rows/s, 4.8 ms after).
pub(crate) async fn warm(
    pool: &PgPool,
    max_in_flight_batches: usize,
    shutdown: &CancellationToken,
) {
    let wanted = working_set(max_in_flight_batches);
    txoutbox::postgres::open_ahead(pool, wanted, shutdown.cancelled()).await;
}

#[cfg(test)]
mod tests {
    use super::working_set;

    #[test]
    fn the_working_set_covers_every_batch_in_flight_and_never_overflows() {
        assert_eq!(working_set(4), 6);
        assert_eq!(working_set(usize::MAX), u32::MAX);
    }
}
