//! An idempotent inbox: at-least-once delivery in, exactly-once effects out.
//!
//! A consumer runs its handler in one transaction together with recording the
//! message's key, `saga_id:step`, in the `inbox` table; the broker is acked only
//! after the commit. A message that arrives again (broker redelivery, a relay that
//! republished after a crash, a producer that retried) finds its key and takes no
//! effect.
//!
//! ```rust,no_run
//! use idempotency::{Inbox, InboxKey, Outcome};
//! use sqlx::PgConnection;
//!
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let inbox = Inbox::new("payment-service");
//! let key = InboxKey { saga_id: "order-42", step: "ChargePayment", message_id: None };
//! let outcome = inbox
//!     .process(&pool, key, async |conn: &mut PgConnection| {
//!         let charge_id: i64 = sqlx::query_scalar("INSERT INTO charges (order_id) VALUES (42) RETURNING id")
//!             .fetch_one(&mut *conn)
//!             .await?;
//!         let reply = outbox::Message::builder("order-42", "PaymentCharged", "payments.charged")
//!             .payload(&serde_json::json!({ "charge_id": charge_id }))?;
//!         outbox::enqueue(&mut *conn, &reply).await?;
//!         Ok::<_, outbox::Error>(charge_id)
//!     })
//!     .await?;
//! match outcome {
//!     Outcome::Processed(charge_id) => println!("charged: {charge_id}"),
//!     Outcome::Duplicate { result } => println!("already charged: {result:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Consumer`] runs this on RabbitMQ: it decodes the relay's envelope, runs the
//! handler registered for the message's step through the inbox, and acks only after
//! the commit. A failing handler's message is retried later through a TTL queue, then
//! dead-lettered with its reason; a malformed one is dead-lettered at once.

mod consumer;
mod envelope;
mod error;
mod inbox;
mod retention;
mod topology;

pub use consumer::{BoxError, Consumer, ConsumerConfig, ConsumerHandle, HandlerFuture};
pub use envelope::Envelope;
pub use error::Error;
pub use inbox::{Inbox, InboxKey, Outcome};
pub use outbox::{MIGRATOR, migrate};
pub use retention::{DEFAULT_RETENTION, cleanup};
pub use topology::DEAD_REASON_HEADER;
