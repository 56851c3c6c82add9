//! Counters and histograms for `/metrics`, in the Prometheus text format.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use txoutbox::metrics::{Histogram, Kind, SECONDS, counter, family, gauge, sample};
use txoutbox::nodes::Node;

/// Why a publish did not count as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    /// The broker nacked the message.
    Nack,
    /// No queue was bound for it (a mandatory publish came back).
    Unroutable,
    /// The broker closed the channel on it: its exchange does not exist (404).
    NotFound,
    /// The broker closed the channel on it: the relay's user may not write to its
    /// exchange (403).
    AccessRefused,
    /// The broker closed the channel on it for a broken precondition, in practice a
    /// message over `max_message_size` (406).
    PreconditionFailed,
    /// The broker closed the channel on it with another channel-level error.
    Refused,
    /// The row cannot be put on the wire at all (checked before publishing).
    InvalidRow,
    /// The connection or channel failed with the message unconfirmed.
    Connection,
    /// The confirm did not come in time.
    ConfirmTimeout,
    /// PostgreSQL failed while claiming or recording.
    Database,
}

const REASONS: [FailureReason; 10] = [
    FailureReason::Nack,
    FailureReason::Unroutable,
    FailureReason::NotFound,
    FailureReason::AccessRefused,
    FailureReason::PreconditionFailed,
    FailureReason::Refused,
    FailureReason::InvalidRow,
    FailureReason::Connection,
    FailureReason::ConfirmTimeout,
    FailureReason::Database,
];

impl FailureReason {
    fn label(self) -> &'static str {
        match self {
            FailureReason::Nack => "nack",
            FailureReason::Unroutable => "unroutable",
            FailureReason::NotFound => "not_found",
            FailureReason::AccessRefused => "access_refused",
            FailureReason::PreconditionFailed => "precondition_failed",
            FailureReason::Refused => "refused",
            FailureReason::InvalidRow => "invalid_row",
            FailureReason::Connection => "connection",
            FailureReason::ConfirmTimeout => "confirm_timeout",
            FailureReason::Database => "database",
        }
    }
}

const BATCH_BOUNDS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

/// The relay's live figures. Cheap to update from the hot path (relaxed atomics).
pub struct Metrics {
    published: AtomicU64,
    dead: AtomicU64,
    failures: [AtomicU64; REASONS.len()],
    publish_latency: Histogram,
    batch_size: Histogram,
    partitions_held: AtomicU64,
    standing_by: AtomicBool,
    /// The node of the current broker session, redacted; `None` between sessions.
    broker_node: Mutex<Option<String>>,
    /// Why the broker blocks the current session's publishes (a resource alarm), if it does.
    broker_blocked: Mutex<Blocked>,
    database_ok: AtomicBool,
}

/// Whether the broker blocks publishing, and for which connection's watch.
#[derive(Default)]
struct Blocked {
    /// The current watch; bumped when a watch begins or its session ends.
    watch: u64,
    reason: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            published: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            publish_latency: Histogram::new(SECONDS),
            batch_size: Histogram::new(BATCH_BOUNDS),
            partitions_held: AtomicU64::new(0),
            standing_by: AtomicBool::new(false),
            broker_node: Mutex::new(None),
            broker_blocked: Mutex::new(Blocked::default()),
            database_ok: AtomicBool::new(false),
        }
    }
}

/// Outbox figures read from the database when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    /// Rows not yet sent (pending or waiting for a retry).
    pub unsent: i64,
    /// Rows parked as dead.
    pub dead: i64,
    /// How long the oldest unsent row has been due, in seconds: since it was
    /// written, or since its `available_at` for a row written with a delay (a row
    /// not yet due is not late). A row being retried counts from when it was
    /// written. 0 when nothing is due.
    pub oldest_unsent_age_seconds: f64,
}

impl Metrics {
    /// Messages confirmed by the broker since start.
    pub fn published_total(&self) -> u64 {
        self.published.load(Relaxed)
    }

