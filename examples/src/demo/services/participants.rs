//! The saga's participants under orchestration: each command's handler does its
//! effect in the inbox's transaction and answers the orchestrator through the outbox
//! (the `txoutbox-saga` crate's participant helper does the answering, the once-only and the
//! fencing of late actions).

use txoutbox_inbox::{BoxError, Context};
use txoutbox_saga::participant::Verdict;

use super::common::{Compensations, record_handled};
use super::inventory::adjust;
use crate::demo::orchestration::{Items, Money, Shipment, command};
use crate::demo::policy::PaymentPolicy;

type Act = Result<Verdict<()>, BoxError>;

/// `inventory.reserve`: take the quantity from stock.
pub(crate) async fn reserve(mut ctx: Context<'_>, items: Items) -> Act {
    record_handled(&mut ctx).await?;
    let order_id = &ctx.envelope().saga_id;
    adjust(ctx.db(), order_id, "reserve", items.quantity).await?;
    Ok(Verdict::Done(()))
}

/// `inventory.release`: put it back; fails at first where the policy says so.
pub(crate) async fn release(
    mut ctx: Context<'_>,
    items: Items,
    compensations: Compensations,
) -> Result<(), BoxError> {
    let order_id = &ctx.envelope().saga_id;
    compensations
        .fail_at_first(order_id, command::RELEASE)
        .await?;
    record_handled(&mut ctx).await?;
    adjust(ctx.db(), order_id, "release", items.quantity).await
}

/// `payment.charge`: charge, or decline as the policy decides for this order.
pub(crate) async fn charge(mut ctx: Context<'_>, money: Money, policy: PaymentPolicy) -> Act {
    record_handled(&mut ctx).await?;
    let order_id = &ctx.envelope().saga_id;
    if policy.declines(order_id) {
        sqlx::query("INSERT INTO declines (order_id) VALUES ($1)")
            .bind(order_id)
            .execute(ctx.db())
            .await?;
        return Ok(Verdict::Declined("card declined".to_owned()));
    }
    sqlx::query("INSERT INTO charges (order_id, amount_cents) VALUES ($1, $2)")
        .bind(order_id)
        .bind(money.amount_cents)
        .execute(ctx.db())
        .await?;
    Ok(Verdict::Done(()))
}

/// `payment.refund`: give the charge back; fails at first where the policy says so.
pub(crate) async fn refund(
    mut ctx: Context<'_>,
    money: Money,
    compensations: Compensations,
) -> Result<(), BoxError> {
    let order_id = &ctx.envelope().saga_id;
    compensations
        .fail_at_first(order_id, command::REFUND)
        .await?;
    record_handled(&mut ctx).await?;
    sqlx::query("INSERT INTO refunds (order_id, amount_cents) VALUES ($1, $2)")
        .bind(order_id)
        .bind(money.amount_cents)
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// `shipping.schedule`: ship the order.
pub(crate) async fn ship(mut ctx: Context<'_>, _: Shipment) -> Act {
    record_handled(&mut ctx).await?;
    sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
        .bind(&ctx.envelope().saga_id)
        .execute(ctx.db())
        .await?;
    Ok(Verdict::Done(()))
}
