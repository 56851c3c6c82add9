#![doc = include_str!("../README.md")]
//!
//! How it works, and what it guarantees, is in `docs/design/relay.md` and
//! `docs/design/guarantees.md` of the repository.

mod admin;
pub mod audit;
mod broker;
mod config;
pub mod dead_letters;
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
