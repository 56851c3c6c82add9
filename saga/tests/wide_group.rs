//! A parallel group of 64 steps, the most a definition takes, against a real
//! PostgreSQL: the group's answers are kept as bits of a `bigint`, and the 64th step's
//! is its sign bit. The engine is driven directly, as in `processes.rs`.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use txoutbox_saga::{MAX_GROUP, Registry, Saga, SagaState};

mod common;

use common::{commands, failed, ok, reply_to, start_saga, state, steps};

/// The schema, after a check that the servers are up; it also captures the logs of
/// what a test starts, shown when the test fails (`testkit::CheckedMigrator`).
static MIGRATOR: testkit::CheckedMigrator = testkit::CheckedMigrator::new(&txoutbox::MIGRATOR);

type TestResult = anyhow::Result<()>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fanout {
    id: i64,
}

/// 64 steps side by side (`do{i}`, undone by `undo{i}`), then `after`.
fn wide() -> Saga<Fanout> {
    Saga::<Fanout>::define("wide", 1)
        .parallel(|p| {
            let mut group = p
                .step("s0")
                .action("do0", |f: &Fanout| f.id)
                .compensate("undo0", |f: &Fanout| f.id);
            for i in 1..MAX_GROUP {
                group = group
                    .step(format!("s{i}"))
                    .action(format!("do{i}"), |f: &Fanout| f.id)
                    .compensate(format!("undo{i}"), |f: &Fanout| f.id);
            }
            group
        })
        .step("after")
        .action("after", |f: &Fanout| f.id)
        .build()
        .expect("a group of 64 builds")
}

async fn start(pool: &PgPool, id: i64) -> anyhow::Result<String> {
    let saga_id = format!("wide-{id}");
    start_saga(pool, &wide(), &saga_id, &Fanout { id }).await?;
    Ok(saga_id)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_group_of_sixty_four_goes_on_once_every_step_answered(pool: PgPool) -> TestResult {
    let registry = Registry::new().register(wide());
    let saga_id = start(&pool, 1).await?;
    assert_eq!(
        commands(&pool, &saga_id).await?.len(),
        MAX_GROUP,
        "sent together"
    );
    // The last step first, so that the sign bit is set before any other.
    for i in (0..MAX_GROUP).rev() {
        reply_to(&pool, &registry, &saga_id, &format!("do{i}"), ok(None)).await?;
        let sent = commands(&pool, &saga_id).await?;
        let moved_on = steps(&sent).contains(&"after");
        assert_eq!(moved_on, i == 0, "after the answer of do{i}");
    }
    assert_eq!(state(&pool, &saga_id).await?.0, SagaState::Running);
    Ok(())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_decline_of_the_sixty_fourth_step_undoes_the_other_sixty_three(
    pool: PgPool,
) -> TestResult {
    let registry = Registry::new().register(wide());
    let saga_id = start(&pool, 2).await?;
    for i in 0..MAX_GROUP - 1 {
        reply_to(&pool, &registry, &saga_id, &format!("do{i}"), ok(None)).await?;
    }
    let last = MAX_GROUP - 1;
    reply_to(
        &pool,
        &registry,
        &saga_id,
        &format!("do{last}"),
        failed("no"),
    )
    .await?;
    // Answer every undo as it is sent, however many at a time, until the saga ends.
    let mut answered = std::collections::BTreeSet::new();
    while state(&pool, &saga_id).await?.0 == SagaState::Compensating {
        let sent = commands(&pool, &saga_id).await?;
        let new: Vec<String> = steps(&sent)
            .into_iter()
            .filter(|step| step.starts_with("undo") && !answered.contains(*step))
            .map(str::to_owned)
            .collect();
        assert!(!new.is_empty(), "compensating, and no undo left to answer");
        for undo in new {
            reply_to(&pool, &registry, &saga_id, &undo, ok(None)).await?;
            answered.insert(undo);
        }
    }
    assert_eq!(state(&pool, &saga_id).await?.0, SagaState::Compensated);
    let expected: std::collections::BTreeSet<String> =
        (0..last).map(|i| format!("undo{i}")).collect();
    assert_eq!(answered, expected, "every step but the declined one undone");
    Ok(())
}
