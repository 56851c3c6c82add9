//! The inventory service: reserves stock for a new order, and releases it when the
//! payment fails (the saga's compensation).

use sqlx::PgConnection;
use txoutbox_inbox::{BoxError, Context};

use super::common::{Compensations, emit, record_handled};
use super::messages::{InventoryReleased, InventoryReserved, OrderCreated, PaymentFailed};
use crate::demo::saga::Event;

/// `OrderCreated`: reserve the order's quantity, then `InventoryReserved`.
pub(crate) async fn order_created(
    mut ctx: Context<'_>,
    order: OrderCreated,
) -> Result<(), BoxError> {
    record_handled(&mut ctx).await?;
    let order_id = &ctx.envelope().saga_id;
    adjust(ctx.db(), order_id, "reserve", order.quantity).await?;
    let reserved = InventoryReserved {
        quantity: order.quantity,
        amount_cents: order.amount_cents,
    };
    emit(&mut ctx, Event::InventoryReserved, &reserved).await?;
    Ok(())
}

/// `PaymentFailed`: put the reserved quantity back, then `InventoryReleased`.
pub(crate) async fn payment_failed(
    mut ctx: Context<'_>,
    failed: PaymentFailed,
    compensations: Compensations,
) -> Result<(), BoxError> {
    let step = Event::PaymentFailed.step();
    compensations
        .fail_at_first(&ctx.envelope().saga_id, step)
        .await?;
    record_handled(&mut ctx).await?;
    let order_id = &ctx.envelope().saga_id;
    adjust(ctx.db(), order_id, "release", failed.quantity).await?;
    let released = InventoryReleased {
        quantity: failed.quantity,
    };
    emit(&mut ctx, Event::InventoryReleased, &released).await?;
    Ok(())
}

/// Writes the reservation (`reserve` or `release`) and moves the stock with it.
pub(crate) async fn adjust(
    conn: &mut PgConnection,
    order_id: &str,
    kind: &str,
    quantity: i64,
) -> Result<(), BoxError> {
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
