//! The due sweep: operators' requests and passed deadlines, each applied to its saga
//! in a transaction of its own, by whichever orchestrator takes the row first.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use sqlx::{PgConnection, PgPool};

use crate::admin::OperatorRequest;
use crate::engine::{Applied, Incoming, apply, apply_due, fail_with_reason, lock};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::transition::Event;

/// Runs `work`; a panic in it becomes [`Error::SweepPanicked`] with its message.
pub(crate) async fn panic_as_error<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(Error::SweepPanicked(
                txoutbox::panic::message(&*panic).to_owned(),
            ))
        })
}

/// Applies what is due, at most `limit` sagas, each in a transaction of its own:
/// operators' requests, events delivered to sagas, passed deadlines (timeouts, and
/// end hooks to try again). `SKIP LOCKED`: any number of orchestrators sweep
/// together, each saga is taken by one, and a saga being moved by a reply is left to it.
///
/// A saga whose move fails because of the saga itself (its data, a command's
/// payload the database refuses, a payload builder that panics) is `failed` with
/// that reason, in a transaction of its own, and the sweep goes on: one such saga,
/// taken first at every sweep, would otherwise hold back every other saga's
/// deadline. Any other error (the database went away, a deadlock, a missing
/// migration) ends the sweep, to be tried again, and fails no saga.
pub async fn sweep_due(pool: &PgPool, registry: &Registry, limit: usize) -> Result<Vec<Swept>> {
    let mut swept = Vec::new();
    let mut prefer_signals = false;
    while swept.len() < limit {
        let mut tx = pool.begin().await?;
        // Events and deadlines take turns, so that a steady stream of events cannot
        // hold back the timeouts, nor timeouts the events.
        prefer_signals = !prefer_signals;
        let Some(due) = next_due(&mut tx, prefer_signals).await? else {
            break;
        };
        // A panic while moving one saga (a payload builder of its definition, say)
        // is that saga's error, like any other that no retry changes.
        let moved = panic_as_error(sweep_one(&mut tx, registry, &due)).await;
        match moved {
            Ok(one) => {
                tx.commit().await?;
                swept.push(one);
            }
            Err(error) if !error.is_the_sagas_own() => return Err(error),
            Err(error) => {
                tx.rollback().await?;
                swept.push(fail_unmovable(pool, due.saga_id(), &error).await?);
            }
        }
    }
    Ok(swept)
}

