#![doc = include_str!("../README.md")]
//!
//! # Without a broker
//!
//! [`Inbox::process`] runs a closure in a transaction guarded by the key, and says
//! whether it took effect or was a duplicate (with the first run's result):
//!
//! ```rust,no_run
//! use txoutbox_inbox::{Inbox, InboxKey, Outcome};
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
//!         let reply = txoutbox::Message::builder("order-42", "PaymentCharged", "payments.charged")
//!             .payload(&serde_json::json!({ "charge_id": charge_id }))?;
//!         txoutbox::enqueue(&mut *conn, &reply).await?;
//!         Ok::<_, txoutbox::Error>(charge_id)
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
//! # On RabbitMQ
//!
//! [`Consumer`] runs this on RabbitMQ. A handler is a plain `async fn` that gets a
//! [`Context`] (the message's [`Envelope`] and the inbox's transaction) and the
//! payload, decoded into its own type; what it writes and what it sends with
//! [`Context::emit`] commit with the inbox key, and the broker is acked only after
//! the commit.
//!
//! Deliveries that are waiting together go through the inbox in one transaction, up
//! to [`ConsumerConfig::batch_size`]: one commit and one ack for the batch, each
//! handler's effects still committing once with its key. A handler that fails takes
//! nothing of the others' with it: the batch runs again without it, each handler in a
//! savepoint. A lone message is not held back to fill a batch, unless
//! [`ConsumerConfig::batch_linger`] is set and other batches are in hand.
//!
//! A failing (or panicking) handler's message is retried later through a TTL queue,
//! then dead-lettered with its reason; a message no retry can fix (no saga id, not
//! JSON, a payload that does not fit the handler's type, a step with no handler) is
//! dead-lettered at once. Queue and header names are those of [`txoutbox::wire`].
//! Each dead letter is also recorded in the consumer's database, in
//! `inbox_dead_letter` (its reason, attempts, last error, headers and body), before
//! its copy goes to `{queue}.dead`: a database that cannot take the row keeps the
//! message in its queue, and `outbox-relay dead-letters` lists the rows and sends
//! messages back.
//! The queues are quorum queues (RabbitMQ 3.10 or later) unless
//! [`ConsumerConfig::queue_type`] says [`QueueType::Classic`]; a queue that exists
//! with another type stops the consumer with a [`DeclareError`] that names it.
//!
//! With the `opentelemetry` feature, traces continue across services: the handler's
//! span becomes a child of the span that wrote the message (its `traceparent`
//! header), and what the handler sends carries the handler's trace context on.
//! Install a `tracing-opentelemetry` layer, and one trace runs from the request that
//! wrote the first row through every handler the saga passes. A malformed
//! `traceparent` is ignored: the handler runs in a trace of its own.

mod ack_window;
mod batch;
mod config;
mod consumer;
mod context;
mod dead_record;
mod decision;
mod envelope;
mod error;
mod forming;
mod handler;
mod inbox;
mod metrics;
mod queue_type;
mod reject;
mod retention;
mod session;
mod topology;

pub use config::{ConsumerConfig, InvalidConfig, MAX_BATCH_LINGER, MAX_BATCH_SIZE};
pub use consumer::{Consumer, ConsumerHandle};
pub use context::Context;
pub use envelope::Envelope;
pub use error::{ConsumerError, DeclareError, Error, StartError};
pub use handler::{BoxError, Handler, StatefulHandler, WithState};
pub use inbox::{Inbox, InboxKey, Outcome};
pub use metrics::Metrics;
pub use queue_type::QueueType;
pub use reject::Reject;
pub use retention::{DEFAULT_RETENTION, cleanup};
pub use txoutbox::wire::DEAD_REASON_HEADER;
pub use txoutbox::{MIGRATOR, migrate};
