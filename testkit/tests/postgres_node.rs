//! A primary and a synchronous streaming standby of the test's own: the standby, once
//! the primary is stopped with no warning and it is promoted, has every committed row
//! and takes writes; nothing is left behind. Prints what each step took.

use std::time::Instant;

use sqlx::PgPool;
use testkit::{PostgresNode, Replication};

#[tokio::test]
async fn a_promoted_synchronous_standby_has_every_committed_row() -> anyhow::Result<()> {
    let how = "the postgresql server package installs initdb, pg_ctl and pg_basebackup";
    if !testkit::installed_or_skip("PostgreSQL server", PostgresNode::installed(), how)? {
        return Ok(());
    }
    let mut took = Vec::new();
    let clock = Instant::now();
    let mut primary = PostgresNode::start_primary("testkit-primary").await?;
    took.push(("start_primary", clock.elapsed()));
    let clock = Instant::now();
    let mut standby = primary
        .standby("testkit-standby", Replication::Synchronous)
        .await?;
    took.push(("standby (synchronous)", clock.elapsed()));
    primary.create_database("orders").await?;

    let pool = PgPool::connect(&primary.url("orders")).await?;
    sqlx::query("CREATE TABLE t (n int)").execute(&pool).await?;
    for n in 0..100 {
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(n)
            .execute(&pool)
            .await?;
    }
    let clock = Instant::now();
    primary.stop_immediate().await?;
    took.push(("stop_immediate", clock.elapsed()));
    assert!(!primary.is_running());
    let clock = Instant::now();
    standby.promote().await?;
    took.push(("promote", clock.elapsed()));

    let promoted = PgPool::connect(&standby.url("orders")).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&promoted)
        .await?;
    assert_eq!(count, 100, "every committed row is on the promoted standby");
    sqlx::query("INSERT INTO t VALUES (100)")
        .execute(&promoted)
        .await?;
    promoted.close().await;
    pool.close().await;

    let dirs = [primary.dir().to_owned(), standby.dir().to_owned()];
    primary.remove().await?;
    standby.remove().await?;
    assert!(dirs.iter().all(|dir| !dir.exists()), "nothing is left");
    eprintln!("took: {took:?}");
    Ok(())
}