    /// Partitions this relay holds leases on, as of its last heartbeat: 0 while it
    /// stands by because another running relay uses its instance id.
    pub fn partitions_held(&self) -> usize {
        self.partitions_held.load(Relaxed) as usize
    }

    /// Whether another running relay uses this relay's instance id, so that this one
    /// holds nothing and publishes nothing, as of its last heartbeat.
    pub fn standing_by(&self) -> bool {
        self.standing_by.load(Relaxed)
    }

    /// Whether the relay currently has a broker channel and a working database.
    pub fn ready(&self) -> bool {
        self.broker_node().is_some() && self.database_ok.load(Relaxed)
    }

    /// The RabbitMQ node the relay is connected to, as its URL with the password
    /// replaced by `***`; `None` while it is not connected.
    pub fn broker_node(&self) -> Option<String> {
        lock(&self.broker_node).clone()
    }

    /// Why the broker blocks this relay's publishes, while it does: RabbitMQ's reason
    /// for a resource alarm (`low on memory`, `low on disk`). Publishes wait, and
    /// their confirms time out, until the alarm clears.
    pub fn broker_blocked(&self) -> Option<String> {
        lock(&self.broker_blocked).reason.clone()
    }

    /// Whether PostgreSQL answered the relay's last query.
    pub fn database_ok(&self) -> bool {
        self.database_ok.load(Relaxed)
    }

    pub(crate) fn batch_settled(&self, size: usize, sent: usize, confirm_latency: Duration) {
        self.published.fetch_add(sent as u64, Relaxed);
        self.batch_size.observe(size as f64, 1);
        self.publish_latency
            .observe(confirm_latency.as_secs_f64(), size as u64);
    }

    pub(crate) fn failed(&self, reason: FailureReason, count: u64) {
        let i = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.failures[i].fetch_add(count, Relaxed);
    }

    pub(crate) fn parked_dead(&self, count: u64) {
        self.dead.fetch_add(count, Relaxed);
    }

    pub(crate) fn set_partitions_held(&self, held: usize) {
        self.partitions_held.store(held as u64, Relaxed);
    }

    pub(crate) fn set_standing_by(&self, standing_by: bool) {
        self.standing_by.store(standing_by, Relaxed);
    }

    /// A session on `node` started (`Some`) or ended (`None`).
    pub(crate) fn set_broker_node(&self, node: Option<&Node>) {
        *lock(&self.broker_node) = node.map(Node::to_string);
    }

    /// A broker connection's watch began: its number, for [`Self::set_broker_blocked`].
    pub(crate) fn broker_watch_began(&self) -> u64 {
        let mut blocked = lock(&self.broker_blocked);
        blocked.watch += 1;
        blocked.reason = None;
        blocked.watch
    }

    /// The broker blocked (`Some(reason)`) or unblocked (`None`) the connection of
    /// watch `watch`. Ignored once that watch has ended: an event the old
    /// connection's watcher still had in hand must not outlive its session.
    pub(crate) fn set_broker_blocked(&self, watch: u64, reason: Option<String>) {
        let mut blocked = lock(&self.broker_blocked);
        if blocked.watch == watch {
            blocked.reason = reason;
        }
    }

    /// The session ended: the next connection starts unblocked, and the old one's
    /// watcher can no longer say otherwise.
    pub(crate) fn broker_watch_ended(&self) {
        let mut blocked = lock(&self.broker_blocked);
        blocked.watch += 1;
        blocked.reason = None;
    }

    pub(crate) fn set_database_ok(&self, ok: bool) {
        self.database_ok.store(ok, Relaxed);
    }

