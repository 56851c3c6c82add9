use sqlx::PgExecutor;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::Result;
use crate::message::Message;

const INSERT_ONE: &str = "
    INSERT INTO outbox
        (id, saga_id, step, routing_key, payload, exchange, headers, ordering_key, available_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + $9 * interval '1 millisecond')";

/// One statement for any number of rows: arrays in, UNNEST out. `ORDER BY ord`
/// keeps the slice's order in the relay's write order (`seq`).
const INSERT_MANY: &str = "
    INSERT INTO outbox
        (id, saga_id, step, routing_key, payload, exchange, headers, ordering_key, available_at)
    SELECT id, saga_id, step, routing_key, payload, exchange, headers, ordering_key,
           now() + delay_ms * interval '1 millisecond'
    FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                $6::text[], $7::jsonb[], $8::text[], $9::int8[])
         WITH ORDINALITY
         AS m(id, saga_id, step, routing_key, payload, exchange, headers, ordering_key, delay_ms, ord)
    ORDER BY ord";

/// Writes one message to the outbox through `executor`, and returns its id.
///
/// Pass your transaction (`&mut *tx`) so the message commits, or rolls back,
/// together with your domain change. The relay publishes it after the commit.
pub async fn enqueue<'c, E: PgExecutor<'c>>(executor: E, message: &Message) -> Result<Uuid> {
    sqlx::query(INSERT_ONE)
        .bind(message.id)
        .bind(&message.saga_id)
        .bind(&message.step)
        .bind(&message.routing_key)
        .bind(&message.payload)
        .bind(&message.exchange)
        .bind(Json(&message.headers))
        .bind(&message.ordering_key)
        .bind(delay_millis(message))
        .execute(executor)
        .await?;
    Ok(message.id)
}

/// Writes many messages in a single statement, in slice order, and returns their
/// ids in the same order. All are written or none is.
pub async fn enqueue_batch<'c, E: PgExecutor<'c>>(
    executor: E,
    messages: &[Message],
) -> Result<Vec<Uuid>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    sqlx::query(INSERT_MANY)
        .bind(&ids)
        .bind(column(messages, |m| m.saga_id.clone()))
        .bind(column(messages, |m| m.step.clone()))
        .bind(column(messages, |m| m.routing_key.clone()))
        .bind(column(messages, |m| m.payload.clone()))
        .bind(column(messages, |m| m.exchange.clone()))
        .bind(column(messages, |m| Json(m.headers.clone())))
        .bind(column(messages, |m| m.ordering_key.clone()))
        .bind(column(messages, delay_millis))
        .execute(executor)
        .await?;
    Ok(ids)
}

fn column<T>(messages: &[Message], field: impl Fn(&Message) -> T) -> Vec<T> {
    messages.iter().map(field).collect()
}

fn delay_millis(message: &Message) -> i64 {
    // The builder has checked that the delay fits.
    message.delay.map_or(0, |d| d.as_millis() as i64)
}
