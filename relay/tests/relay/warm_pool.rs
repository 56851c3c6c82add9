//! The relay opens the connections it will need before rows wait on them.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use txoutbox_relay::Relay;

use crate::support::*;

/// The relay's pool connections, told from its doorbell's listener by the last
/// statement the listener ran: its `LISTEN`, or taking or giving back the doorbell's
/// advisory locks.
const POOL_CONNECTIONS: &str = "SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'relay-warm'
      AND query NOT ILIKE 'LISTEN %' AND query NOT ILIKE '%advisory%'";

/// A pool opens connections when first needed, and a new TLS connection costs
/// about 90 ms with sqlx 0.9.0; opened lazily, one per batch in flight, each
/// stalled the publishing loop with rows waiting behind it (a p99 of 50-90 ms at
/// 500 rows/s). Before the relay first goes idle it must have opened one for the
/// claim, one per batch in flight and one for the heartbeat. Without the warm-up
/// it had opened 3 of the 6 by then (3 of 3 runs).
#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn the_relay_opens_its_working_connections_before_any_row_waits(pool: PgPool) -> TestResult {
    let options: PgConnectOptions = database_url_of(&pool)
        .parse::<PgConnectOptions>()?
        .application_name("relay-warm");
    let relay_pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_lazy_with(options);
    let config = fast_config("");
    let expected = i64::try_from(config.max_in_flight_batches)? + 2;
    let relay = Relay::new(relay_pool, amqp_url(), config).spawn();
    first_idle(&pool).await?;
    let opened: i64 = sqlx::query_scalar(POOL_CONNECTIONS)
        .fetch_one(&pool)
        .await?;
    relay.shutdown().await?;
    // At least: a connection the pool opens later, when one is on its way back to
    // the pool just as the next statement asks, is not what this is about.
    assert!(
        opened >= expected,
        "connections open when the relay first went idle: {opened} of {expected}"
    );
    Ok(())
}
