//! `txoutbox::reach::Explainer`: a server that stays down is explained once, not at
//! every failure while it is down.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use txoutbox::reach::{Cause, Explainer};

/// A pool for a port on this machine where nothing listens.
fn pool_of_a_server_that_is_down() -> anyhow::Result<sqlx::PgPool> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("app")
        .database("orders");
    Ok(PgPoolOptions::new().connect_lazy_with(options))
}

#[tokio::test]
async fn a_server_that_stays_down_is_named_once_until_a_while_has_passed() -> anyhow::Result<()> {
    let pool = pool_of_a_server_that_is_down()?;
    let explainer = Explainer::new();
    let first = explainer.explain(&pool, &sqlx::Error::PoolTimedOut).await;
    let Some(unreachable) = first else {
        anyhow::bail!("a refused server was not explained");
    };
    assert_eq!(unreachable.cause, Cause::Refused);
    assert!(
        unreachable.server.ends_with("/orders as app"),
        "{}",
        unreachable.server
    );
    for _ in 0..3 {
        let again = explainer.explain(&pool, &sqlx::Error::PoolTimedOut).await;
        assert_eq!(again, None, "named again within EXPLAIN_EVERY");
    }
    // Another part of the same process (its own explainer) names it at once.
    assert!(
        Explainer::new()
            .explain(&pool, &sqlx::Error::PoolTimedOut)
            .await
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn an_error_about_a_statement_is_not_explained() -> anyhow::Result<()> {
    let pool = pool_of_a_server_that_is_down()?;
    let explainer = Explainer::new();
    let not_found = sqlx::Error::RowNotFound;
    assert_eq!(explainer.explain(&pool, &not_found).await, None);
    // And it took nothing from the next failure's explanation.
    assert!(
        explainer
            .explain(&pool, &sqlx::Error::PoolTimedOut)
            .await
            .is_some()
    );
    Ok(())
}
