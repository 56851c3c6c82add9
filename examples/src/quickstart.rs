//! The smallest useful outbox: an order and its `OrderCreated` message, written in
//! one transaction.

use serde::Serialize;
use sqlx::PgPool;
use txoutbox::{Message, StoredMessage};

/// The event a new order announces.
#[derive(Debug, Serialize)]
pub struct OrderCreated {
    /// The order's id in the order service's database.
    pub order_id: i64,
    /// The customer who placed it.
    pub customer: String,
    /// Order total, in cents.
    pub total_cents: i64,
}

/// Creates the example's own `orders` table next to the toolkit's tables.
pub async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    txoutbox::migrate(pool).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
             id          bigserial   PRIMARY KEY,
             customer    text        NOT NULL,
             total_cents bigint      NOT NULL,
             status      text        NOT NULL DEFAULT 'created',
             created_at  timestamptz NOT NULL DEFAULT now()
         )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Places an order: the order row and its message commit together, or neither does.
/// Returns the saga id that ties the order to every message about it.
pub async fn place_order(
    pool: &PgPool,
    customer: &str,
    total_cents: i64,
) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let order_id: i64 = sqlx::query_scalar(
        "INSERT INTO orders (customer, total_cents) VALUES ($1, $2) RETURNING id",
    )
    .bind(customer)
    .bind(total_cents)
    .fetch_one(&mut *tx)
    .await?;
    let saga_id = format!("order-{}", uuid::Uuid::now_v7());
    let event = OrderCreated {
        order_id,
        customer: customer.to_owned(),
        total_cents,
    };
    let message = Message::builder(&saga_id, "OrderCreated", "orders.created").payload(&event)?;
    txoutbox::enqueue(&mut *tx, &message).await?;
    tx.commit().await?;
    Ok(saga_id)
}

/// The outbox rows of one saga, as the relay will see them.
pub async fn messages_of(pool: &PgPool, saga_id: &str) -> anyhow::Result<Vec<StoredMessage>> {
    Ok(txoutbox::messages_for_saga(pool, saga_id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrations = false)]
    async fn an_order_and_its_message_commit_together(pool: PgPool) -> anyhow::Result<()> {
        prepare(&pool).await?;
        let saga_id = place_order(&pool, "ada", 4200).await?;
        let messages = messages_of(&pool, &saga_id).await?;
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].step, "OrderCreated");
        assert_eq!(messages[0].payload["total_cents"], 4200);
        Ok(())
    }
}
