//! How every long-running part of the toolkit waits before it reconnects: the relay
//! and the consumer back off alike after a lost broker or database.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The first pause after a failure.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// The longest pause (before jitter, which may double it): a server back after an
/// outage is found within about this. A broker restart takes seconds; a longer cap
/// would leave a sidecar idle long after its broker is back.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A session (a connection to the broker that did its work) that lasted this long
/// was healthy: the reconnect backoff starts over. Short, because a broker that fails
/// often (restarts, forced closes) should not leave clients waiting longer each time,
/// and long enough that a broker that accepts and drops at once is not hammered.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(5);

/// Pauses before each reconnect: exponential from [`RECONNECT_MIN`] to
/// [`RECONNECT_MAX`], jittered so that many processes do not come back in step, and
/// never exhausted (a service waits for its servers as long as it runs).
pub fn reconnect() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_never_ends() {
        let pauses: Vec<Duration> = reconnect().take(50).collect();
        assert_eq!(pauses.len(), 50);
        assert!(pauses.iter().all(|p| *p <= RECONNECT_MAX * 2), "{pauses:?}");
        assert!(pauses[40] >= RECONNECT_MAX, "{pauses:?}");
    }
}
