//! What every handler of the demo does besides its own effect.

use idempotency::{BoxError, Envelope};
use sqlx::PgConnection;

use crate::demo::saga::Event;

/// Records that this message took effect, in the effect's transaction.
pub(crate) async fn record_handled(
    conn: &mut PgConnection,
    message: &Envelope,
) -> Result<(), BoxError> {
    sqlx::query("INSERT INTO handled (saga_id, step, redelivered) VALUES ($1, $2, $3)")
        .bind(&message.saga_id)
        .bind(&message.step)
        .bind(message.redelivered)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Enqueues the next event of the saga in the handler's transaction: it commits with
/// the effect and the inbox key, or not at all.
pub(crate) async fn reply(
    conn: &mut PgConnection,
    saga_id: &str,
    event: Event,
    payload: &serde_json::Value,
) -> Result<(), BoxError> {
    let message =
        outbox::Message::builder(saga_id, event.step(), event.routing_key()).payload(payload)?;
    outbox::enqueue(&mut *conn, &message).await?;
    Ok(())
}

/// A whole-number field of the payload, or an error naming it.
pub(crate) fn number(message: &Envelope, field: &str) -> Result<i64, BoxError> {
    message.payload[field]
        .as_i64()
        .ok_or_else(|| format!("{} payload has no number `{field}`", message.step).into())
}
