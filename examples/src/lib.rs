//! Examples of the outbox toolkit, split into a library so tests can drive them.

pub mod demo;
pub mod order_approval;
pub mod order_saga;
pub mod quickstart;
pub mod saga_report;
pub mod scratch;
