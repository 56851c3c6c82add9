//! The outbox against a real PostgreSQL, one fresh database per test.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use txoutbox::{Error, Message, State, enqueue, enqueue_batch, messages_for_saga};

type TestResult = anyhow::Result<()>;

async fn count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

fn order_created(saga_id: &str) -> Message {
    Message::builder(saga_id, "OrderCreated", "orders.created")
        .payload(&json!({"order_id": 7, "total_cents": 4200}))
        .expect("valid message")
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn commit_makes_the_row_visible_with_defaults(pool: PgPool) -> TestResult {
    let message = order_created("saga-commit");
    let mut tx = pool.begin().await?;
    let id = enqueue(&mut *tx, &message).await?;
    assert_eq!(
        count(&pool).await?,
        0,
        "uncommitted rows are invisible to others"
    );
    tx.commit().await?;

    let rows = messages_for_saga(&pool, "saga-commit").await?;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.id, id);
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(row.step, "OrderCreated");
    assert_eq!(row.routing_key, "orders.created");
    assert_eq!(row.payload, json!({"order_id": 7, "total_cents": 4200}));
    assert_eq!(
        row.ordering_key, "saga-commit",
        "ordering key defaults to saga_id"
    );
    assert_eq!(row.exchange, None, "no exchange means the relay's own");
    assert!(row.headers.0.is_empty());
    assert_eq!(row.state, State::Pending);
    assert_eq!(row.attempts, 0);
    assert!(row.available_at <= chrono::Utc::now());
    Ok(())
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn rollback_leaves_nothing(pool: PgPool) -> TestResult {
    sqlx::query("CREATE TABLE orders (id bigserial PRIMARY KEY, total bigint NOT NULL)")
        .execute(&pool)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (total) VALUES (42)")
        .execute(&mut *tx)
        .await?;
    enqueue(&mut *tx, &order_created("saga-rollback")).await?;
    tx.rollback().await?;

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await?;
    assert_eq!((orders, count(&pool).await?), (0, 0));
    Ok(())
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn a_batch_of_a_thousand_is_one_statement_in_order(pool: PgPool) -> TestResult {
    let messages: Vec<Message> = (0..1000)
        .map(|i| {
            Message::builder("saga-batch", format!("step-{i}"), "batch.item")
                .header("n", i.to_string())
                .payload(&json!({ "n": i }))
        })
        .collect::<Result<_, _>>()?;
    let ids = enqueue_batch(&pool, &messages).await?;
    assert_eq!(ids.len(), 1000);

    let rows = messages_for_saga(&pool, "saga-batch").await?;
    let written: Vec<_> = rows.iter().map(|r| r.id).collect();
    assert_eq!(written, ids, "rows are in slice order by seq");
    assert_eq!(rows[999].payload, json!({"n": 999}));
    assert_eq!(rows[999].headers.0["n"], json!("999"));
    Ok(())
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn a_failing_batch_writes_nothing(pool: PgPool) -> TestResult {
    let first = order_created("saga-dup");
    let same_id = Message::builder("saga-dup", "Other", "orders.other")
        .id(first.id())
        .payload(&json!({}))?;
    let err = enqueue_batch(&pool, &[first, same_id]).await.unwrap_err();
    let Error::Database(sqlx::Error::Database(db)) = &err else {
        panic!("expected a database error, got {err:?}");
    };
    assert_eq!(db.constraint(), Some("outbox_pkey"));
    assert_eq!(count(&pool).await?, 0);
    Ok(())
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn concurrent_writers_each_commit_their_own_rows(pool: PgPool) -> TestResult {
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..16 {
        let pool = pool.clone();
        writers.spawn(async move {
            for i in 0..25 {
                let mut tx = pool.begin().await?;
                enqueue(&mut *tx, &order_created(&format!("saga-{writer}-{i}"))).await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = writers.join_next().await {
        result??;
    }
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM outbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!((count(&pool).await?, distinct), (400, 400));
    Ok(())
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn a_raw_sql_writer_produces_the_same_row(pool: PgPool) -> TestResult {
    // Exactly the statement the table contract (docs/reference/outbox-table.md) gives a writer in another language.
    sqlx::query(
        "INSERT INTO outbox (saga_id, step, routing_key, payload) VALUES ($1, $2, $3, $4::jsonb)",
    )
    .bind("saga-raw")
    .bind("OrderCreated")
    .bind("orders.created")
    .bind(r#"{"order_id": 7, "total_cents": 4200}"#)
    .execute(&pool)
    .await?;
    enqueue(&pool, &order_created("saga-rust")).await?;

    let raw = messages_for_saga(&pool, "saga-raw").await?.remove(0);
    let rust = messages_for_saga(&pool, "saga-rust").await?.remove(0);
    assert_eq!(
        raw.id.get_version_num(),
        7,
        "the database default is a UUIDv7 too"
    );
    let comparable = |m: &txoutbox::StoredMessage| {
        (
            m.step.clone(),
            m.routing_key.clone(),
            m.payload.clone(),
            m.exchange.clone(),
            m.headers.clone(),
            m.state,
            m.attempts,
        )
    };
    assert_eq!(comparable(&raw), comparable(&rust));
    assert_eq!(raw.ordering_key, "saga-raw");
    Ok(())
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn the_table_rejects_rows_that_break_the_contract(pool: PgPool) -> TestResult {
    let long = "k".repeat(256);
    let cases: [(&str, &str, &str, &str, &str); 6] = [
        ("", "s", "r", "{}", "outbox_saga_id_valid"),
        ("x", "", "r", "{}", "outbox_step_valid"),
        ("x", "s", "", "{}", "outbox_routing_key_valid"),
        ("x", "s", &long, "{}", "outbox_routing_key_valid"),
        ("x", "s", "r", "[1]", "outbox_headers_is_object"),
        ("x", "s", "r", "\"text\"", "outbox_headers_is_object"),
    ];
    for (saga_id, step, routing_key, headers, constraint) in cases {
        let err = sqlx::query(
            "INSERT INTO outbox (saga_id, step, routing_key, payload, headers)
             VALUES ($1, $2, $3, '{}', $4::jsonb)",
        )
        .bind(saga_id)
        .bind(step)
        .bind(routing_key)
        .bind(headers)
        .execute(&pool)
        .await
        .unwrap_err();
        let db = err.as_database_error().expect("a database error");
        assert_eq!(
            db.constraint(),
            Some(constraint),
            "{saga_id:?} {step:?} {headers}"
        );
    }
    let not_null =
        sqlx::query("INSERT INTO outbox (saga_id, step, routing_key) VALUES ('x', 's', 'r')")
            .execute(&pool)
            .await;
    assert!(not_null.is_err(), "payload is required");
    assert_eq!(count(&pool).await?, 0);
    Ok(())
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn bad_messages_never_reach_the_database(pool: PgPool) -> TestResult {
    let bad = [
        Message::builder("", "s", "r").payload(&1),
        Message::builder("x", "s", "r")
            .exchange("e".repeat(300))
            .payload(&1),
        Message::builder("x", "s", "r")
            .delay(Duration::MAX)
            .payload(&1),
    ];
    for result in bad {
        assert!(
            matches!(result, Err(Error::InvalidMessage { .. })),
            "{result:?}"
        );
    }
    assert_eq!(count(&pool).await?, 0);
    Ok(())
}

#[sqlx::test(migrator = "txoutbox::MIGRATOR")]
async fn options_land_in_their_columns(pool: PgPool) -> TestResult {
    let message = Message::builder("saga-opts", "PaymentCharged", "payments.charged")
        .exchange("payments")
        .ordering_key("customer-9")
        .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .delay(Duration::from_secs(3600))
        .payload(&json!({"amount": 10}))?;
    enqueue(&pool, &message).await?;

    let row = messages_for_saga(&pool, "saga-opts").await?.remove(0);
    assert_eq!(row.exchange.as_deref(), Some("payments"));
    assert_eq!(row.ordering_key, "customer-9");
    assert_eq!(
        row.headers.0["traceparent"],
        json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    let delay = row.available_at - row.created_at;
    assert_eq!(delay.num_seconds(), 3600);
    Ok(())
}
