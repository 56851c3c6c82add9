//! The payment service: charges a reserved order, or declines it.

use idempotency::{Envelope, HandlerFuture};
use sqlx::PgConnection;

use super::common::{number, record_handled, reply};
use crate::demo::policy::PaymentPolicy;
use crate::demo::saga::Event;

/// `InventoryReserved`: charge (`PaymentCharged`) or decline (`PaymentFailed`), as
/// the policy decides for this order.
pub(crate) fn inventory_reserved<'a>(
    message: &'a Envelope,
    conn: &'a mut PgConnection,
    policy: PaymentPolicy,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        let quantity = number(message, "quantity")?;
        let amount_cents = number(message, "amount_cents")?;
        record_handled(conn, message).await?;
        let order_id = &message.saga_id;
        if policy.declines(order_id) {
            sqlx::query("INSERT INTO declines (order_id) VALUES ($1)")
                .bind(order_id)
                .execute(&mut *conn)
                .await?;
            let payload = serde_json::json!({ "quantity": quantity, "reason": "card declined" });
            reply(conn, order_id, Event::PaymentFailed, &payload).await?;
        } else {
            sqlx::query("INSERT INTO charges (order_id, amount_cents) VALUES ($1, $2)")
                .bind(order_id)
                .bind(amount_cents)
                .execute(&mut *conn)
                .await?;
            let payload = serde_json::json!({ "amount_cents": amount_cents });
            reply(conn, order_id, Event::PaymentCharged, &payload).await?;
        }
        Ok(serde_json::Value::Null)
    })
}
