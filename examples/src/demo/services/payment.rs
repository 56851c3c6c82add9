//! The payment service: charges a reserved order, or declines it.

use txoutbox_inbox::{BoxError, Context};

use super::common::{emit, record_handled};
use super::messages::{InventoryReserved, PaymentCharged, PaymentFailed};
use crate::demo::policy::PaymentPolicy;
use crate::demo::saga::Event;

/// `InventoryReserved`: charge (`PaymentCharged`) or decline (`PaymentFailed`), as
/// the policy decides for this order.
pub(crate) async fn inventory_reserved(
    mut ctx: Context<'_>,
    reserved: InventoryReserved,
    policy: PaymentPolicy,
) -> Result<(), BoxError> {
    record_handled(&mut ctx).await?;
    let order_id = &ctx.envelope().saga_id;
    if policy.declines(order_id) {
        sqlx::query("INSERT INTO declines (order_id) VALUES ($1)")
            .bind(order_id)
            .execute(ctx.db())
            .await?;
        let failed = PaymentFailed {
            quantity: reserved.quantity,
            reason: "card declined".to_owned(),
        };
        emit(&mut ctx, Event::PaymentFailed, &failed).await?;
    } else {
        sqlx::query("INSERT INTO charges (order_id, amount_cents) VALUES ($1, $2)")
            .bind(order_id)
            .bind(reserved.amount_cents)
            .execute(ctx.db())
            .await?;
        let charged = PaymentCharged {
            amount_cents: reserved.amount_cents,
        };
        emit(&mut ctx, Event::PaymentCharged, &charged).await?;
    }
    Ok(())
}
