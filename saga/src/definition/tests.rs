use serde::Serialize;

use super::*;
use crate::transition::Work as Shaped;

#[derive(Serialize)]
struct Order {
    id: i64,
}

fn order() -> SagaBuilder<Order> {
    Saga::<Order>::define("order", 1)
}

fn problem(built: Result<Saga<Order>, DefinitionError>) -> String {
    built.unwrap_err().problem
}

#[test]
fn a_timeout_no_deadline_can_hold_is_refused() {
    let error = problem(
        Saga::<Order>::define("forever", 1)
            .step("approve")
            .wait_for("approved")
            .timeout(Duration::MAX)
            .build(),
    );
    assert!(error.contains("has a timeout over 36500 days"), "{error}");
}

#[test]
fn reads_like_the_step_list_and_builds_payloads_from_the_data() {
    let saga = order()
        .step("reserve")
        .action("inventory.reserve", |o| serde_json::json!({ "id": o.id }))
        .compensate("inventory.release", |o| serde_json::json!({ "id": o.id }))
        .timeout(Duration::from_secs(5))
        .step("ship")
        .action("shipping.schedule", |o| o.id)
        .build()
        .unwrap();
    let plan = saga.plan();
    assert!(plan.compensable(0) && !plan.compensable(1));
    let reserve = &saga.steps()[0];
    assert_eq!(reserve.timeout(), Duration::from_secs(5));
    assert_eq!(saga.steps()[1].timeout(), DEFAULT_STEP_TIMEOUT);
    let payload = reserve.action().unwrap().payload(&Order { id: 7 }).unwrap();
    assert_eq!(payload, serde_json::json!({ "id": 7 }));
    assert_eq!(
        saga.command_named("inventory.release"),
        Some((0, Phase::Compensation))
    );
    assert_eq!(
        saga.command_named("shipping.schedule"),
        Some((1, Phase::Action))
    );
    assert_eq!(saga.command_named("payment.charge"), None);
}

#[test]
fn a_parallel_group_and_a_wait_take_their_places_in_the_plan() {
    let saga = order()
        .parallel(|p| {
            p.step("reserve")
                .action("inventory.reserve", |o| o.id)
                .compensate("inventory.release", |o| o.id)
                .step("authorize")
                .action("payment.authorize", |o| o.id)
                .compensate("payment.void", |o| o.id)
                .timeout(Duration::from_secs(9))
        })
        .step("await_capture")
        .wait_for("payment.captured")
        .timeout(Duration::from_secs(3600))
        .step("ship")
        .action("shipping.schedule", |o| o.id)
        .build()
        .unwrap();
    let plan = saga.plan();
    let group = Group { first: 0, len: 2 };
    assert_eq!(plan.group(0), Some(group));
    assert_eq!(plan.group(1), Some(group));
    assert_eq!(plan.group(2), None);
    assert_eq!(plan.steps[2].work, Shaped::Wait);
    assert_eq!(plan.timeout(1), Duration::from_secs(9));
    assert_eq!(saga.steps()[2].waits_for(), Some("payment.captured"));
    assert_eq!(saga.step_waiting_for("payment.captured"), Some(2));
    assert_eq!(saga.step_waiting_for("parcel.scanned"), None);
    assert_eq!(saga.steps()[1].group(), Some(group));
}

#[test]
fn a_definition_that_cannot_run_is_an_error_that_says_why() {
    assert!(problem(order().build()).contains("at least one step"));
    assert!(problem(order().step("a").build()).contains("no action and waits for nothing"));
    assert!(
        problem(
            Saga::<Order>::define("order", 0)
                .step("a")
                .action("x", |_| 1)
                .build()
        )
        .contains("version")
    );
    assert!(
        problem(
            order()
                .step("a")
                .action("x", |_| 1)
                .step("a")
                .action("y", |_| 1)
                .build()
        )
        .contains("two steps are named 'a'")
    );
    assert!(
        problem(
            order()
                .step("a")
                .action("x", |_| 1)
                .step("b")
                .action("x", |_| 1)
                .build()
        )
        .contains("used twice")
    );
    assert!(
        problem(
            order()
                .step("a")
                .action("x", |_| 1)
                .action("y", |_| 1)
                .build()
        )
        .contains("two actions")
    );
    assert!(
        problem(
            order()
                .step("a")
                .action("x", |_| 1)
                .timeout(Duration::ZERO)
                .build()
        )
        .contains("zero timeout")
    );
    assert!(problem(order().step("a").action("x".repeat(201), |_| 1).build()).contains("bytes"));
    assert!(
        problem(
            order()
                .compensation_attempts(0)
                .step("a")
                .action("x", |_| 1)
                .build()
        )
        .contains("compensation_attempts")
    );
}

