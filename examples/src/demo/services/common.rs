//! What every handler of the demo does besides its own effect.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use txoutbox::wire::step_route;
use txoutbox_inbox::{BoxError, Context};
use uuid::Uuid;

use crate::demo::policy::CompensationPolicy;
use crate::demo::saga::Event;

/// Records that this message took effect, in the effect's transaction. A saga
/// command is recorded by its name, whichever copy (`#token`) carried it: every copy
/// of one command is one effect.
pub(crate) async fn record_handled(ctx: &mut Context<'_>) -> Result<(), BoxError> {
    let message = ctx.envelope();
    sqlx::query("INSERT INTO handled (saga_id, step, redelivered) VALUES ($1, $2, $3)")
        .bind(&message.saga_id)
        .bind(step_route(&message.step))
        .bind(message.redelivered)
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// Sends the saga's next event from a handler: same saga, same trace, in the
/// handler's transaction.
pub(crate) async fn emit<P: Serialize>(
    ctx: &mut Context<'_>,
    event: Event,
    payload: &P,
) -> Result<Uuid, BoxError> {
    Ok(ctx.emit(event.step(), event.routing_key(), payload).await?)
}

/// Enqueues the first event of a saga in the caller's transaction: it commits with
/// the order, or not at all.
pub(crate) async fn start<P: Serialize>(
    conn: &mut PgConnection,
    saga_id: &str,
    event: Event,
    payload: &P,
) -> Result<Uuid, txoutbox::Error> {
    let message =
        txoutbox::Message::builder(saga_id, event.step(), event.routing_key()).payload(payload)?;
    txoutbox::enqueue(&mut *conn, &message).await
}

/// What a compensation handler needs besides its transaction: the policy that makes
/// it fail at first, and a pool to record those failures outside the transaction,
/// which rolls back.
#[derive(Debug, Clone)]
pub(crate) struct Compensations {
    pub(crate) policy: CompensationPolicy,
    pub(crate) pool: PgPool,
}

impl Compensations {
    /// Fails `command` of `saga_id` on purpose while the policy says it fails again;
    /// the consumer rolls back and retries it.
    pub(crate) async fn fail_at_first(&self, saga_id: &str, command: &str) -> Result<(), BoxError> {
        let wanted = self.policy.failures(saga_id, command);
        if wanted == 0 {
            return Ok(());
        }
        let failed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM compensation_failures WHERE saga_id = $1 AND command = $2",
        )
        .bind(saga_id)
        .bind(command)
        .fetch_one(&self.pool)
        .await?;
        if failed >= i64::from(wanted) {
            return Ok(());
        }
        sqlx::query("INSERT INTO compensation_failures (saga_id, command) VALUES ($1, $2)")
            .bind(saga_id)
            .bind(command)
            .execute(&self.pool)
            .await?;
        Err(format!("{command} failed on purpose ({} of {wanted})", failed + 1).into())
    }
}
