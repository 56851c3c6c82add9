//! The claim must reach a backlog through the outbox's indexes whatever the table's
//! statistics said when its plan was made. A plan made for an empty outbox and kept
//! (PL/pgSQL's generic plan) once looked for blocking rows by scanning the whole
//! outbox per candidate: 7.9 s for 500 rows of 50,000. The claim is planned on every
//! call for that reason; this test fails if a change brings such a plan back (it
//! does for a generic plan without `enable_seqscan = off`).

use sqlx::PgPool;

const CLAIM: &str = "SELECT count(*) FROM outbox_ready_batch(
    'relay', ARRAY(SELECT generate_series(0, 63)::smallint), 0, 500, 4194304)";

#[sqlx::test(migrator = "crate::support::MIGRATOR")]
async fn a_claim_planned_on_an_empty_outbox_reads_a_backlog_through_its_indexes(
    pool: PgPool,
) -> anyhow::Result<()> {
    // The statistics of an empty table, kept: no autovacuum ANALYZE in between.
    sqlx::query("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await?;
    sqlx::query("ANALYZE outbox").execute(&pool).await?;
    sqlx::query(
        "UPDATE outbox_relay_lease SET owner = 'relay', expires_at = now() + interval '1 hour'",
    )
    .execute(&pool)
    .await?;

    let mut relay = pool.acquire().await?;
    let claimed: i64 = sqlx::query_scalar(CLAIM).fetch_one(&mut *relay).await?;
    assert_eq!(claimed, 0);

    // 20,000 rows of 2,000 keys, and a dead row holding back one key, so the check
    // for blocking rows has something to find.
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload)
         SELECT 'order-' || (i % 2000), 'step-' || i, 'orders', '{}'
         FROM generate_series(1, 20000) i",
    )
    .execute(&pool)
    .await?;
    sqlx::query("UPDATE outbox SET state = 'dead' WHERE seq = (SELECT min(seq) FROM outbox)")
        .execute(&pool)
        .await?;

    let mut tx = sqlx::Acquire::begin(&mut *relay).await?;
    let claimed: i64 = sqlx::query_scalar(CLAIM).fetch_one(&mut *tx).await?;
    let (sequential, indexed): (i64, i64) = sqlx::query_as(
        "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'outbox'",
    )
    .fetch_one(&mut *tx)
    .await?;
    assert_eq!(claimed, 500, "a full batch from the backlog");
    assert_eq!(sequential, 0, "no sequential scan of the outbox");
    assert!(indexed > 0);
    Ok(())
}
