//! An orchestrator's counters, in the Prometheus text format. Figures that live in
//! the database (sagas by state, the oldest unfinished one) come from
//! [`admin::stats`](crate::admin), read when scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use txoutbox::metrics::{Kind, counter, family, gauge, sample};

use crate::admin::SagaStats;
use crate::engine::Applied;
use crate::state::SagaState;
use crate::sweep::Swept;

/// What one orchestrator instance did since it started. Relaxed atomics: cheap on
/// the hot path.
#[derive(Debug, Default)]
pub struct Metrics {
    replies_applied: AtomicU64,
    replies_ignored: AtomicU64,
    timeouts: AtomicU64,
    completed: AtomicU64,
    compensated: AtomicU64,
    failed: AtomicU64,
    compensations_resent: AtomicU64,
    definitions_missing: AtomicU64,
}

impl Metrics {
    pub(crate) fn replied(&self, applied: &Applied) {
        match applied {
            Applied::Ignored(_) => self.replies_ignored.fetch_add(1, Relaxed),
            _ => self.replies_applied.fetch_add(1, Relaxed),
        };
        self.moved(applied);
    }

    pub(crate) fn swept(&self, swept: &Swept) {
        if swept.timed_out && matches!(swept.applied, Applied::Moved { .. }) {
            self.timeouts.fetch_add(1, Relaxed);
        }
        self.moved(&swept.applied);
    }

    fn moved(&self, applied: &Applied) {
        match applied {
            Applied::Moved {
                to: SagaState::Completed,
                ..
            } => self.completed.fetch_add(1, Relaxed),
            Applied::Moved {
                to: SagaState::Compensated,
                ..
            } => self.compensated.fetch_add(1, Relaxed),
            Applied::Moved {
                to: SagaState::Failed,
                ..
            } => self.failed.fetch_add(1, Relaxed),
            Applied::Moved {
                from: SagaState::Compensating,
                to: SagaState::Compensating,
            } => self.compensations_resent.fetch_add(1, Relaxed),
            Applied::DefinitionMissing => self.definitions_missing.fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    /// Sagas this instance finished in `state` (completed, compensated or failed).
    pub fn finished(&self, state: SagaState) -> u64 {
        match state {
            SagaState::Completed => self.completed.load(Relaxed),
            SagaState::Compensated => self.compensated.load(Relaxed),
            SagaState::Failed => self.failed.load(Relaxed),
            _ => 0,
        }
    }

    /// Timeouts this instance applied.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Relaxed)
    }

    /// The counters, and the database's figures in `stats` (read with
    /// [`admin::stats`](crate::admin::stats) when scraped), as Prometheus text.
    pub fn render_with(&self, stats: &SagaStats) -> String {
        let mut out = self.render();
        let instances = "saga_instances";
        family(
            &mut out,
            instances,
            "Sagas in the database, by state.",
            Kind::Gauge,
        );
        for (state, count) in &stats.by_state {
            sample(&mut out, instances, &[("state", state.as_str())], count);
        }
        gauge(
            &mut out,
            "saga_oldest_active_age_seconds",
            "Age of the oldest saga not yet finished: nothing is stuck silently.",
            stats.oldest_active_age_seconds,
        );
        gauge(
            &mut out,
            "saga_overdue",
            "Unfinished sagas past their deadline and not yet swept.",
            stats.overdue as f64,
        );
        let waiting = "saga_waiting";
        family(
            &mut out,
            waiting,
            "Sagas at a wait step, by the event they wait for.",
            Kind::Gauge,
        );
        for (event, count) in &stats.waiting {
            sample(&mut out, waiting, &[("event", event.as_str())], count);
        }
        out
    }

    /// The counters as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "saga_replies_applied_total",
                "Replies that moved a saga.",
                &self.replies_applied,
            ),
            (
                "saga_replies_ignored_total",
                "Late or duplicate replies, recorded in the history, that changed nothing.",
                &self.replies_ignored,
            ),
            (
                "saga_timeouts_total",
                "Commands whose deadline passed without a reply.",
                &self.timeouts,
            ),
            (
                "saga_compensations_resent_total",
                "Compensations that failed or timed out and were sent again.",
                &self.compensations_resent,
            ),
            (
                "saga_definitions_missing_total",
                "Sagas failed because their definition version is not registered.",
                &self.definitions_missing,
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut out, name, help, value.load(Relaxed));
        }
        let finished = "saga_finished_total";
        family(
            &mut out,
            finished,
            "Sagas finished by this instance, by state.",
            Kind::Counter,
        );
        for state in [
            SagaState::Completed,
            SagaState::Compensated,
            SagaState::Failed,
        ] {
            sample(
                &mut out,
                finished,
                &[("state", state.as_str())],
                self.finished(state),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_the_orchestrator_did() {
        let metrics = Metrics::default();
        metrics.replied(&Applied::Moved {
            from: SagaState::Running,
            to: SagaState::Completed,
        });
        metrics.replied(&Applied::Ignored("late"));
        metrics.swept(&Swept {
            saga_id: "s".into(),
            timed_out: true,
            applied: Applied::Moved {
                from: SagaState::Running,
                to: SagaState::Compensating,
            },
        });
        let text = metrics.render();
        assert!(text.contains("saga_replies_applied_total 1\n"), "{text}");
        assert!(text.contains("saga_replies_ignored_total 1\n"), "{text}");
        assert!(text.contains("saga_timeouts_total 1\n"), "{text}");
        assert!(
            text.contains("saga_finished_total{state=\"completed\"} 1\n"),
            "{text}"
        );
    }
}
