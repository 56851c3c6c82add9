//! What one consumer did since it started, in the Prometheus text format.
//!
//! A consumer's dead letters live in its `{queue}.dead` queue, where no database
//! query sees them: these counters are how an alert learns of them. Every series
//! carries the consumer's inbox name and queue, so the counters of several
//! consumers in one process can be written together ([`Metrics::render_all`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use txoutbox::metrics::{Histogram, Kind, SECONDS, family, sample};

use crate::batch::Took;
use crate::decision::DeadKind;

/// A consumer's counters. Relaxed atomics: cheap on the hot path.
#[derive(Debug)]
pub struct Metrics {
    consumer: String,
    queue: String,
    processed: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead: [AtomicU64; DeadKind::ALL.len()],
    connected: AtomicBool,
    batch_duration: Histogram,
}

impl Metrics {
    pub(crate) fn new(consumer: &str, queue: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            queue: queue.to_owned(),
            processed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead: std::array::from_fn(|_| AtomicU64::new(0)),
            connected: AtomicBool::new(false),
            batch_duration: Histogram::new(SECONDS),
        }
    }

    pub(crate) fn took(&self, took: Took) {
        match took {
            Took::Effect => self.processed.fetch_add(1, Relaxed),
            Took::Duplicate => self.duplicates.fetch_add(1, Relaxed),
        };
    }

    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Relaxed);
    }

    pub(crate) fn dead_lettered(&self, kind: DeadKind) {
        self.dead[kind as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Relaxed);
    }

    pub(crate) fn batch_done(&self, took: Duration) {
        self.batch_duration.observe(took.as_secs_f64(), 1);
    }

    /// Messages whose handler's effect committed.
    pub fn processed(&self) -> u64 {
        self.processed.load(Relaxed)
    }

    /// Messages whose key was already in the inbox: acked without effect.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Relaxed)
    }

    /// Messages sent to a retry queue after a failed attempt.
    pub fn retried_total(&self) -> u64 {
        self.retried.load(Relaxed)
    }

    /// Messages moved to `{queue}.dead`, for every reason.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead.iter().map(|count| count.load(Relaxed)).sum()
    }

    /// Whether the consumer is connected to a broker node and consuming.
    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// This consumer's counters as Prometheus text.
    pub fn render(&self) -> String {
        Self::render_all([self])
    }

    /// The counters of several consumers as one Prometheus text, each family once,
    /// a series per consumer: what one `/metrics` of a service with several
    /// consumers serves.
    pub fn render_all<'a>(all: impl IntoIterator<Item = &'a Metrics>) -> String {
        let all: Vec<&Metrics> = all.into_iter().collect();
        let mut out = String::with_capacity(1024 + 1024 * all.len());
        let messages = "inbox_messages_total";
        family(
            &mut out,
            messages,
            "Deliveries decided, by outcome: processed, duplicate, retried, dead_lettered.",
            Kind::Counter,
        );
        for m in &all {
            let outcomes = [
                ("processed", m.processed()),
                ("duplicate", m.duplicates()),
                ("retried", m.retried_total()),
                ("dead_lettered", m.dead_lettered_total()),
            ];
            for (outcome, count) in outcomes {
                sample(
                    &mut out,
                    messages,
                    &m.labels(Some(("outcome", outcome))),
                    count,
                );
            }
        }
        let dead = "inbox_dead_lettered_total";
        family(
            &mut out,
            dead,
            "Deliveries moved to {queue}.dead by this consumer, by reason.",
            Kind::Counter,
        );
        for m in &all {
            for (kind, count) in DeadKind::ALL.iter().zip(&m.dead) {
                let labels = m.labels(Some(("reason", kind.label())));
                sample(&mut out, dead, &labels, count.load(Relaxed));
            }
        }
        let connected = "inbox_connected";
        family(
            &mut out,
            connected,
            "1 while the consumer is connected to a broker node and consuming.",
            Kind::Gauge,
        );
        for m in &all {
            sample(
                &mut out,
                connected,
                &m.labels(None),
                u8::from(m.connected()),
            );
        }
        let duration = "inbox_batch_duration_seconds";
        family(
            &mut out,
            duration,
            "From taking a batch of deliveries to settling them with the broker.",
            Kind::Histogram,
        );
        for m in &all {
            m.batch_duration
                .samples(&mut out, duration, &m.labels(None));
        }
        out
    }

    fn labels<'a>(&'a self, extra: Option<(&'a str, &'a str)>) -> Vec<(&'a str, &'a str)> {
        let mut labels = vec![
            ("consumer", self.consumer.as_str()),
            ("queue", self.queue.as_str()),
        ];
        labels.extend(extra);
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_consumers_share_each_family() {
        let (a, b) = (
            Metrics::new("inventory", "inv"),
            Metrics::new("pay\"ment", "pay"),
        );
        a.took(Took::Effect);
        a.took(Took::Duplicate);
        b.dead_lettered(DeadKind::BadPayload);
        b.set_connected(true);
        let text = Metrics::render_all([&a, &b]);
        assert_eq!(
            text.matches("# TYPE inbox_messages_total counter").count(),
            1
        );
        assert!(text.contains(
            "inbox_messages_total{consumer=\"inventory\",queue=\"inv\",outcome=\"processed\"} 1\n"
        ));
        assert!(text.contains(
            "inbox_messages_total{consumer=\"inventory\",queue=\"inv\",outcome=\"duplicate\"} 1\n"
        ));
        assert!(text.contains(
            "inbox_dead_lettered_total{consumer=\"pay\\\"ment\",queue=\"pay\",reason=\"bad_payload\"} 1\n"
        ));
        assert!(text.contains(
            "inbox_messages_total{consumer=\"pay\\\"ment\",queue=\"pay\",outcome=\"dead_lettered\"} 1\n"
        ));
        assert!(text.contains("inbox_connected{consumer=\"inventory\",queue=\"inv\"} 0\n"));
        assert!(text.contains("inbox_connected{consumer=\"pay\\\"ment\",queue=\"pay\"} 1\n"));
    }
}
