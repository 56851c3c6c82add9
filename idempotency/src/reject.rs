//! A handler's way to say "this message will never take effect": dead-letter it now.

use std::fmt;

/// Return this (boxed, or through `?` into a `BoxError`) from a handler for a message
/// that no retry can help: it names something that does not exist, say. The message
/// goes to `{queue}.dead` at once with this reason, instead of through every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject(pub String);

impl Reject {
    /// A rejection for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected: {}", self.0)
    }
}

impl std::error::Error for Reject {}
