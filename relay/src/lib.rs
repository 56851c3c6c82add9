//! Publishes the transactional outbox to RabbitMQ.
//!
//! Every committed `outbox` row reaches RabbitMQ, confirmed by the broker, in write
//! order per ordering key; a row is marked sent (deleted, or kept for a retention
//! period) only after its own confirm came back as an ack. Broker, network, database
//! and relay failures cause at most duplicates, which carry the same `message_id`.
//!
//! Run it as the `outbox-relay` sidecar, or inside your service:
//!
//! ```rust,no_run
//! use txoutbox_relay::{Relay, RelayConfig};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
//! txoutbox::migrate(&pool).await?;
//! let mut config = RelayConfig::default();
//! config.exchange = "events".into();
//! let relay = Relay::new(pool, std::env::var("AMQP_URL")?, config).spawn();
//! // ... on shutdown:
//! relay.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! How it works, and what it guarantees, is in README.md ("The relay").

mod admin;
mod broker;
mod config;
mod envelope;
mod error;
mod http;
mod isolate;
mod lease;
mod metrics;
mod publish;
mod refusal;
mod relay;
mod retry;
mod session;
mod settle;
mod shared;
mod store;
mod validate;
mod wake;
mod warm;

pub use admin::{
    DeadRow, InstanceStatus, backlog, cleanup, dead_rows, instances, retry_all_dead, retry_dead,
};
pub use config::{ConfigError, RelayConfig, default_instance_id};
pub use error::{Error, Result};
pub use http::serve as serve_http;
pub use metrics::{Backlog, Metrics};
pub use relay::{Relay, RelayHandle};
/// A URL with its password replaced by `***` (now [`txoutbox::url::redact`]).
pub use txoutbox::url::redact as redact_url;
