use std::time::Duration;

/// How a relay instance behaves. [`RelayConfig::default`] suits a sidecar; the
/// `outbox-relay` binary fills it from flags and environment variables.
///
/// Start from the default and set fields (`config.exchange = "events".into()`):
/// new settings can then be added without breaking your code.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Exchange for rows whose `exchange` column is NULL. `""` is the default exchange.
    pub exchange: String,
    /// Rows claimed and published together.
    pub batch_size: u32,
    /// Bytes (payload and headers) claimed and published together: a batch stops
    /// before the row that would take it past this, so memory stays near
    /// `max_in_flight_batches × batch_max_bytes` whatever the rows weigh. A single
    /// row larger than this is still published, alone.
    pub batch_max_bytes: u64,
    /// Batches published but not yet confirmed, at most. More overlaps database
    /// and broker round trips; each costs memory for its rows.
    pub max_in_flight_batches: usize,
    /// A nacked or unroutable row is parked as dead after this many attempts.
    pub max_attempts: u32,
    /// First retry delay after a nack or return; doubles per attempt, with jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// An idle relay looks for work at least this often, notification or not.
    pub poll_interval: Duration,
    /// A busy relay restarts its scan from the oldest row at least this often, so a
    /// row whose transaction committed late, behind published rows, is found.
    pub rescan_interval: Duration,
    /// A partition lease lasts this long without renewal; an instance that dies is
    /// replaced within about this time.
    pub lease_ttl: Duration,
    /// How often leases are renewed and rebalanced.
    pub heartbeat_interval: Duration,
    /// A batch whose confirms have not all arrived by then is given up on: the
    /// connection is dropped and its rows are published again.
    pub confirm_timeout: Duration,
    /// Keep sent rows this long (state `sent`) instead of deleting them at once.
    pub retention: Option<Duration>,
    /// Rows deleted per statement by the retention cleanup.
    pub cleanup_batch_size: u32,
    /// On shutdown, wait this long for outstanding confirms.
    pub shutdown_timeout: Duration,
    /// Names this instance in the lease table and in logs.
    pub instance_id: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            exchange: String::new(),
            batch_size: 500,
            batch_max_bytes: 4 * 1024 * 1024,
            max_in_flight_batches: 4,
            max_attempts: 10,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(3),
            confirm_timeout: Duration::from_secs(10),
            retention: None,
            cleanup_batch_size: 1000,
            shutdown_timeout: Duration::from_secs(10),
            instance_id: default_instance_id(),
        }
    }
}

/// `host-pid-random`: unique per process, and readable in `outbox-relay status`.
pub fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "relay".to_owned());
    let suffix: u16 = rand::random();
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

/// The host part of an instance id, for the instance table.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