#[test]
fn waits_that_cannot_work_are_errors() {
    assert!(
        problem(order().step("a").action("x", |_| 1).wait_for("e").build())
            .contains("both has an action and waits")
    );
    assert!(
        problem(
            order()
                .step("a")
                .wait_for("e")
                .compensate("undo", |_| 1)
                .build()
        )
        .contains("nothing to compensate")
    );
    assert!(
        problem(
            order()
                .step("a")
                .wait_for("e")
                .step("b")
                .wait_for("e")
                .build()
        )
        .contains("two steps wait for the event 'e'")
    );
    assert!(problem(order().step("a").wait_for("").build()).contains("event name"));
    assert!(problem(order().step("a").wait_for("payment.#").build()).contains("routing key"));
    assert!(problem(order().step("a").wait_for("x#1").build()).contains("routing key"));
    assert!(problem(order().step("a").wait_for("e").wait_for("f").build()).contains("two events"));
}

fn branches(n: usize) -> SagaBuilder<Order> {
    order().parallel(|p| {
        let mut step = p
            .step("s0")
            .action("do0", |o| o.id)
            .compensate("undo0", |o| o.id);
        for i in 1..n {
            step = step
                .step(format!("s{i}"))
                .action(format!("do{i}"), |o| o.id)
                .compensate(format!("undo{i}"), |o| o.id);
        }
        step
    })
}

#[test]
fn groups_of_two_to_sixty_four_steps_build_and_others_are_refused() {
    assert!(branches(2).build().is_ok());
    let saga = branches(MAX_GROUP).build().unwrap();
    assert_eq!(saga.plan().group(63), Some(Group { first: 0, len: 64 }));
    assert!(problem(branches(65).build()).contains("at most 64 steps, not 65"));
    assert!(problem(branches(1).build()).contains("at least two steps, not 1"));
    assert!(problem(order().parallel(|p| p).build()).contains("at least two steps, not 0"));
    let without_compensation = order()
        .parallel(|p| {
            p.step("a")
                .action("x", |_| 1)
                .compensate("undo-x", |_| 1)
                .step("b")
                .action("y", |_| 1)
        })
        .build();
    assert!(problem(without_compensation).contains("needs a compensation"));
}

#[test]
fn two_groups_in_a_row_stay_apart() {
    let saga = order()
        .parallel(|p| {
            p.step("a")
                .action("a", |_| 1)
                .compensate("a-", |_| 1)
                .step("b")
                .action("b", |_| 1)
                .compensate("b-", |_| 1)
        })
        .parallel(|p| {
            p.step("c")
                .action("c", |_| 1)
                .compensate("c-", |_| 1)
                .step("d")
                .action("d", |_| 1)
                .compensate("d-", |_| 1)
        })
        .build()
        .unwrap();
    let plan = saga.plan();
    assert_eq!(plan.group(1), Some(Group { first: 0, len: 2 }));
    assert_eq!(plan.group(2), Some(Group { first: 2, len: 2 }));
}

#[test]
fn a_hook_given_twice_is_refused() {
    async fn done(_: &mut sqlx::PgConnection, _: serde_json::Value) -> Result<(), BoxError> {
        Ok(())
    }
    let twice = Saga::<serde_json::Value>::define("order", 1)
        .step("a")
        .action("x", |_| 1)
        .on_completed(done)
        .on_completed(done)
        .build();
    assert!(
        twice
            .unwrap_err()
            .problem
            .contains("two on_completed hooks")
    );
}

use txoutbox_inbox::BoxError;

use crate::transition::{Group, MAX_GROUP};
