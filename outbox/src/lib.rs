//! A transactional outbox for PostgreSQL.
//!
//! A service writes its domain change and the messages that announce it in **one**
//! transaction: the messages go into the `outbox` table, and the relay
//! (`outbox-relay`) publishes them to RabbitMQ after the commit. Both happen, or
//! neither does; no message announces a change that rolled back, and no change
//! goes unannounced.
//!
//! # Quick start
//!
//! ```rust,no_run
//! use txoutbox::Message;
//! use serde::Serialize;
//!
//! #[derive(Serialize)]
//! struct OrderCreated { order_id: i64, total_cents: i64 }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://127.0.0.1/shop").await?;
//! txoutbox::migrate(&pool).await?;
//!
//! let mut tx = pool.begin().await?;
//! let order_id: i64 = sqlx::query_scalar("INSERT INTO orders (total_cents) VALUES (4200) RETURNING id")
//!     .fetch_one(&mut *tx)
//!     .await?;
//! let message = Message::builder(format!("order-{order_id}"), "OrderCreated", "orders.created")
//!     .payload(&OrderCreated { order_id, total_cents: 4200 })?;
//! txoutbox::enqueue(&mut *tx, &message).await?;
//! tx.commit().await?; // the order and its message, together
//! # Ok(())
//! # }
//! ```
//!
//! Services in other languages write the same rows with plain SQL; README.md,
//! "Outbox table contract", documents the table.
//!
//! # What this crate checks
//!
//! [`MessageBuilder::payload`] validates and serializes before anything touches the
//! database, so a bad message is an [`Error`] and nothing is written. The table's
//! CHECK constraints hold writers in other languages to the same rules.

pub mod backoff;
mod enqueue;
mod error;
mod message;
pub mod metrics;
mod migrate;
#[cfg(feature = "amqp")]
pub mod nodes;
pub mod postgres;
mod stored;
#[cfg(feature = "opentelemetry")]
pub mod trace;
pub mod url;
pub mod wire;

pub use enqueue::{enqueue, enqueue_batch};
pub use error::{Error, Result};
pub use message::{Message, MessageBuilder};
pub use migrate::{MIGRATOR, migrate};
pub use stored::{State, StoredMessage, messages_for_saga};
