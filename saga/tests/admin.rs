//! What operators ask of sagas, against a real PostgreSQL (a fresh database per test):
//! listing, showing one whole, counting, and requests that the next orchestrator sweep
//! carries out. No orchestrator runs here: the tests sweep as one would.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use txoutbox_saga::admin::{self, AdminError, ListFilter, OperatorRequest};
use txoutbox_saga::{Event, Incoming, Outcome, Phase, Registry, Saga, SagaState};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
}

fn order_saga() -> Saga<Order> {
    Saga::<Order>::define("order", 1)
        .compensation_attempts(1)
        .step("reserve_inventory")
        .action(
            "inventory.reserve",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .compensate(
            "inventory.release",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .timeout(Duration::from_secs(30))
        .step("charge_payment")
        .action(
            "payment.charge",
            |o: &Order| serde_json::json!({ "order_id": o.order_id }),
        )
        .build()
        .expect("a valid definition")
}

fn registry() -> Registry {
    Registry::new().register(order_saga())
}

async fn start(pool: &PgPool, saga_id: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    txoutbox_saga::start(&mut tx, &order_saga(), saga_id, &Order { order_id: 7 }).await?;
    tx.commit().await?;
    Ok(())
}

/// The routing keys of the saga's outbox rows, in write order.
async fn commands(pool: &PgPool, saga_id: &str) -> anyhow::Result<Vec<String>> {
    let view = admin::show(pool, saga_id).await?.expect("the saga exists");
    Ok(view.outbox.into_iter().map(|row| row.routing_key).collect())
}

async fn state_of(pool: &PgPool, saga_id: &str) -> anyhow::Result<SagaState> {
    let view = admin::show(pool, saga_id).await?.expect("the saga exists");
    Ok(view.instance.state)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn list_and_show_answer_where_a_saga_is(pool: PgPool) -> TestResult {
    start(&pool, "order-1").await?;
    start(&pool, "order-2").await?;
    // A participant in this database took the saga's first command.
    sqlx::query(
        "INSERT INTO inbox (consumer, saga_id, step, message_id, duplicates)
         VALUES ('inventory', 'order-1', 'inventory.reserve#t1', 'm-1', 2)",
    )
    .execute(&pool)
    .await?;

    let all = admin::list(&pool, ListFilter::default()).await?;
    let ids: Vec<&str> = all.iter().map(|s| s.saga_id.as_str()).collect();
    assert_eq!(ids, ["order-2", "order-1"], "newest first");
    assert_eq!(all[0].state, SagaState::Running);
    assert_eq!(
        (all[0].saga_type.as_str(), all[0].definition_version),
        ("order", 1)
    );
    assert!(!all[0].overdue && all[0].deadline_at.is_some());

    let running = ListFilter {
        state: Some(SagaState::Running),
        limit: 1,
        ..ListFilter::default()
    };
    assert_eq!(admin::list(&pool, running).await?.len(), 1, "the limit");
    let completed = ListFilter {
        state: Some(SagaState::Completed),
        ..ListFilter::default()
    };
    assert!(admin::list(&pool, completed).await?.is_empty());

    let view = admin::show(&pool, "order-1")
        .await?
        .expect("the saga exists");
    assert_eq!(view.instance.saga_id, "order-1");
    assert_eq!(view.instance.state, SagaState::Running);
    assert_eq!(view.instance.data, serde_json::json!({ "order_id": 7 }));
    let kinds: Vec<&str> = view.history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["started", "command_sent"]);
    assert_eq!(view.history[0].to_state, Some(SagaState::Running));
    assert_eq!(view.history[1].phase, Some(Phase::Action));
    assert_eq!(
        view.history[1].message_id.as_deref(),
        Some(view.outbox[0].id.to_string().as_str()),
        "the history names the outbox row the command went out as"
    );
    assert_eq!(view.outbox.len(), 1);
    assert_eq!(view.outbox[0].routing_key, "inventory.reserve");
    assert_eq!(view.outbox[0].state, txoutbox::State::Pending);
    assert_eq!(view.inbox.len(), 1);
    assert_eq!(
        (view.inbox[0].consumer.as_str(), view.inbox[0].duplicates),
        ("inventory", 2)
    );

    let json = serde_json::to_value(&view)?;
    assert_eq!(json["instance"]["state"], "running");
    assert_eq!(json["history"][1]["phase"], "action");
    assert_eq!(json["outbox"][0]["state"], "pending");

    assert!(admin::show(&pool, "order-404").await?.is_none());
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_abort_is_requested_then_carried_out_by_the_next_sweep(pool: PgPool) -> TestResult {
    start(&pool, "order-7").await?;
    admin::request_abort(&pool, "order-7", "customer called").await?;

    // Requested, not done: the saga waits for an orchestrator, due now.
    let view = admin::show(&pool, "order-7").await?.expect("exists");
    assert_eq!(view.instance.state, SagaState::Running);
    assert_eq!(view.instance.operator_request, Some(OperatorRequest::Abort));
    let last = view.history.last().expect("a history");
    assert_eq!(last.kind, "operator");
    assert_eq!(
        last.detail.as_deref(),
        Some("abort requested: customer called")
    );
    assert_eq!(last.from_state, Some(SagaState::Running));
    assert_eq!(commands(&pool, "order-7").await?, ["inventory.reserve"]);

    let swept = txoutbox_saga::sweep_due(&pool, &registry(), 10).await?;
    assert_eq!(swept.len(), 1);
    assert!(
        !swept[0].timed_out,
        "the request, not a timeout, was carried out"
    );

    let view = admin::show(&pool, "order-7").await?.expect("exists");
    assert_eq!(view.instance.state, SagaState::Compensating);
    assert_eq!(view.instance.operator_request, None, "taken");
    assert_eq!(
        commands(&pool, "order-7").await?,
        ["inventory.reserve", "inventory.release"],
        "the step whose outcome is unknown is compensated"
    );
    assert!(
        view.history.iter().any(|e| e.kind == "operator"
            && e.from_state == Some(SagaState::Running)
            && e.to_state == Some(SagaState::Compensating)),
        "{:#?}",
        view.history
    );

    // Compensating now: a second abort is refused, naming the state.
    let again = admin::request_abort(&pool, "order-7", "twice").await;
    let Err(error) = again else {
        panic!("an abort of a compensating saga was accepted")
    };
    assert!(matches!(
        error,
        AdminError::WrongState {
            state: SagaState::Compensating,
            request: OperatorRequest::Abort,
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        "saga order-7 is compensating; only a running or pending saga can be aborted"
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_retry_applies_only_to_a_failed_saga(pool: PgPool) -> TestResult {
    start(&pool, "order-8").await?;
    let Err(error) = admin::request_retry(&pool, "order-8").await else {
        panic!("a retry of a running saga was accepted")
    };
    assert_eq!(
        error.to_string(),
        "saga order-8 is running; only a failed saga can be retried"
    );
    let untouched = admin::show(&pool, "order-8").await?.expect("exists");
    assert_eq!(untouched.instance.operator_request, None);
    assert_eq!(untouched.history.len(), 2, "nothing recorded");

    // Abort, then let the compensation fail past its single attempt: `failed`.
    admin::request_abort(&pool, "order-8", "test").await?;
    txoutbox_saga::sweep_due(&pool, &registry(), 10).await?;
    let mut tx = pool.begin().await?;
    let failed = Event::Reply {
        step: 0,
        phase: Phase::Compensation,
        outcome: Outcome::Failed("warehouse offline"),
    };
    txoutbox_saga::apply(
        &mut tx,
        &registry(),
        "order-8",
        &failed,
        Incoming::default(),
    )
    .await?;
    tx.commit().await?;
    assert_eq!(state_of(&pool, "order-8").await?, SagaState::Failed);

    admin::request_retry(&pool, "order-8").await?;
    assert_eq!(state_of(&pool, "order-8").await?, SagaState::Failed);
    assert_eq!(
        txoutbox_saga::sweep_due(&pool, &registry(), 10)
            .await?
            .len(),
        1
    );
    assert_eq!(state_of(&pool, "order-8").await?, SagaState::Compensating);
    assert_eq!(
        commands(&pool, "order-8").await?,
        [
            "inventory.reserve",
            "inventory.release",
            "inventory.release"
        ],
        "the compensation goes out again"
    );
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_unknown_saga_is_a_clear_error(pool: PgPool) -> TestResult {
    for result in [
        admin::request_retry(&pool, "order-404").await,
        admin::request_abort(&pool, "order-404", "why not").await,
    ] {
        let Err(error) = result else {
            panic!("a request for an unknown saga was accepted")
        };
        assert!(matches!(&error, AdminError::NotFound(id) if id == "order-404"));
        assert_eq!(error.to_string(), "no saga with id order-404");
        assert!(!error.is_transient());
    }
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn overdue_sagas_are_listed_and_counted(pool: PgPool) -> TestResult {
    start(&pool, "order-late").await?;
    start(&pool, "order-on-time").await?;
    start(&pool, "order-done").await?;
    sqlx::query(
        "UPDATE saga_instance SET deadline_at = now() - interval '1 minute' WHERE saga_id = 'order-late'",
    )
    .execute(&pool)
    .await?;
    // A finished saga with a past deadline (a failed one an operator asked to retry
    // looks like this until swept) is not overdue.
    sqlx::query(
        "UPDATE saga_instance SET state = 'failed', deadline_at = now() - interval '1 minute'
         WHERE saga_id = 'order-done'",
    )
    .execute(&pool)
    .await?;

    let overdue = ListFilter {
        overdue: true,
        ..ListFilter::default()
    };
    let listed = admin::list(&pool, overdue).await?;
    let ids: Vec<&str> = listed.iter().map(|s| s.saga_id.as_str()).collect();
    assert_eq!(ids, ["order-late"]);
    assert!(listed[0].overdue);

    let stats = admin::stats(&pool).await?;
    assert_eq!(stats.overdue, 1);
    assert_eq!(stats.by_state.len(), SagaState::ALL.len());
    assert!(stats.by_state.contains(&(SagaState::Running, 2)));
    assert!(stats.by_state.contains(&(SagaState::Failed, 1)));
    assert!(stats.by_state.contains(&(SagaState::Completed, 0)));
    assert!(stats.oldest_active_age_seconds >= 0.0);
    Ok(())
}
