//! What the saga engine's tests share. Here, for the tests that drive the engine
//! directly, without a broker: the commands a saga sent (read from the outbox), its
//! state, replies applied as the orchestrator's consumer applies them, and deadlines
//! made due. In [`orders`], the order fixtures that those and the end-to-end tests
//! (relay, broker, orchestrator, participants) share.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub(crate) mod orders;

use sqlx::PgPool;
use txoutbox_saga::wire::{self, Reply};
use txoutbox_saga::{Applied, Registry, Saga, SagaState};

/// Starts saga `saga_id` of `saga` with `data`, in a transaction of its own.
pub(crate) async fn start_saga<D>(
    pool: &PgPool,
    saga: &Saga<D>,
    saga_id: &str,
    data: &D,
) -> anyhow::Result<()>
where
    D: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let mut tx = pool.begin().await?;
    txoutbox_saga::start(&mut tx, saga, saga_id, data).await?;
    tx.commit().await?;
    Ok(())
}

/// The commands the saga sent, in order: (routing key, attempt header, payload).
pub(crate) async fn commands(
    pool: &PgPool,
    saga_id: &str,
) -> anyhow::Result<Vec<(String, String, serde_json::Value)>> {
    Ok(sqlx::query_as(
        "SELECT routing_key, headers->>'x-saga-attempt', payload FROM outbox WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(saga_id)
    .fetch_all(pool)
    .await?)
}

/// The routing keys of `commands`.
pub(crate) fn steps(commands: &[(String, String, serde_json::Value)]) -> Vec<&str> {
    commands.iter().map(|(step, _, _)| step.as_str()).collect()
}

/// The saga's state, last error, and whether it has a deadline.
pub(crate) async fn state(
    pool: &PgPool,
    saga_id: &str,
) -> anyhow::Result<(SagaState, Option<String>, bool)> {
    let (state, error, deadline): (String, Option<String>, bool) = sqlx::query_as(
        "SELECT state, last_error, deadline_at IS NOT NULL FROM saga_instance WHERE saga_id = $1",
    )
    .bind(saga_id)
    .fetch_one(pool)
    .await?;
    Ok((
        SagaState::parse(&state).expect("a known state"),
        error,
        deadline,
    ))
}

/// Applies `reply` to the latest command named `command` the saga sent (or to a
/// made-up one, for a command it never sent), in a transaction of its own.
pub(crate) async fn reply_to(
    pool: &PgPool,
    registry: &Registry,
    saga_id: &str,
    command: &str,
    reply: Reply,
) -> anyhow::Result<Applied> {
    let sent: Option<String> = sqlx::query_scalar(
        "SELECT step FROM outbox WHERE saga_id = $1 AND routing_key = $2 ORDER BY seq DESC LIMIT 1",
    )
    .bind(saga_id)
    .bind(command)
    .fetch_optional(pool)
    .await?;
    let sent = sent.unwrap_or_else(|| wire::command_step(command, "never-sent"));
    let mut tx = pool.begin().await?;
    let step = wire::reply_step(&sent);
    let applied =
        txoutbox_saga::apply_reply(&mut tx, registry, saga_id, &step, &reply, None).await?;
    tx.commit().await?;
    Ok(applied)
}

pub(crate) fn ok(result: Option<serde_json::Value>) -> Reply {
    Reply {
        succeeded: true,
        result,
        reason: None,
    }
}

pub(crate) fn failed(reason: &str) -> Reply {
    Reply {
        succeeded: false,
        result: None,
        reason: Some(reason.into()),
    }
}

/// Makes the saga's deadline due now.
pub(crate) async fn expire(pool: &PgPool, saga_id: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE saga_instance SET deadline_at = now() - interval '1 second' WHERE saga_id = $1",
    )
    .bind(saga_id)
    .execute(pool)
    .await?;
    Ok(())
}
