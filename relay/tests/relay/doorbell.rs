//! The doorbell is heard from the moment writers are asked to ring.

use std::time::Duration;

use outbox_relay::Relay;
use sqlx::PgPool;

use crate::support::*;

/// Sessions of this database whose last statement was the doorbell's `LISTEN`.
const LISTENERS: &str = "SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND query ILIKE 'LISTEN %outbox_ready%'";

/// Writers ring only while a relay has `listening` set, so the relay must have its
/// `LISTEN` in place before it sets it: a ring sent in between is lost, and rows
/// written then wait for the fallback poll (`--poll-interval`, 1 s by default). The
/// relay used to connect its listener only after setting `listening`; this test
/// failed on that in 4 of 4 runs. Each round starts a relay and looks at the first
/// moment it asks writers to ring.
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn the_relay_listens_before_it_asks_writers_to_ring(pool: PgPool) -> TestResult {
    for round in 1..=8 {
        let relay = Relay::new(pool.clone(), amqp_url(), fast_config("")).spawn();
        first_idle(&pool).await?;
        let listeners: i64 = sqlx::query_scalar(LISTENERS).fetch_one(&pool).await?;
        relay.shutdown().await?;
        assert_eq!(
            listeners, 1,
            "round {round}: writers were asked to ring before anyone listened"
        );

        sqlx::query("DELETE FROM outbox_relay_instance")
            .execute(&pool)
            .await?;
        wait_until(
            Duration::from_secs(10),
            "the listener is gone",
            async || {
                let left: i64 = sqlx::query_scalar(LISTENERS).fetch_one(&pool).await?;
                Ok(left == 0)
            },
        )
        .await?;
    }
    Ok(())
}
