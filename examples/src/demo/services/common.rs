//! What every handler of the demo does besides its own effect.

use idempotency::{BoxError, Context};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::demo::saga::Event;

/// Records that this message took effect, in the effect's transaction.
pub(crate) async fn record_handled(ctx: &mut Context<'_>) -> Result<(), BoxError> {
    let message = ctx.envelope();
    sqlx::query("INSERT INTO handled (saga_id, step, redelivered) VALUES ($1, $2, $3)")
        .bind(&message.saga_id)
        .bind(&message.step)
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
) -> Result<Uuid, outbox::Error> {
    let message =
        outbox::Message::builder(saga_id, event.step(), event.routing_key()).payload(payload)?;
    outbox::enqueue(&mut *conn, &message).await
}
