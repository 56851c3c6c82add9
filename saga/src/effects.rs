//! A participant's record of what each saga command did, kept in its inbox table
//! beside the consumer's own keys: one row per `(consumer, saga_id, command)`, whose
//! `result` is the reply. It makes a resent command answer the same, and lets a
//! compensation that arrives first fence its action.

use sqlx::PgConnection;
use sqlx::types::Json;

use crate::error::{Error, Result};
use crate::wire::Reply;

/// Whether this command runs now, or already has its answer.
pub(crate) enum Claim {
    /// First time: run it, then [`record`] its reply.
    First,
    /// It ran (or was fenced) before: this is its reply.
    Answered(Reply),
}

/// Claims `command` for `saga_id` in the caller's transaction. A concurrent claim of
/// the same command waits on this one's uncommitted row, then finds the answer.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    consumer: &str,
    saga_id: &str,
    command: &str,
) -> Result<Claim> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, saga_id, step) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(saga_id)
    .bind(command)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::First);
    }
    answer(conn, consumer, saga_id, command)
        .await
        .map(Claim::Answered)
}

/// Records the reply of a command claimed with [`claim`].
pub(crate) async fn record(
    conn: &mut PgConnection,
    consumer: &str,
    saga_id: &str,
    command: &str,
    reply: &Reply,
) -> Result<()> {
    sqlx::query("UPDATE inbox SET result = $4 WHERE consumer = $1 AND saga_id = $2 AND step = $3")
        .bind(consumer)
        .bind(saga_id)
        .bind(command)
        .bind(Json(reply))
        .execute(conn)
        .await?;
    Ok(())
}

/// Before a compensation: what its action did. If the action has not run, it never
/// will: a failed reply is recorded for it now, so that a late action finds it and
/// takes no effect. `None` means the action was fenced just now.
pub(crate) async fn fence(
    conn: &mut PgConnection,
    consumer: &str,
    saga_id: &str,
    action: &str,
) -> Result<Option<Reply>> {
    let fenced = Reply {
        succeeded: false,
        result: None,
        reason: Some("fenced: its compensation came first".to_owned()),
    };
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, saga_id, step, result) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(saga_id)
    .bind(action)
    .bind(Json(&fenced))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(None);
    }
    answer(conn, consumer, saga_id, action).await.map(Some)
}

async fn answer(
    conn: &mut PgConnection,
    consumer: &str,
    saga_id: &str,
    command: &str,
) -> Result<Reply> {
    let stored: Option<Json<Reply>> = sqlx::query_scalar(
        "SELECT result FROM inbox WHERE consumer = $1 AND saga_id = $2 AND step = $3",
    )
    .bind(consumer)
    .bind(saga_id)
    .bind(command)
    .fetch_one(conn)
    .await?;
    // A row without a result was claimed in a transaction that committed without
    // recording one: cannot happen through this module; say so rather than guess.
    stored
        .map(|reply| reply.0)
        .ok_or_else(|| Error::NotAReply(format!("{command} of {saga_id} has no recorded reply")))
}
