//! The due sweep: operators' requests and passed deadlines, each applied to its saga
//! in a transaction of its own, by whichever orchestrator takes the row first.

use sqlx::{PgConnection, PgPool};

use crate::admin::OperatorRequest;
use crate::engine::{Applied, Incoming, apply, apply_due, lock};
use crate::error::Result;
use crate::registry::Registry;
use crate::transition::Event;

/// Applies what is due, at most `limit` sagas, each in a transaction of its own:
/// operators' requests, events delivered to sagas, passed deadlines (timeouts, and
/// end hooks to try again). `SKIP LOCKED`: any number of orchestrators sweep
/// together, each saga is taken by one, and a saga being moved by a reply is left to it.
pub async fn sweep_due(pool: &PgPool, registry: &Registry, limit: usize) -> Result<Vec<Swept>> {
    let mut swept = Vec::new();
    let mut prefer_signals = false;
    while swept.len() < limit {
        let mut tx = pool.begin().await?;
        // Operators' requests first (normally none), then signals, then deadlines,
        // soonest first.
        let requested: Option<(String, String)> = sqlx::query_as(
            "SELECT saga_id, operator_request FROM saga_instance
             WHERE operator_request IS NOT NULL LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((saga_id, request)) = requested {
            // Taken whether or not it applies: the history says what came of it.
            sqlx::query("UPDATE saga_instance SET operator_request = NULL WHERE saga_id = $1")
                .bind(&saga_id)
                .execute(&mut *tx)
                .await?;
            let reason = operator_reason(&mut tx, &saga_id).await?;
            let event = match OperatorRequest::parse(&request) {
                Some(OperatorRequest::Retry) => Event::Retry,
                _ => Event::Abort { reason: &reason },
            };
            let applied = apply(&mut tx, registry, &saga_id, &event, Incoming::default()).await?;
            tx.commit().await?;
            swept.push(Swept {
                saga_id,
                timed_out: false,
                applied,
            });
            continue;
        }
        // Events and deadlines take turns, so that a steady stream of events cannot
        // hold back the timeouts, nor timeouts the events.
        prefer_signals = !prefer_signals;
        let next = if prefer_signals {
            match signalled(&mut tx).await? {
                Some(saga_id) => Some(Next::Signals(saga_id)),
                None => deadline(&mut tx).await?.map(Next::Deadline),
            }
        } else {
            match deadline(&mut tx).await? {
                Some(saga_id) => Some(Next::Deadline(saga_id)),
                None => signalled(&mut tx).await?.map(Next::Signals),
            }
        };
        let saga_id = match next {
            None => break,
            Some(Next::Signals(saga_id)) => {
                crate::signal::settle_kept(&mut tx, registry, &saga_id, None).await?;
                tx.commit().await?;
                swept.push(Swept {
                    saga_id,
                    timed_out: false,
                    applied: Applied::Ignored("events delivered to the saga were looked at"),
                });
                continue;
            }
            Some(Next::Deadline(saga_id)) => saga_id,
        };
        let locked = lock(&mut tx, &saga_id).await?;
        let (applied, timed_out) = apply_due(&mut tx, registry, &saga_id, &locked).await?;
        if let (Applied::Ignored(why), true) = (&applied, timed_out) {
            // Cannot happen while deadlines follow states; should it, look again later
            // rather than spin on it.
            sqlx::query("UPDATE saga_instance SET deadline_at = now() + $2 WHERE saga_id = $1")
                .bind(&saga_id)
                .bind(txoutbox::postgres::interval(STUCK_DEADLINE_PUSH))
                .execute(&mut *tx)
                .await?;
            tracing::warn!(%saga_id, why, "a due saga's timeout did not apply");
        }
        tx.commit().await?;
        swept.push(Swept {
            saga_id,
            timed_out,
            applied,
        });
    }
    Ok(swept)
}

/// What a sweep takes next, besides operators' requests.
enum Next {
    Signals(String),
    Deadline(String),
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
