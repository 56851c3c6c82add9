//! The inbox against a real PostgreSQL, one fresh database per test.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use txoutbox_inbox::{Error, Inbox, InboxKey, Outcome, cleanup};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator =
    testkit::CheckedMigrator::new(&txoutbox_inbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

const KEY: InboxKey<'static> = InboxKey {
    saga_id: "order-42",
    step: "ChargePayment",
    message_id: Some("m-1"),
};

async fn with_charges(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE charges (id bigserial PRIMARY KEY, saga_id text NOT NULL)")
        .execute(pool)
        .await?;
    Ok(())
}

async fn charges(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(pool)
        .await?)
}

/// The effect under test: one charge row, its id as the result.
async fn charge(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO charges (saga_id) VALUES ('order-42') RETURNING id")
        .fetch_one(&mut *conn)
        .await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_redelivered_message_takes_no_second_effect(pool: PgPool) -> TestResult {
    with_charges(&pool).await?;
    let inbox = Inbox::new("payments");
    let first = inbox
        .process(&pool, KEY, async |conn: &mut PgConnection| {
            charge(conn).await
        })
        .await?;
    let again = inbox
        .process(&pool, KEY, async |conn: &mut PgConnection| {
            charge(conn).await
        })
        .await?;

    let Outcome::Processed(charge_id) = first else {
        panic!("first delivery: {first:?}")
    };
    assert_eq!(
        again,
        Outcome::Duplicate {
            result: Some(serde_json::json!(charge_id))
        }
    );
    assert_eq!(charges(&pool).await?, 1);
    let message_id: Option<String> = sqlx::query_scalar("SELECT message_id FROM inbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(message_id.as_deref(), Some("m-1"));
    let duplicates: i32 = sqlx::query_scalar("SELECT duplicates FROM inbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(duplicates, 1, "the duplicate is counted on its key");
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_same_message_delivered_at_the_same_moment_takes_effect_once(
    pool: PgPool,
) -> TestResult {
    with_charges(&pool).await?;
    let inbox = Arc::new(Inbox::new("payments"));
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (pool, inbox, start) = (pool.clone(), Arc::clone(&inbox), Arc::clone(&start));
        deliveries.spawn(async move {
            start.wait().await;
            inbox
                .process(&pool, KEY, async |conn: &mut PgConnection| {
                    let id = charge(conn).await?;
                    // Hold the transaction open so the others arrive while it is uncommitted.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, sqlx::Error>(id)
                })
                .await
        });
    }
    let mut processed = 0;
    while let Some(outcome) = deliveries.join_next().await {
        if matches!(outcome??, Outcome::Processed(_)) {
            processed += 1;
        }
    }
    assert_eq!((processed, charges(&pool).await?), (1, 1));
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failing_handler_leaves_neither_effect_nor_key(pool: PgPool) -> TestResult {
    with_charges(&pool).await?;
    let inbox = Inbox::new("payments");
    let failed = inbox
        .process(&pool, KEY, async |conn: &mut PgConnection| {
            charge(conn).await?;
            Err::<i64, _>(sqlx::Error::Protocol("card declined by the test".into()))
        })
        .await;
    assert!(matches!(failed, Err(Error::Handler(_))), "{failed:?}");
    assert_eq!(charges(&pool).await?, 0, "the effect rolled back");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(keys, 0, "the key is not recorded, so the retry runs");

    let retried = inbox
        .process(&pool, KEY, async |conn: &mut PgConnection| {
            charge(conn).await
        })
        .await?;
    assert!(matches!(retried, Outcome::Processed(_)));
    assert_eq!(charges(&pool).await?, 1);
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn each_consumer_processes_a_message_once(pool: PgPool) -> TestResult {
    with_charges(&pool).await?;
    for consumer in ["payments", "audit"] {
        for _ in 0..2 {
            Inbox::new(consumer)
                .process(&pool, KEY, async |conn: &mut PgConnection| {
                    charge(conn).await
                })
                .await?;
        }
    }
    assert_eq!(charges(&pool).await?, 2, "once per consumer");
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn replies_commit_with_the_effect_and_are_not_sent_twice(pool: PgPool) -> TestResult {
    with_charges(&pool).await?;
    let inbox = Inbox::new("payments");
    for _ in 0..3 {
        inbox
            .process(&pool, KEY, async |conn: &mut PgConnection| {
                let id = charge(conn).await?;
                let reply =
                    txoutbox::Message::builder("order-42", "PaymentCharged", "payments.charged")
                        .payload(&serde_json::json!({ "charge_id": id }))?;
                txoutbox::enqueue(&mut *conn, &reply).await?;
                Ok::<_, txoutbox::Error>(id)
            })
            .await?;
    }
    let replies = txoutbox::messages_for_saga(&pool, "order-42").await?;
    assert_eq!((replies.len(), charges(&pool).await?), (1, 1));
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_message_without_a_key_is_refused_and_nothing_is_written(pool: PgPool) -> TestResult {
    with_charges(&pool).await?;
    let inbox = Inbox::new("payments");
    let no_saga = InboxKey { saga_id: "", ..KEY };
    let refused = inbox
        .process(&pool, no_saga, async |conn: &mut PgConnection| {
            charge(conn).await
        })
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidKey("saga_id"))),
        "{refused:?}"
    );
    let no_step = InboxKey { step: "", ..KEY };
    let refused = inbox
        .process(&pool, no_step, async |conn: &mut PgConnection| {
            charge(conn).await
        })
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidKey("step"))),
        "{refused:?}"
    );
    assert_eq!(charges(&pool).await?, 0);
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn keys_past_the_retention_go_and_their_duplicates_take_effect_again(
    pool: PgPool,
) -> TestResult {
    with_charges(&pool).await?;
    let inbox = Inbox::new("payments");
    for step in ["a", "b", "c", "d", "e"] {
        let key = InboxKey { step, ..KEY };
        inbox
            .process(&pool, key, async |conn: &mut PgConnection| {
                charge(conn).await
            })
            .await?;
    }
    sqlx::query("UPDATE inbox SET processed_at = now() - interval '8 days' WHERE step <> 'e'")
        .execute(&pool)
        .await?;

    assert_eq!(
        cleanup(&pool, txoutbox_inbox::DEFAULT_RETENTION, 3).await?,
        4,
        "in batches of 3"
    );
    let left: Vec<String> = sqlx::query_scalar("SELECT step FROM inbox")
        .fetch_all(&pool)
        .await?;
    assert_eq!(left, ["e"]);
    // The documented trade-off: a duplicate later than the window is not recognised.
    let late = inbox
        .process(
            &pool,
            InboxKey { step: "a", ..KEY },
            async |conn: &mut PgConnection| charge(conn).await,
        )
        .await?;
    assert!(matches!(late, Outcome::Processed(_)));
    Ok(())
}
