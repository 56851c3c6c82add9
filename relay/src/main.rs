//! The `outbox-relay` sidecar. Work in progress.

fn main() {}
