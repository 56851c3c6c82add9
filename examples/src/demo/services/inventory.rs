//! The inventory service: reserves stock for a new order, and releases it when the
//! payment fails (the saga's compensation).

use idempotency::{Envelope, HandlerFuture};
use sqlx::PgConnection;

use super::common::{number, record_handled, reply};
use crate::demo::saga::Event;

/// `OrderCreated`: reserve the order's quantity, then `InventoryReserved`.
pub(crate) fn order_created<'a>(
    message: &'a Envelope,
    conn: &'a mut PgConnection,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        let quantity = number(message, "quantity")?;
        let amount_cents = number(message, "amount_cents")?;
        record_handled(conn, message).await?;
        adjust(conn, &message.saga_id, "reserve", quantity).await?;
        let payload = serde_json::json!({ "quantity": quantity, "amount_cents": amount_cents });
        reply(conn, &message.saga_id, Event::InventoryReserved, &payload).await?;
        Ok(serde_json::Value::Null)
    })
}

/// `PaymentFailed`: put the reserved quantity back, then `InventoryReleased`.
pub(crate) fn payment_failed<'a>(
    message: &'a Envelope,
    conn: &'a mut PgConnection,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        let quantity = number(message, "quantity")?;
        record_handled(conn, message).await?;
        adjust(conn, &message.saga_id, "release", quantity).await?;
        let payload = serde_json::json!({ "quantity": quantity });
        reply(conn, &message.saga_id, Event::InventoryReleased, &payload).await?;
        Ok(serde_json::Value::Null)
    })
}

async fn adjust(
    conn: &mut PgConnection,
    order_id: &str,
    kind: &str,
    quantity: i64,
) -> Result<(), idempotency::BoxError> {
    sqlx::query("INSERT INTO reservations (order_id, kind, quantity) VALUES ($1, $2, $3)")
        .bind(order_id)
        .bind(kind)
        .bind(quantity as i32)
        .execute(&mut *conn)
        .await?;
    let change = if kind == "reserve" {
        -quantity
    } else {
        quantity
    };
    sqlx::query("UPDATE stock SET available = available + $1 WHERE sku = 'widget'")
        .bind(change)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
