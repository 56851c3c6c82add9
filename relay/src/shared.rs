//! What the relay's tasks share. Its own module, so that the session, settling and
//! isolation depend on it and not on the relay that spawns them.

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::RelayConfig;
use crate::lease::Leases;
use crate::metrics::Metrics;

/// What the relay's tasks share.
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) config: RelayConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) leases: Leases,
    /// Names the database's cause when it cannot be used, now and then.
    pub(crate) explainer: txoutbox::reach::Explainer,
}
