#![doc = include_str!("../README.md")]
//!
//! # What this crate checks
//!
//! [`MessageBuilder::payload`] validates and serializes before anything touches the
//! database, so a bad message is an [`Error`] and nothing is written. The table's
//! CHECK constraints hold writers in other languages to the same rules.

pub mod backoff;
#[cfg(feature = "amqp")]
mod broker_connection;
mod enqueue;
mod error;
mod message;
pub mod metrics;
mod migrate;
#[cfg(feature = "amqp")]
pub mod nodes;
pub mod panic;
pub mod postgres;
pub mod reach;
mod stored;
#[cfg(feature = "opentelemetry")]
pub mod trace;
pub mod url;
pub mod wire;

#[cfg(feature = "amqp")]
pub use broker_connection::BrokerConnection;
pub use enqueue::{enqueue, enqueue_batch};
pub use error::{Error, Result};
pub use message::{Message, MessageBuilder};
pub use migrate::{MIGRATOR, migrate};
pub use stored::{State, StoredMessage, messages_for_saga};