    /// The Prometheus text exposition of every figure, with `backlog` if it could be read.
    pub fn render(&self, backlog: Option<Backlog>) -> String {
        let mut out = String::with_capacity(4096);
        counter(
            &mut out,
            "outbox_relay_published_total",
            "Messages confirmed by the broker.",
            self.published_total(),
        );
        let failures = "outbox_relay_failures_total";
        family(
            &mut out,
            failures,
            "Publishes that did not count as sent, by reason.",
            Kind::Counter,
        );
        for (reason, count) in REASONS.iter().zip(&self.failures) {
            let labels = [("reason", reason.label())];
            sample(&mut out, failures, &labels, count.load(Relaxed));
        }
        counter(
            &mut out,
            "outbox_relay_dead_total",
            "Rows this instance parked as dead.",
            self.dead.load(Relaxed),
        );
        self.publish_latency.render(
            &mut out,
            "outbox_relay_publish_latency_seconds",
            "From publishing a batch to its last confirm, per message.",
        );
        self.batch_size.render(
            &mut out,
            "outbox_relay_batch_size",
            "Rows per published batch.",
        );
        gauge(
            &mut out,
            "outbox_relay_partitions_held",
            "Partitions this instance leases.",
            self.partitions_held.load(Relaxed) as f64,
        );
        gauge(
            &mut out,
            "outbox_relay_standing_by",
            "1 while another running relay uses this instance id: this one publishes nothing.",
            f64::from(u8::from(self.standing_by())),
        );
        gauge(
            &mut out,
            "outbox_relay_broker_blocked",
            "1 while the broker blocks this relay's publishes (a memory or disk alarm).",
            f64::from(u8::from(self.broker_blocked().is_some())),
        );
        gauge(
            &mut out,
            "outbox_relay_ready",
            "1 when connected to both PostgreSQL and RabbitMQ.",
            f64::from(u8::from(self.ready())),
        );
        if let Some(backlog) = backlog {
            gauge(
                &mut out,
                "outbox_relay_backlog",
                "Outbox rows not yet sent.",
                backlog.unsent as f64,
            );
            gauge(
                &mut out,
                "outbox_relay_dead_rows",
                "Outbox rows parked as dead.",
                backlog.dead as f64,
            );
            gauge(
                &mut out,
                "outbox_relay_oldest_unsent_age_seconds",
                "How long the oldest unsent outbox row has been due (from its available_at for a delayed row).",
                backlog.oldest_unsent_age_seconds,
            );
        }
        out
    }
}

/// The value behind a lock that a panic elsewhere cannot take away.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.batch_settled(3, 2, Duration::from_millis(3));
        metrics.failed(FailureReason::Unroutable, 1);
        let text = metrics.render(Some(Backlog {
            unsent: 5,
            dead: 1,
            oldest_unsent_age_seconds: 2.5,
        }));
        assert!(text.contains("outbox_relay_published_total 2\n"));
        assert!(text.contains("outbox_relay_failures_total{reason=\"unroutable\"} 1\n"));
        assert!(text.contains("outbox_relay_publish_latency_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("outbox_relay_publish_latency_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("outbox_relay_publish_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("outbox_relay_backlog 5\n"));
        assert!(text.contains("outbox_relay_ready 0\n"));
    }

    #[test]
    fn a_block_lasts_only_while_its_connection_is_watched() {
        let metrics = Metrics::default();
        let blocked = |metrics: &Metrics| {
            metrics
                .render(None)
                .contains("outbox_relay_broker_blocked 1\n")
        };
        let first = metrics.broker_watch_began();
        metrics.set_broker_blocked(first, Some("low on memory".into()));
        assert!(blocked(&metrics));
        assert_eq!(metrics.broker_blocked().as_deref(), Some("low on memory"));
        metrics.set_broker_blocked(first, None);
        assert!(!blocked(&metrics));

        // The session ends; its watcher's late event changes nothing.
        metrics.set_broker_blocked(first, Some("low on memory".into()));
        metrics.broker_watch_ended();
        metrics.set_broker_blocked(first, Some("low on disk".into()));
        assert!(!blocked(&metrics));
        assert_eq!(metrics.broker_blocked(), None);

        // The next connection's watch counts.
        let second = metrics.broker_watch_began();
        metrics.set_broker_blocked(second, Some("low on disk".into()));
        assert!(blocked(&metrics));
    }
}
