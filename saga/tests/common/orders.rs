//! The order of the process tests, and what its participants leave behind: the
//! `orders` row its end hooks finish, and an `effects` row per participant run, so
//! that a test can tell what ran (and what ran twice) from the database.

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use txoutbox_inbox::{BoxError, Context};
use txoutbox_saga::Saga;

/// An order as its saga carries it; the capture id is the event's payload, merged
/// in when the step waiting for it takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) order_id: i64,
    #[serde(default)]
    pub(crate) capture_id: Option<String>,
}

/// The service's own table, which the end hooks set to its final business state.
pub(crate) const CREATE_ORDERS: &str =
    "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, capture_id text, why text)";

/// One row per participant run that committed.
pub(crate) const CREATE_EFFECTS: &str = "CREATE TABLE effects (id bigserial PRIMARY KEY, order_id bigint NOT NULL, effect text NOT NULL)";

/// The `on_completed` hook: the order is shipped, with the capture that paid it.
pub(crate) async fn shipped(conn: &mut PgConnection, order: Order) -> Result<(), BoxError> {
    sqlx::query("UPDATE orders SET status = 'shipped', capture_id = $2 WHERE id = $1")
        .bind(order.order_id)
        .bind(order.capture_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The `on_compensated` hook: the order is cancelled, with why.
pub(crate) async fn cancelled(
    conn: &mut PgConnection,
    order: Order,
    why: String,
) -> Result<(), BoxError> {
    sqlx::query("UPDATE orders SET status = 'cancelled', why = $2 WHERE id = $1")
        .bind(order.order_id)
        .bind(why)
        .execute(conn)
        .await?;
    Ok(())
}

/// Places order `order_id` and starts its saga `order-{order_id}` in one
/// transaction, as the service would; returns the saga's id.
pub(crate) async fn place(
    pool: &PgPool,
    saga: &Saga<Order>,
    order_id: i64,
) -> anyhow::Result<String> {
    let saga_id = format!("order-{order_id}");
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, status) VALUES ($1, 'placed')")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let order = Order {
        order_id,
        capture_id: None,
    };
    txoutbox_saga::start(&mut tx, saga, &saga_id, &order).await?;
    tx.commit().await?;
    Ok(saga_id)
}

/// Records that a participant ran for the order, in its handler's transaction: the
/// row commits with the run, or not at all.
pub(crate) async fn effect(
    ctx: &mut Context<'_>,
    order_id: i64,
    effect: &str,
) -> Result<(), BoxError> {
    sqlx::query("INSERT INTO effects (order_id, effect) VALUES ($1, $2)")
        .bind(order_id)
        .bind(effect)
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// Every effect a participant had, in the order they committed.
pub(crate) async fn effects(pool: &PgPool, order_id: i64) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT effect FROM effects WHERE order_id = $1 ORDER BY id")
            .bind(order_id)
            .fetch_all(pool)
            .await?,
    )
}

/// Every effect a participant had, by name: for steps that run side by side, whose
/// effects commit in either order.
pub(crate) async fn effects_by_name(pool: &PgPool, order_id: i64) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT effect FROM effects WHERE order_id = $1 ORDER BY effect")
            .bind(order_id)
            .fetch_all(pool)
            .await?,
    )
}
