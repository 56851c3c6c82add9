//! Sagas that model processes, against a real PostgreSQL (a fresh database per test):
//! end hooks in the final move's transaction, waits for events delivered with
//! `signal`, parallel groups, and versions. The engine is driven directly, as the
//! orchestrator's consumer and sweep drive it; the broker is not needed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use txoutbox_inbox::BoxError;
use txoutbox_saga::{Applied, Registry, Saga, SagaState, Signaled};

mod common;

use common::orders::{CREATE_ORDERS, Order, cancelled, place};
use common::{commands, expire, failed, ok, reply_to, state, steps};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

/// The service's `orders` table, and the switches of the hooks that fail on purpose.
async fn with_orders(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(CREATE_ORDERS).execute(pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE hook_breaks (broken boolean NOT NULL);
         INSERT INTO hook_breaks VALUES (false);
         CREATE TABLE hook_tries (n serial);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The shared `shipped` end hook, breakable: while `hook_breaks` says so, it writes,
/// then fails, and its write must roll back with the move.
async fn shipped(conn: &mut PgConnection, order: Order) -> Result<(), BoxError> {
    common::orders::shipped(&mut *conn, order).await?;
    let broken: bool = sqlx::query_scalar("SELECT broken FROM hook_breaks")
        .fetch_one(&mut *conn)
        .await?;
    if broken {
        return Err("the orders table is read-only today".into());
    }
    Ok(())
}

async fn panics(_: &mut PgConnection, _: Order) -> Result<(), BoxError> {
    panic!("a bug in the hook")
}

/// reserve (compensable) -> wait for payment.captured -> ship.
fn order_saga() -> Saga<Order> {
    Saga::<Order>::define("order", 1)
        .compensation_attempts(2)
        .step("reserve")
        .action(
            "inventory.reserve",
            |o: &Order| json!({ "order_id": o.order_id }),
        )
        .compensate(
            "inventory.release",
            |o: &Order| json!({ "order_id": o.order_id }),
        )
        .step("await_capture")
        .wait_for("payment.captured")
        .timeout(Duration::from_secs(3600))
        .step("ship")
        .action(
            "shipping.schedule",
            |o: &Order| json!({ "capture": o.capture_id }),
        )
        .on_completed(shipped)
        .on_compensated(cancelled)
        .build()
        .expect("a valid definition")
}

fn registry() -> Registry {
    Registry::new().register(order_saga())
}

async fn order_status(pool: &PgPool, order_id: i64) -> anyhow::Result<(String, Option<String>)> {
    Ok(
        sqlx::query_as("SELECT status, why FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(pool)
            .await?,
    )
}

async fn signal(
    pool: &PgPool,
    saga_id: &str,
    event: &str,
    payload: serde_json::Value,
) -> anyhow::Result<Signaled> {
    let mut tx = pool.begin().await?;
    let signaled = txoutbox_saga::signal(&mut tx, saga_id, event, &payload).await?;
    tx.commit().await?;
    Ok(signaled)
}

/// The payment provider's `payment.captured` for the saga, with `capture_id` (of
/// any JSON type: one that does not fit the saga's data is refused).
async fn captured(
    pool: &PgPool,
    saga_id: &str,
    capture_id: impl Serialize,
) -> anyhow::Result<Signaled> {
    let payload = json!({ "capture_id": capture_id });
    signal(pool, saga_id, "payment.captured", payload).await
}

async fn sweep(pool: &PgPool, registry: &Registry) -> anyhow::Result<()> {
    txoutbox_saga::sweep_due(pool, registry, 100).await?;
    Ok(())
}

/// What became of the saga's signals, oldest first.
async fn signals(pool: &PgPool, saga_id: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    Ok(
        sqlx::query_as("SELECT name, outcome FROM saga_signal WHERE saga_id = $1 ORDER BY id")
            .bind(saga_id)
            .fetch_all(pool)
            .await?,
    )
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_event_that_came_early_is_taken_when_its_step_starts_and_the_hook_commits_with_the_end(
    pool: PgPool,
) -> TestResult {
    with_orders(&pool).await?;
    let saga_id = place(&pool, &order_saga(), 1).await?;
    // The capture comes before the reservation answered: kept, not lost.
    assert_eq!(captured(&pool, &saga_id, "cap-1").await?, Signaled::Kept);
    sweep(&pool, &registry()).await?;
    assert_eq!(
        signals(&pool, &saga_id).await?,
        [("payment.captured".into(), None)],
        "still kept"
    );

    // The reservation's reply moves the saga to the wait, which takes it at once.
    reply_to(&pool, &registry(), &saga_id, "inventory.reserve", ok(None)).await?;
    let sent = commands(&pool, &saga_id).await?;
    assert_eq!(steps(&sent), ["inventory.reserve", "shipping.schedule"]);
    assert_eq!(
        sent[1].2,
        json!({ "capture": "cap-1" }),
        "the payload merged into the data"
    );
    assert_eq!(
        signals(&pool, &saga_id).await?,
        [("payment.captured".into(), Some("taken by step 1".into()))]
    );

    reply_to(&pool, &registry(), &saga_id, "shipping.schedule", ok(None)).await?;
    assert_eq!(state(&pool, &saga_id).await?.0, SagaState::Completed);
    assert_eq!(
        order_status(&pool, 1).await?.0,
        "shipped",
        "the hook's write committed with it"
    );

    // Late, for a finished saga: recorded with the reason, in its history too.
    let late = signal(&pool, &saga_id, "payment.captured", json!({})).await?;
    assert_eq!(
        late,
        Signaled::Ignored("ignored: the saga is completed".into())
    );
    let noted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM saga_event WHERE saga_id = $1 AND kind = 'signal' AND detail LIKE '%completed%'",
    )
    .bind(&saga_id)
    .fetch_one(&pool)
    .await?;
    assert_eq!(noted, 1);
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failing_end_hook_rolls_its_move_back_is_tried_again_then_fails_until_retried(
    pool: PgPool,
) -> TestResult {
    with_orders(&pool).await?;
    sqlx::query("UPDATE hook_breaks SET broken = true")
        .execute(&pool)
        .await?;
    let saga_id = place(&pool, &order_saga(), 2).await?;
    reply_to(&pool, &registry(), &saga_id, "inventory.reserve", ok(None)).await?;
    captured(&pool, &saga_id, "c").await?;
    sweep(&pool, &registry()).await?;
    let applied = reply_to(&pool, &registry(), &saga_id, "shipping.schedule", ok(None)).await?;
    assert_eq!(
        applied,
        Applied::HookFailed {
            ending: SagaState::Completed
        }
    );

    // Rolled back: the hook's own write too. The saga owes its end, with a deadline.
    assert_eq!(order_status(&pool, 2).await?.0, "placed");
    let (state_now, error, deadline) = state(&pool, &saga_id).await?;
    assert_eq!((state_now, deadline), (SagaState::Running, true));
    assert!(error.unwrap().contains("read-only today"));
    let ending: Option<String> =
        sqlx::query_scalar("SELECT ending FROM saga_instance WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&pool)
            .await?;
    assert_eq!(ending.as_deref(), Some("completed"));
    // A duplicate reply meanwhile changes nothing.
    let again = reply_to(&pool, &registry(), &saga_id, "shipping.schedule", ok(None)).await?;
    assert!(matches!(again, Applied::Ignored(_)), "{again:?}");

    // The second try fails too: out of tries (2), the saga is failed, the hook owed.
    expire(&pool, &saga_id).await?;
    sweep(&pool, &registry()).await?;
    let (state_now, error, deadline) = state(&pool, &saga_id).await?;
    assert_eq!((state_now, deadline), (SagaState::Failed, false));
    assert!(
        error
            .as_deref()
            .unwrap()
            .contains("on_completed hook failed 2 times"),
        "{error:?}"
    );
    assert_eq!(order_status(&pool, 2).await?.0, "placed");

    // Fixed, and retried by an operator: the hook runs, the saga completes.
    sqlx::query("UPDATE hook_breaks SET broken = false")
        .execute(&pool)
        .await?;
    txoutbox_saga::admin::request_retry(&pool, &saga_id).await?;
    sweep(&pool, &registry()).await?;
    assert_eq!(state(&pool, &saga_id).await?.0, SagaState::Completed);
    assert_eq!(order_status(&pool, 2).await?.0, "shipped");
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_panicking_end_hook_is_a_failed_try_not_a_crash(pool: PgPool) -> TestResult {
    with_orders(&pool).await?;
    let saga = Saga::<Order>::define("order", 1)
        .step("reserve")
        .action("inventory.reserve", |o: &Order| o.order_id)
        .on_completed(panics)
        .build()?;
    let registry = Registry::new().register(saga.clone());
    let saga_id = place(&pool, &saga, 3).await?;
    let applied = reply_to(&pool, &registry, &saga_id, "inventory.reserve", ok(None)).await?;
    assert_eq!(
        applied,
        Applied::HookFailed {
            ending: SagaState::Completed
        }
    );
    let error = state(&pool, &saga_id).await?.1.unwrap();
    assert!(
        error.contains("the hook panicked: a bug in the hook"),
        "{error}"
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_wait_that_times_out_compensates_and_on_compensated_gets_why(pool: PgPool) -> TestResult {
    with_orders(&pool).await?;
    let saga_id = place(&pool, &order_saga(), 4).await?;
    reply_to(&pool, &registry(), &saga_id, "inventory.reserve", ok(None)).await?;
    let waiting: Option<String> =
        sqlx::query_scalar("SELECT waiting_for FROM saga_instance WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&pool)
            .await?;
    assert_eq!(waiting.as_deref(), Some("payment.captured"));
    expire(&pool, &saga_id).await?;
    sweep(&pool, &registry()).await?;
    assert_eq!(
        steps(&commands(&pool, &saga_id).await?),
        ["inventory.reserve", "inventory.release"]
    );
    // A capture that comes now, while compensating: recorded, ignored.
    let late = signal(&pool, &saga_id, "payment.captured", json!({})).await?;
    assert_eq!(
        late,
        Signaled::Ignored("ignored: the saga is compensating".into())
    );
    reply_to(&pool, &registry(), &saga_id, "inventory.release", ok(None)).await?;
    assert_eq!(state(&pool, &saga_id).await?.0, SagaState::Compensated);
    let (status, why) = order_status(&pool, 4).await?;
    assert_eq!(status, "cancelled");
    assert!(
        why.unwrap()
            .contains("payment.captured did not come before step")
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn events_that_cannot_be_taken_are_recorded_with_why_and_the_saga_waits_on(
    pool: PgPool,
) -> TestResult {
    with_orders(&pool).await?;
    let saga_id = place(&pool, &order_saga(), 5).await?;
    reply_to(&pool, &registry(), &saga_id, "inventory.reserve", ok(None)).await?;
    // No step waits for it; a payload that does not fit the data (a number where the
    // saga keeps a string); twice the same event, which is taken once.
    signal(&pool, &saga_id, "parcel.scanned", json!({})).await?;
    captured(&pool, &saga_id, 7).await?;
    captured(&pool, &saga_id, "c-5").await?;
    captured(&pool, &saga_id, "c-5").await?;
    sweep(&pool, &registry()).await?;
    let outcomes = signals(&pool, &saga_id).await?;
    assert!(
        outcomes[0]
            .1
            .as_deref()
            .unwrap()
            .contains("no step of order version 1")
    );
    assert!(outcomes[1].1.as_deref().unwrap().contains("does not fit"));
    assert_eq!(outcomes[2].1.as_deref(), Some("taken by step 1"));
    assert!(
        outcomes[3].1.as_deref().unwrap().contains("past step 1"),
        "the duplicate is not taken: {outcomes:?}"
    );
    let sent = commands(&pool, &saga_id).await?;
    assert_eq!(
        steps(&sent),
        ["inventory.reserve", "shipping.schedule"],
        "moved on once"
    );
    // A saga that does not exist is an error; the event is recorded as such, with
    // the caller's transaction, should it commit all the same.
    let mut tx = pool.begin().await?;
    let unknown = txoutbox_saga::signal(&mut tx, "order-404", "payment.captured", &json!({})).await;
    assert!(
        matches!(&unknown, Err(txoutbox_saga::Error::NotFound(id)) if id == "order-404"),
        "{unknown:?}"
    );
    tx.commit().await?;
    assert_eq!(
        signals(&pool, "order-404").await?,
        [(
            "payment.captured".into(),
            Some("ignored: no saga with this id".into())
        )]
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_event_payload_that_is_not_an_object_or_is_too_big_is_refused_and_nothing_written(
    pool: PgPool,
) -> TestResult {
    with_orders(&pool).await?;
    let saga_id = place(&pool, &order_saga(), 6).await?;
    let too_big = json!({ "note": "x".repeat(txoutbox_saga::MAX_EVENT_PAYLOAD) });
    for (payload, says) in [
        (json!([1, 2]), "is an array"),
        (json!("c-6"), "is a string"),
        (too_big, "bytes, over"),
    ] {
        let mut tx = pool.begin().await?;
        let refused = txoutbox_saga::signal(&mut tx, &saga_id, "payment.captured", &payload).await;
        tx.commit().await?;
        let Err(txoutbox_saga::Error::BadEventPayload(why)) = &refused else {
            panic!("taken: {refused:?}");
        };
        assert!(why.contains(says), "{why}");
    }
    for name in ["", &"e".repeat(256)] {
        let mut tx = pool.begin().await?;
        let refused = txoutbox_saga::signal(&mut tx, &saga_id, name, &json!({})).await;
        assert!(
            matches!(refused, Err(txoutbox_saga::Error::NotAnEvent(_))),
            "{refused:?}"
        );
    }
    assert_eq!(signals(&pool, &saga_id).await?, [], "nothing recorded");
    // null is an event without data.
    assert!(matches!(
        signal(&pool, &saga_id, "payment.captured", json!(null)).await?,
        Signaled::Kept
    ));
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trip {
    trip_id: i64,
}

/// hotel and flight side by side, then payment.
fn trip_saga() -> Saga<Trip> {
    Saga::<Trip>::define("trip", 1)
        .parallel(|p| {
            p.step("hotel")
                .action("hotel.book", |t: &Trip| t.trip_id)
                .compensate("hotel.cancel", |t: &Trip| t.trip_id)
                .step("flight")
                .action("flight.book", |t: &Trip| t.trip_id)
                .compensate("flight.cancel", |t: &Trip| t.trip_id)
                .timeout(Duration::from_secs(5))
        })
        .step("pay")
        .action("payment.charge", |t: &Trip| t.trip_id)
        .build()
        .expect("a valid definition")
}

async fn book(pool: &PgPool, trip_id: i64) -> anyhow::Result<String> {
    let saga_id = format!("trip-{trip_id}");
    common::start_saga(pool, &trip_saga(), &saga_id, &Trip { trip_id }).await?;
    Ok(saga_id)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_parallel_group_sends_together_goes_on_when_all_answered_and_undoes_all_but_the_declined(
    pool: PgPool,
) -> TestResult {
    let registry = Registry::new().register(trip_saga());
    let saga_id = book(&pool, 1).await?;
    assert_eq!(
        steps(&commands(&pool, &saga_id).await?),
        ["hotel.book", "flight.book"]
    );
    let deadline = || async {
        let at: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM deadline_at - stage_started_at)::float8 FROM saga_instance WHERE saga_id = $1",
        )
        .bind(&saga_id)
        .fetch_one(&pool)
        .await?;
        anyhow::Ok(at)
    };
    assert_eq!(deadline().await?, 5.0, "the flight's 5 s, the shortest");
    // Each command carries its own deadline, from the group's start: the hotel's
    // action is not late when the flight's 5 s have passed.
    let headers: Vec<i64> = sqlx::query_scalar(
        "SELECT (headers->>'x-saga-deadline')::bigint FROM outbox WHERE saga_id = $1 ORDER BY routing_key",
    )
    .bind(&saga_id)
    .fetch_all(&pool)
    .await?;
    assert_eq!(
        headers[0] - headers[1],
        -25_000,
        "flight 5 s, hotel 30 s: {headers:?}"
    );
    reply_to(
        &pool,
        &registry,
        &saga_id,
        "flight.book",
        ok(Some(json!({ "seat": "3A" }))),
    )
    .await?;
    assert_eq!(
        deadline().await?,
        30.0,
        "now the hotel's 30 s, from the same start"
    );
    assert_eq!(
        commands(&pool, &saga_id).await?.len(),
        2,
        "nothing more until both answered"
    );
    reply_to(&pool, &registry, &saga_id, "hotel.book", ok(None)).await?;
    assert_eq!(
        steps(&commands(&pool, &saga_id).await?)[2],
        "payment.charge"
    );
    let data: serde_json::Value =
        sqlx::query_scalar("SELECT data FROM saga_instance WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&pool)
            .await?;
    assert_eq!(data["seat"], "3A");

    // Another trip: the hotel declines while the flight has not answered.
    let saga_id = book(&pool, 2).await?;
    reply_to(&pool, &registry, &saga_id, "hotel.book", failed("no rooms")).await?;
    assert_eq!(
        steps(&commands(&pool, &saga_id).await?),
        ["hotel.book", "flight.book", "flight.cancel"],
        "the flight is cancelled (undone if it ran, fenced if not), the hotel left alone"
    );
    // The flight's late success changes nothing; its cancel's answer ends the saga.
    reply_to(&pool, &registry, &saga_id, "flight.book", ok(None)).await?;
    reply_to(&pool, &registry, &saga_id, "flight.cancel", ok(None)).await?;
    let (end, error, _) = state(&pool, &saga_id).await?;
    assert_eq!(
        (end, error.as_deref()),
        (SagaState::Compensated, Some("no rooms"))
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sagas_started_on_version_one_finish_on_it_when_version_two_adds_a_group_and_a_wait(
    pool: PgPool,
) -> TestResult {
    let v1 = Saga::<Trip>::define("trip", 1)
        .step("hotel")
        .action("hotel.book", |t: &Trip| t.trip_id)
        .compensate("hotel.cancel", |t: &Trip| t.trip_id)
        .step("flight")
        .action("flight.book", |t: &Trip| t.trip_id)
        .compensate("flight.cancel", |t: &Trip| t.trip_id)
        .step("pay")
        .action("payment.charge", |t: &Trip| t.trip_id)
        .build()?;
    let v2 = Saga::<Trip>::define("trip", 2)
        .parallel(|p| {
            p.step("hotel")
                .action("hotel.book", |t: &Trip| t.trip_id)
                .compensate("hotel.cancel", |t: &Trip| t.trip_id)
                .step("flight")
                .action("flight.book", |t: &Trip| t.trip_id)
                .compensate("flight.cancel", |t: &Trip| t.trip_id)
        })
        .step("approval")
        .wait_for("trip.approved")
        .step("pay")
        .action("payment.charge", |t: &Trip| t.trip_id)
        .build()?;
    let mut tx = pool.begin().await?;
    txoutbox_saga::start(&mut tx, &v1, "trip-old", &Trip { trip_id: 1 }).await?;
    tx.commit().await?;
    reply_to(
        &pool,
        &Registry::new().register(v1.clone()),
        "trip-old",
        "hotel.book",
        ok(None),
    )
    .await?;

    // The service now runs both versions; new sagas start on version 2.
    let both = Registry::new().register(v1).register(v2.clone());
    let mut tx = pool.begin().await?;
    txoutbox_saga::start(&mut tx, &v2, "trip-new", &Trip { trip_id: 2 }).await?;
    tx.commit().await?;
    reply_to(&pool, &both, "trip-old", "flight.book", ok(None)).await?;
    reply_to(&pool, &both, "trip-old", "payment.charge", ok(None)).await?;
    assert_eq!(state(&pool, "trip-old").await?.0, SagaState::Completed);
    assert_eq!(
        steps(&commands(&pool, "trip-old").await?),
        ["hotel.book", "flight.book", "payment.charge"],
        "one after another, no wait: version 1"
    );
    assert_eq!(
        steps(&commands(&pool, "trip-new").await?),
        ["hotel.book", "flight.book"]
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_definition_changed_under_a_running_saga_fails_it_with_the_reason(
    pool: PgPool,
) -> TestResult {
    let saga_id = book(&pool, 3).await?;
    let registry = Registry::new().register(trip_saga());
    reply_to(&pool, &registry, &saga_id, "hotel.book", ok(None)).await?;
    reply_to(&pool, &registry, &saga_id, "flight.book", ok(None)).await?;
    // The same type and version, redefined with fewer steps than the saga has run.
    let shorter = Saga::<Trip>::define("trip", 1)
        .step("hotel")
        .action("hotel.book", |t: &Trip| t.trip_id)
        .build()?;
    let changed = Registry::new().register(shorter);
    expire(&pool, &saga_id).await?;
    sweep(&pool, &changed).await?;
    let (end, error, deadline) = state(&pool, &saga_id).await?;
    assert_eq!((end, deadline), (SagaState::Failed, false));
    assert!(
        error
            .unwrap()
            .contains("the definition changed under running sagas")
    );
    Ok(())
}

/// Fails on its first try only, then writes why the saga was compensated.
async fn cancelled_on_the_second_try(
    conn: &mut PgConnection,
    order: Order,
    why: String,
) -> Result<(), BoxError> {
    let tries: i32 = sqlx::query_scalar("INSERT INTO hook_tries DEFAULT VALUES RETURNING n")
        .fetch_one(&mut *conn)
        .await?;
    if tries == 1 {
        return Err("the first try fails".into());
    }
    cancelled(conn, order, why).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_retried_end_hook_gets_why_the_saga_ended_not_its_own_error(pool: PgPool) -> TestResult {
    with_orders(&pool).await?;
    let saga = Saga::<Order>::define("order", 1)
        .step("reserve")
        .action("inventory.reserve", |o: &Order| o.order_id)
        .compensate("inventory.release", |o: &Order| o.order_id)
        .step("charge")
        .action("payment.charge", |o: &Order| o.order_id)
        .on_compensated(cancelled_on_the_second_try)
        .build()?;
    let registry = Registry::new().register(saga.clone());
    let saga_id = place(&pool, &saga, 6).await?;
    reply_to(&pool, &registry, &saga_id, "inventory.reserve", ok(None)).await?;
    reply_to(
        &pool,
        &registry,
        &saga_id,
        "payment.charge",
        failed("card declined"),
    )
    .await?;
    let applied = reply_to(&pool, &registry, &saga_id, "inventory.release", ok(None)).await?;
    assert_eq!(
        applied,
        Applied::HookFailed {
            ending: SagaState::Compensated
        }
    );
    expire(&pool, &saga_id).await?;
    sweep(&pool, &registry).await?;
    let (end, error, _) = state(&pool, &saga_id).await?;
    assert_eq!(end, SagaState::Compensated);
    assert_eq!(
        error.as_deref(),
        Some("card declined"),
        "the hook's error is gone with it"
    );
    assert_eq!(
        order_status(&pool, 6).await?,
        ("cancelled".into(), Some("card declined".into()))
    );
    Ok(())
}
