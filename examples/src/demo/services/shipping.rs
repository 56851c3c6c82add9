//! The shipping service: ships a paid order.

use txoutbox_inbox::{BoxError, Context};

use super::common::{emit, record_handled};
use super::messages::{PaymentCharged, ShipmentCreated};
use crate::demo::saga::Event;

/// `PaymentCharged`: create the shipment, then `ShipmentCreated`.
pub(crate) async fn payment_charged(
    mut ctx: Context<'_>,
    _: PaymentCharged,
) -> Result<(), BoxError> {
    record_handled(&mut ctx).await?;
    sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
        .bind(&ctx.envelope().saga_id)
        .execute(ctx.db())
        .await?;
    emit(&mut ctx, Event::ShipmentCreated, &ShipmentCreated {}).await?;
    Ok(())
}
