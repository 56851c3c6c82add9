//! `txoutbox::postgres::open_ahead`: a pool's connections opened before they are
//! needed.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

type TestResult = anyhow::Result<()>;

fn lazy_pool(pool: &PgPool, size: u32) -> PgPool {
    let options: PgConnectOptions = pool.connect_options().as_ref().clone();
    PgPoolOptions::new()
        .max_connections(size)
        .connect_lazy_with(options)
}

#[sqlx::test]
async fn opens_what_is_wanted_and_no_more_than_the_pool_holds(pool: PgPool) -> TestResult {
    let small = lazy_pool(&pool, 3);
    txoutbox::postgres::open_ahead(&small, 2, std::future::pending()).await;
    assert_eq!(small.size(), 2, "two");
    txoutbox::postgres::open_ahead(&small, 10, std::future::pending()).await;
    assert_eq!(small.size(), 3, "capped at the pool's size");
    Ok(())
}

#[sqlx::test]
async fn gives_up_when_told(pool: PgPool) -> TestResult {
    let lazy = lazy_pool(&pool, 4);
    txoutbox::postgres::open_ahead(&lazy, 4, std::future::ready(())).await;
    assert!(lazy.size() < 4, "nothing more opened once told to give up");
    Ok(())
}
