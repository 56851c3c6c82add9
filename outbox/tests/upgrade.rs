//! Upgrading a database that already holds rows: the migration that moved the
//! column rules into domains keeps every row, its defaults and every rule, and a
//! writer's prepared INSERT goes on working across it.

use sqlx::PgPool;
use txoutbox::Message;

type TestResult = anyhow::Result<()>;

/// The first migration of the release that moved the column rules into domains.
const DOMAINS: i64 = 20261201000001;

/// Runs the outbox's migrations whose version is before (or, with `before`
/// false, from) `version`, as plain SQL: the point is the schema change itself,
/// on a table that has rows.
async fn apply(pool: &PgPool, version: i64, before: bool) -> anyhow::Result<()> {
    for migration in txoutbox::MIGRATOR.iter() {
        if (migration.version < version) == before {
            sqlx::raw_sql(migration.sql.clone()).execute(pool).await?;
        }
    }
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn moving_the_rules_into_domains_keeps_rows_and_rules(pool: PgPool) -> TestResult {
    apply(&pool, DOMAINS, true).await?;
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload, exchange, headers)
         VALUES ('saga-old', 'OrderCreated', 'orders.created', '{\"n\": 1}', 'orders', '{\"k\": \"v\"}'),
                ('saga-old', 'OrderPaid', 'orders.paid', '{\"n\": 2}', NULL, '{}')",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "UPDATE outbox SET state = 'dead', last_error = 'refused' WHERE step = 'OrderPaid'",
    )
    .execute(&pool)
    .await?;
    // A writer's connection, with its INSERT prepared before the upgrade.
    let mut writer = pool.acquire().await?;
    let message = |step: &str| Message::builder("saga-writer", step, "orders.created").payload(&1);
    txoutbox::enqueue(&mut *writer, &message("Before")?).await?;
    // The casts keep this reading's result type the same on both sides of the
    // upgrade; a statement prepared before it whose result has one of the changed
    // columns fails on its connection afterwards (see CHANGELOG).
    let rows = "SELECT saga_id::text, step::text, ordering_key::text, partition
                FROM outbox ORDER BY seq";
    let before: Vec<(String, String, String, i16)> =
        sqlx::query_as(rows).fetch_all(&mut *writer).await?;
    // The relay's claim, on the same connection, before and after.
    sqlx::query(
        "UPDATE outbox_relay_lease SET owner = 'relay', expires_at = now() + interval '1 hour'",
    )
    .execute(&mut *writer)
    .await?;
    let claim = "SELECT count(*) FROM outbox_ready_batch(
                     'relay', (SELECT array_agg(partition) FROM outbox_relay_lease), 0, 100, 1000000)";
    let claimable: i64 = sqlx::query_scalar(claim).fetch_one(&mut *writer).await?;

    apply(&pool, DOMAINS, false).await?;

    let after: Vec<(String, String, String, i16)> =
        sqlx::query_as(rows).fetch_all(&mut *writer).await?;
    assert_eq!(after, before, "rows survive the migration unchanged");
    let still_claimable: i64 = sqlx::query_scalar(claim).fetch_one(&mut *writer).await?;
    assert_eq!(
        still_claimable, claimable,
        "a running relay's claim still works"
    );
    txoutbox::enqueue(&mut *writer, &message("After")?).await?;
    let written: Vec<txoutbox::StoredMessage> =
        txoutbox::messages_for_saga(&pool, "saga-writer").await?;
    assert_eq!(written.len(), 2, "the writer's prepared INSERT still works");
    assert_eq!(written[1].ordering_key, "saga-writer");
    let dead: (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM outbox WHERE step = 'OrderPaid'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(dead, ("dead".to_owned(), Some("refused".to_owned())));

    // The rules hold, under their old names, for writers and for the relay's updates.
    let rejected = [
        (
            "INSERT INTO outbox (saga_id, step, routing_key, payload) VALUES ('', 's', 'r', '{}')",
            "outbox_saga_id_valid",
        ),
        (
            "INSERT INTO outbox (saga_id, step, routing_key, payload, headers)
             VALUES ('x', 's', 'r', '{}', '[]')",
            "outbox_headers_is_object",
        ),
        (
            "UPDATE outbox SET state = 'lost' WHERE step = 'OrderCreated'",
            "outbox_state_known",
        ),
        (
            "UPDATE outbox SET ordering_key = '' WHERE step = 'OrderCreated'",
            "outbox_ordering_key_valid",
        ),
    ];
    for (statement, constraint) in rejected {
        let err = sqlx::query(statement).execute(&pool).await.unwrap_err();
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("23514"), "{statement}");
        assert_eq!(db.constraint(), Some(constraint), "{statement}");
    }
    let validated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint
         WHERE contypid <> 0 AND conname LIKE 'outbox\\_%' AND convalidated",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(validated, 7, "every domain rule is validated");
    Ok(())
}
