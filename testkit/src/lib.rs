//! The scaffolding of the toolkit's tests, benches and demo, in one place: where the
//! servers are, a check that they are up, a broker sandbox that records what arrives,
//! polling waits, messages taken from a queue (a dead-letter queue) with their headers,
//! a TCP proxy that injects network faults, SIGTERM for a child,
//! RabbitMQ nodes and clusters of a test's own to stop, freeze, kill and start again,
//! PostgreSQL primaries and standbys of a test's own to stop and promote, plain HTTP
//! to read a `/metrics` or serve one, and the logs of what a test starts kept with its
//! output.
//!
//! ```rust,no_run
//! use std::time::Duration;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! // A topic exchange and a queue of this test's own, and a consumer recording into it.
//! let sandbox = testkit::Sandbox::new("orders.#").await?;
//! // ... publish to `sandbox.exchange` through `testkit::amqp_url()` ...
//! # let ids = std::collections::HashSet::new();
//! sandbox.wait_for_all(&ids, Duration::from_secs(10)).await?;
//! sandbox.remove().await
//! # }
//! ```
//!
//! The URLs come from `DATABASE_URL` and `AMQP_URL`; the repository's
//! `.cargo/config.toml` sets both to the README's local servers unless the environment
//! already does. [`require_servers`] (called by [`Sandbox::new`] and
//! [`CheckedMigrator`]) turns a server that is down into one line saying which to
//! start and how.

mod drained;
mod http;
mod kept_logs;
mod logs;
mod postgres_node;
mod proxy;
mod rabbit_cluster;
mod rabbit_node;
mod reachable;
mod read_only;
mod sandbox;
mod servers;
mod signal;
mod taken;
mod tools;
mod wait;

pub use drained::drain_headers;
pub use http::{HTTP_TIMEOUT, body, http_get, http_post_form, http_request, serve_text};
pub use kept_logs::KeptLogs;
pub use logs::{capture_logs, forward_stderr};
pub use postgres_node::{PostgresNode, Replication};
pub use proxy::FaultyProxy;
pub use rabbit_cluster::{QuorumQueue, RabbitCluster};
pub use rabbit_node::RabbitNode;
pub use reachable::{CheckedMigrator, require_servers};
pub use read_only::set_read_only;
pub use sandbox::{Received, Sandbox};
pub use servers::{amqp_url, amqp_url_as, database_url, database_url_of};
pub use signal::{stop, terminate};
pub use taken::{header_text, take_headers};
pub use tools::{REQUIRE_TOOLS, installed_or_skip, program_runs};
pub use wait::wait_until;
