//! A user's saga tested with `txoutbox_saga::testing`: no servers, no waiting. The
//! order process of the saga guide: reserve stock and authorise the card side by
//! side, wait up to three days for the capture, then ship.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use txoutbox_inbox::BoxError;
use txoutbox_saga::testing::{Answer, SagaTest};
use txoutbox_saga::{Error, Phase, Saga, SagaState, Signaled};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    order_id: i64,
    amount_cents: i64,
    reservation_id: Option<i64>,
    authorization: Option<String>,
    capture_id: Option<String>,
}

const DAY: Duration = Duration::from_secs(86_400);

async fn mark_shipped(_: &mut PgConnection, _: Order) -> Result<(), BoxError> {
    Ok(())
}

async fn mark_cancelled(_: &mut PgConnection, _: Order, _: String) -> Result<(), BoxError> {
    Ok(())
}

fn order_saga() -> Saga<Order> {
    Saga::<Order>::define("order", 2)
        .parallel(|p| {
            p.step("reserve_inventory")
                .action("inventory.reserve", |o| json!({ "order_id": o.order_id }))
                .compensate(
                    "inventory.release",
                    |o| json!({ "reservation_id": o.reservation_id }),
                )
                .step("authorize_payment")
                .action("payment.authorize", |o| json!({ "cents": o.amount_cents }))
                .compensate(
                    "payment.void",
                    |o| json!({ "authorization": o.authorization }),
                )
                .timeout(Duration::from_secs(30 * 60))
        })
        .step("await_payment_capture")
        .wait_for("payment.captured")
        .timeout(3 * DAY)
        .step("schedule_shipping")
        .action("shipping.schedule", |o| json!({ "order_id": o.order_id }))
        .on_completed(mark_shipped)
        .on_compensated(mark_cancelled)
        .build()
        .expect("a valid definition")
}

fn order(order_id: i64) -> Order {
    Order {
        order_id,
        amount_cents: 4_200,
        reservation_id: None,
        authorization: None,
        capture_id: None,
    }
}

/// The kinds of the saga's history lines, oldest first: the order things happened
/// in, which the test's clock does not show while it stands still.
fn history_kinds<'a>(test: &'a SagaTest<Order>, saga_id: &str) -> Vec<&'a str> {
    test.history(saga_id)
        .iter()
        .map(|line| line.kind.as_str())
        .collect()
}

/// Participants that all answer at once, successfully.
fn cooperative() -> SagaTest<Order> {
    let mut test = SagaTest::new(order_saga());
    test.on("inventory.reserve", async |_: Value| {
        Answer::done(json!({ "reservation_id": 7 }))
    })
    .on("inventory.release", async |_: Value| Answer::done(()))
    .on("payment.authorize", async |_: Value| {
        Answer::done(json!({ "authorization": "auth-1" }))
    })
    .on("payment.void", async |_: Value| Answer::done(()))
    .on("shipping.schedule", async |_: Value| Answer::done(()));
    test
}

#[tokio::test]
async fn payment_silent_for_thirty_minutes_is_compensated() -> anyhow::Result<()> {
    let mut test = cooperative();
    test.on("payment.authorize", async |_: Value| Answer::Silent);
    test.start("order-1", &order(1)).await?;
    assert_eq!(test.state("order-1"), Some(SagaState::Running));

    test.advance(Duration::from_secs(29 * 60)).await;
    assert_eq!(test.state("order-1"), Some(SagaState::Running), "not yet");
    test.advance(Duration::from_secs(60)).await;

    assert_eq!(test.state("order-1"), Some(SagaState::Compensated));
    // Both steps of the group are compensated, the silent one too: its outcome is
    // unknown, and its compensation fences it.
    assert_eq!(
        test.sent_names("order-1"),
        [
            "inventory.reserve",
            "payment.authorize",
            "payment.void",
            "inventory.release",
        ]
    );
    let ending = test.ended("order-1").expect("ended");
    assert_eq!(ending.state, SagaState::Compensated);
    assert!(ending.why.contains("timed out"), "{}", ending.why);
    Ok(())
}

