//! The order service: places orders, each with the start of its saga in one
//! transaction (an `OrderCreated` event, or an orchestrated saga's first command), and
//! finishes them when the choreographed saga reports back.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use txoutbox_inbox::{BoxError, Context};

use super::common::{record_handled, start};
use super::messages::{InventoryReleased, OrderCreated, ShipmentCreated};
use crate::demo::orchestration::OrderSaga;
use crate::demo::saga::{Event, order_id};

/// How a placed order's saga begins.
#[derive(Clone)]
pub(crate) enum Announce {
    /// An `OrderCreated` event, for inventory to react to.
    Event,
    /// A saga of this definition, whose first command the orchestrator sends.
    Saga(Arc<txoutbox_saga::Saga<OrderSaga>>),
}

/// Places orders 1 to `orders`, `rate` per second. A restarted service goes on from
/// the last order it placed: the order and its event commit together, so none is
/// placed twice or announced without being placed.
pub(crate) async fn place_orders(
    pool: PgPool,
    orders: u32,
    rate: f64,
    announce: Announce,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let placed: i32 = sqlx::query_scalar("SELECT coalesce(max(number), 0) FROM orders")
        .fetch_one(&pool)
        .await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    for number in (placed as u32 + 1)..=orders {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        while let Err(error) = place(&pool, number, &announce).await {
            tracing::warn!(%error, number, "placing an order failed; trying again");
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
    tracing::info!(orders, "every order placed");
    Ok(())
}

async fn place(pool: &PgPool, number: u32, announce: &Announce) -> anyhow::Result<()> {
    let id = order_id(number);
    let quantity = 1 + i64::from(number % 3);
    let amount_cents = 1_000 + i64::from(number % 7) * 250;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, number, quantity, amount_cents) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind(number as i32)
    .bind(quantity as i32)
    .bind(amount_cents)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        match announce {
            Announce::Event => {
                let created = OrderCreated {
                    quantity,
                    amount_cents,
                };
                start(&mut tx, &id, Event::OrderCreated, &created).await?;
            }
            Announce::Saga(definition) => {
                let data = OrderSaga {
                    order_id: id.clone(),
                    quantity,
                    amount_cents,
                };
                txoutbox_saga::start(&mut tx, definition, &id, &data).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// `ShipmentCreated`: the order is shipped.
pub(crate) async fn shipment_created(
    mut ctx: Context<'_>,
    _: ShipmentCreated,
) -> Result<(), BoxError> {
    record_handled(&mut ctx).await?;
    finish(&mut ctx, "shipped").await
}

/// `InventoryReleased`: the compensation is complete; the order is cancelled.
pub(crate) async fn inventory_released(
    mut ctx: Context<'_>,
    _: InventoryReleased,
) -> Result<(), BoxError> {
    record_handled(&mut ctx).await?;
    finish(&mut ctx, "cancelled").await
}

async fn finish(ctx: &mut Context<'_>, status: &str) -> Result<(), BoxError> {
    let id = &ctx.envelope().saga_id;
    let changed = sqlx::query(
        "UPDATE orders SET status = $2, finished_at = now() WHERE id = $1 AND status = 'placed'",
    )
    .bind(id)
    .bind(status)
    .execute(ctx.db())
    .await?
    .rows_affected();
    if changed == 0 {
        tracing::warn!(saga_id = %id, status, "order was not waiting to be finished");
    }
    Ok(())
}
