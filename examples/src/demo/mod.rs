//! The exactly-once demo: an order saga across four services (order, inventory,
//! payment, shipping), each its own process with its own database, outbox, inbox and
//! relay, run while broker connections are cut, black-holed and closed and processes
//! are killed; then a verifier proves from the databases that every effect happened
//! exactly once.
//!
//! Run with: `scripts/demo.sh` (or `exactly-once-demo --help`).

pub mod broker;
pub mod chaos;
pub mod cli;
pub mod databases;
pub mod fleet;
pub mod orchestration;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod report;
pub mod run;
pub mod saga;
pub mod schema;
pub mod services;
pub mod soak;
pub mod stage;
pub mod verify;

pub use run::run;