/// What a sweep takes next, its saga locked: operators' requests first (normally
/// none), then signals or deadlines, soonest first, as `prefer_signals` says.
async fn next_due(conn: &mut PgConnection, prefer_signals: bool) -> Result<Option<Due>> {
    let requested: Option<(String, String)> = sqlx::query_as(
        "SELECT saga_id, operator_request FROM saga_instance
         WHERE operator_request IS NOT NULL LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((saga_id, request)) = requested {
        return Ok(Some(Due::Request(saga_id, request)));
    }
    Ok(if prefer_signals {
        match signalled(conn).await? {
            Some(saga_id) => Some(Due::Signals(saga_id)),
            None => deadline(conn).await?.map(Due::Deadline),
        }
    } else {
        match deadline(conn).await? {
            Some(saga_id) => Some(Due::Deadline(saga_id)),
            None => signalled(conn).await?.map(Due::Signals),
        }
    })
}

/// Applies one due thing to its saga, in the sweep's transaction.
async fn sweep_one(conn: &mut PgConnection, registry: &Registry, due: &Due) -> Result<Swept> {
    let saga_id = due.saga_id().to_owned();
    let mut timed_out = false;
    let applied = match due {
        Due::Request(_, request) => {
            // Taken whether or not it applies: the history says what came of it.
            sqlx::query("UPDATE saga_instance SET operator_request = NULL WHERE saga_id = $1")
                .bind(&saga_id)
                .execute(&mut *conn)
                .await?;
            let reason = operator_reason(conn, &saga_id).await?;
            let event = match OperatorRequest::parse(request) {
                Some(OperatorRequest::Retry) => Event::Retry,
                _ => Event::Abort { reason: &reason },
            };
            apply(conn, registry, &saga_id, &event, Incoming::default()).await?
        }
        Due::Signals(_) => {
            crate::signal::settle_kept(conn, registry, &saga_id, None).await?;
            Applied::Ignored("events delivered to the saga were looked at")
        }
        Due::Deadline(_) => {
            let locked = lock(conn, &saga_id).await?;
            let (applied, passed) = apply_due(conn, registry, &saga_id, &locked).await?;
            timed_out = passed;
            if let (Applied::Ignored(why), true) = (&applied, timed_out) {
                // Cannot happen while deadlines follow states; should it, look again
                // later rather than spin on it.
                sqlx::query("UPDATE saga_instance SET deadline_at = now() + $2 WHERE saga_id = $1")
                    .bind(&saga_id)
                    .bind(txoutbox::postgres::interval(STUCK_DEADLINE_PUSH))
                    .execute(&mut *conn)
                    .await?;
                tracing::warn!(%saga_id, why, "a due saga's timeout did not apply");
            }
            applied
        }
    };
    Ok(Swept {
        saga_id,
        timed_out,
        applied,
    })
}

/// A saga whose due move failed with `error`, which no retry changes: `failed` with
/// the reason, nothing due on it any more. An operator's `saga retry` tries the move
/// again once the cause is mended.
async fn fail_unmovable(pool: &PgPool, saga_id: &str, error: &Error) -> Result<Swept> {
    let reason = format!("the orchestrator could not move it: {error}");
    tracing::error!(%saga_id, %reason, "a due saga could not be moved; it is failed");
    let mut tx = pool.begin().await?;
    let (from, to) = fail_with_reason(&mut tx, saga_id, "unmovable", reason).await?;
    tx.commit().await?;
    Ok(Swept {
        saga_id: saga_id.to_owned(),
        timed_out: false,
        applied: Applied::Moved { from, to },
    })
}

/// What a sweep takes next.
enum Due {
    /// An operator's request (`retry`, `abort`).
    Request(String, String),
    /// Events delivered to the saga, to offer it.
    Signals(String),
    /// Its deadline passed.
    Deadline(String),
}

impl Due {
    fn saga_id(&self) -> &str {
        match self {
            Due::Request(saga_id, _) | Due::Signals(saga_id) | Due::Deadline(saga_id) => saga_id,
        }
    }
}

/// A saga with events delivered and not yet looked at, locked.
async fn signalled(conn: &mut PgConnection) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT saga_id FROM saga_instance
         WHERE signal_at IS NOT NULL ORDER BY signal_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(conn)
    .await?)
}

/// The saga whose deadline passed first, locked.
async fn deadline(conn: &mut PgConnection) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT saga_id FROM saga_instance
         WHERE deadline_at <= now() ORDER BY deadline_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(conn)
    .await?)
}

/// One due saga a sweep handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// The saga.
    pub saga_id: String,
    /// Its deadline passed (rather than an operator's request being carried out).
    pub timed_out: bool,
    /// What came of it.
    pub applied: Applied,
}

/// The reason an operator gave with the latest request (`abort requested: <reason>`).
async fn operator_reason(conn: &mut PgConnection, saga_id: &str) -> Result<String> {
    let detail: Option<String> = sqlx::query_scalar(
        "SELECT detail FROM saga_event WHERE saga_id = $1 AND kind = 'operator' ORDER BY id DESC LIMIT 1",
    )
    .bind(saga_id)
    .fetch_optional(conn)
    .await?
    .flatten();
    let detail = detail.unwrap_or_default();
    Ok(detail
        .strip_prefix("abort requested: ")
        .unwrap_or("requested with `saga abort`")
        .to_owned())
}

/// A deadline whose timeout did not apply is looked at again after this long.
const STUCK_DEADLINE_PUSH: std::time::Duration = std::time::Duration::from_secs(60);
