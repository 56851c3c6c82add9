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
    /// Names this instance in the lease table and in logs. One per running relay:
    /// a clone of a config keeps it, so give each relay built from a clone its own
    /// ([`default_instance_id`]). A relay started with an id another running relay
    /// uses publishes nothing and stands by until that one stops.
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

/// A setting the relay cannot work with, named as in [`RelayConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct ConfigError {
    /// The field of [`RelayConfig`] at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl RelayConfig {
    /// Checks the settings together, as [`Relay::run`](crate::Relay::run) does before
    /// it starts: a zero interval or a heartbeat slower than the lease is an error to
    /// print, not a panic inside tokio or a relay that loses its leases.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, problem| Err(ConfigError { field, problem });
        let nonzero = [
            ("retry_base", self.retry_base),
            ("poll_interval", self.poll_interval),
            ("rescan_interval", self.rescan_interval),
            ("lease_ttl", self.lease_ttl),
            ("heartbeat_interval", self.heartbeat_interval),
            ("confirm_timeout", self.confirm_timeout),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, value)| value.is_zero()) {
            return fail(field, "must be longer than zero");
        }
        if self.batch_size == 0 || self.batch_max_bytes == 0 {
            return fail("batch_size", "and batch_max_bytes must be at least 1");
        }
        if self.max_in_flight_batches == 0 {
            return fail("max_in_flight_batches", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return fail("max_attempts", "must be at least 1");
        }
        if self.cleanup_batch_size == 0 {
            return fail("cleanup_batch_size", "must be at least 1");
        }
        if self.retry_base > self.retry_max {
            return fail("retry_base", "must not exceed retry_max");
        }
        if self.heartbeat_interval.saturating_mul(2) > self.lease_ttl {
            return fail("heartbeat_interval", "must be at most half of lease_ttl");
        }
        if self.instance_id.trim().is_empty() {
            return fail("instance_id", "must not be empty");
        }
        // It is a primary key, a log field and part of the broker connection's name:
        // kept to a length all three take, and to printable characters.
        if self.instance_id.chars().count() > MAX_INSTANCE_ID_CHARS {
            return fail("instance_id", "must be at most 200 characters");
        }
        if self.instance_id.chars().any(char::is_control) {
            return fail("instance_id", "must not contain control characters");
        }
        Ok(())
    }
}

/// The longest instance id taken, in characters.
const MAX_INSTANCE_ID_CHARS: usize = 200;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid() {
        assert_eq!(RelayConfig::default().validate(), Ok(()));
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let with = |change: fn(&mut RelayConfig)| {
            let mut config = RelayConfig::default();
            change(&mut config);
            config.validate().unwrap_err().field
        };
        assert_eq!(with(|c| c.poll_interval = Duration::ZERO), "poll_interval");
        assert_eq!(
            with(|c| c.confirm_timeout = Duration::ZERO),
            "confirm_timeout"
        );
        assert_eq!(with(|c| c.batch_size = 0), "batch_size");
        assert_eq!(
            with(|c| c.max_in_flight_batches = 0),
            "max_in_flight_batches"
        );
        assert_eq!(with(|c| c.max_attempts = 0), "max_attempts");
        assert_eq!(
            with(|c| c.retry_base = Duration::from_secs(600)),
            "retry_base"
        );
        assert_eq!(
            with(|c| c.heartbeat_interval = Duration::from_secs(10)),
            "heartbeat_interval"
        );
        assert_eq!(with(|c| c.instance_id = " ".into()), "instance_id");
        assert_eq!(with(|c| c.instance_id = "x".repeat(201)), "instance_id");
        assert_eq!(with(|c| c.instance_id = "a\nb".into()), "instance_id");
        assert_eq!(
            RelayConfig {
                instance_id: "é".repeat(200),
                ..RelayConfig::default()
            }
            .validate(),
            Ok(())
        );
    }
}