#[tokio::test]
async fn the_whole_process_runs_through_the_group_the_wait_and_the_last_step() -> anyhow::Result<()>
{
    let mut test = cooperative();
    test.start("order-2", &order(2)).await?;
    // Both actions went out together, before either answered; both answered: now it
    // waits. (The clock stands still here, so `at` alone could not tell together from
    // one after the other's answer: the history's order does.)
    let sent = test.sent("order-2");
    assert_eq!((sent[0].at, sent[1].at), (Duration::ZERO, Duration::ZERO));
    assert_eq!(
        history_kinds(&test, "order-2")[..4],
        ["started", "command_sent", "command_sent", "reply"],
        "both commands before the first reply"
    );
    assert_eq!(test.waiting_for("order-2"), Some("payment.captured"));
    assert_eq!(test.deadline("order-2"), Some(3 * DAY));

    test.advance(DAY).await;
    let capture = json!({ "capture_id": "cap-9" });
    // As `signal` answers; the step that waits for it takes it at once.
    assert_eq!(
        test.signal("order-2", "payment.captured", &capture).await?,
        Signaled::Kept
    );
    assert_eq!(test.state("order-2"), Some(SagaState::Completed));
    let taken = test.events("order-2")[0].outcome.as_deref();
    assert_eq!(taken, Some("taken by step 2"));
    let data = test.data("order-2").expect("data");
    assert_eq!(
        (
            data.reservation_id,
            data.authorization.as_deref(),
            data.capture_id.as_deref()
        ),
        (Some(7), Some("auth-1"), Some("cap-9")),
        "every result and the event's payload merged in"
    );
    assert_eq!(
        test.ended("order-2").map(|e| e.state),
        Some(SagaState::Completed)
    );
    Ok(())
}

#[tokio::test]
async fn a_capture_that_never_comes_is_compensated_after_three_days() -> anyhow::Result<()> {
    let mut test = cooperative();
    test.start("order-3", &order(3)).await?;
    test.advance(3 * DAY - Duration::from_secs(1)).await;
    assert_eq!(test.waiting_for("order-3"), Some("payment.captured"));
    test.advance(Duration::from_secs(1)).await;
    assert_eq!(test.state("order-3"), Some(SagaState::Compensated));
    let undone: Vec<_> = test
        .sent("order-3")
        .iter()
        .filter(|s| s.phase == Phase::Compensation)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(undone, ["payment.void", "inventory.release"]);
    Ok(())
}

#[tokio::test]
async fn an_event_that_comes_early_is_kept_for_its_step() -> anyhow::Result<()> {
    let mut test = cooperative();
    // The authorisation answers after a minute: the capture arrives before it.
    test.on("payment.authorize", async |_: Value| {
        Answer::after(
            Duration::from_secs(60),
            Answer::done(json!({ "authorization": "a" })),
        )
    });
    test.start("order-4", &order(4)).await?;
    let early = test
        .signal("order-4", "payment.captured", &json!({ "capture_id": "c" }))
        .await?;
    assert_eq!(early, Signaled::Kept);
    test.advance(Duration::from_secs(60)).await;
    assert_eq!(
        test.state("order-4"),
        Some(SagaState::Completed),
        "taken on arrival"
    );
    // The same event again, now that the saga is done: recorded, ignored.
    let late = test
        .signal("order-4", "payment.captured", &json!({ "capture_id": "c" }))
        .await?;
    assert_eq!(
        late,
        Signaled::Ignored("ignored: the saga is completed".into())
    );
    Ok(())
}

#[tokio::test]
async fn a_declined_step_of_the_group_leaves_itself_alone_and_undoes_the_other()
-> anyhow::Result<()> {
    let mut test = cooperative();
    test.on("payment.authorize", async |_: Value| {
        Answer::declined("card declined")
    });
    test.start("order-5", &order(5)).await?;
    assert_eq!(test.state("order-5"), Some(SagaState::Compensated));
    assert_eq!(
        test.sent_names("order-5"),
        [
            "inventory.reserve",
            "payment.authorize",
            "inventory.release"
        ]
    );
    assert_eq!(
        test.ended("order-5").map(|e| e.why.as_str()),
        Some("card declined")
    );
    Ok(())
}

#[tokio::test]
async fn an_event_no_step_waits_for_or_whose_payload_does_not_fit_is_refused() -> anyhow::Result<()>
{
    let mut test = cooperative();
    test.start("order-6", &order(6)).await?;
    test.signal("order-6", "parcel.scanned", &json!({})).await?;
    let misfit = json!({ "capture_id": 42 });
    test.signal("order-6", "payment.captured", &misfit).await?;
    let outcomes: Vec<String> = test
        .events("order-6")
        .iter()
        .map(|e| e.outcome.clone().unwrap_or_default())
        .collect();
    assert!(
        outcomes[0].contains("no step of order version 2"),
        "{outcomes:?}"
    );
    assert!(outcomes[1].contains("does not fit"), "{outcomes:?}");
    assert_eq!(
        test.waiting_for("order-6"),
        Some("payment.captured"),
        "still waits"
    );
    let unknown = test.signal("order-7", "payment.captured", &json!({})).await;
    assert!(
        matches!(&unknown, Err(Error::NotFound(id)) if id == "order-7"),
        "{unknown:?}"
    );
    Ok(())
}
