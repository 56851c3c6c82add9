//! The shipping service: ships a paid order.

use idempotency::{Envelope, HandlerFuture};
use sqlx::PgConnection;

use super::common::{record_handled, reply};
use crate::demo::saga::Event;

/// `PaymentCharged`: create the shipment, then `ShipmentCreated`.
pub(crate) fn payment_charged<'a>(
    message: &'a Envelope,
    conn: &'a mut PgConnection,
) -> HandlerFuture<'a> {
    Box::pin(async move {
        record_handled(conn, message).await?;
        sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
            .bind(&message.saga_id)
            .execute(&mut *conn)
            .await?;
        reply(
            conn,
            &message.saga_id,
            Event::ShipmentCreated,
            &serde_json::json!({}),
        )
        .await?;
        Ok(serde_json::Value::Null)
    })
}
