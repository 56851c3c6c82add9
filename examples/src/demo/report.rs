//! The report printed at the end of a run.

use std::collections::BTreeMap;
use std::time::Duration;

use super::plan::FaultKind;
use super::verify::Findings;

/// Everything the report shows.
#[derive(Debug)]
pub struct Report<'a> {
    /// What the verifier found in the databases.
    pub findings: &'a Findings,
    /// Faults injected, by kind.
    pub faults: &'a BTreeMap<FaultKind, u32>,
    /// The kinds the run could inject.
    pub kinds: &'a [FaultKind],
    /// Messages left in the dead-letter queues.
    pub dead_letters: u32,
    /// Times the run's RabbitMQ node (with `--cluster`, one of its cluster's nodes)
    /// was stopped or killed and came back.
    pub broker_restarts: u32,
    /// Processes that exited without being killed.
    pub unexpected_exits: u32,
    /// From the first order to the last one finished.
    pub elapsed: Duration,
}

impl Report<'_> {
    /// Whether the run proved what it set out to.
    pub fn passed(&self) -> bool {
        self.findings.violations.is_empty() && self.dead_letters == 0 && self.unexpected_exits == 0
    }

    /// Prints the report.
    pub fn print(&self) {
        let f = self.findings;
        let seconds = self.elapsed.as_secs_f64().max(0.001);
        let faults: u32 = self.faults.values().sum();
        let by_kind: Vec<String> = self
            .kinds
            .iter()
            .map(|kind| format!("{} {}", kind.label(), self.faults.get(kind).unwrap_or(&0)))
            .collect();
        println!();
        println!("exactly-once-demo report");
        let row = |name: &str, value: String| println!("  {name:<26} {value}");
        match &f.saga {
            None => row(
                "orders",
                format!(
                    "{}: {} shipped, {} cancelled (compensated), {} unfinished",
                    f.orders,
                    f.shipped,
                    f.cancelled,
                    f.orders - f.shipped - f.cancelled
                ),
            ),
            Some(saga) => {
                let failed = saga.failed.len() as i64;
                row(
                    "sagas",
                    format!(
                        "{}: {} completed, {} compensated, {failed} failed, {} unfinished",
                        f.orders,
                        f.shipped,
                        f.cancelled,
                        f.orders - f.shipped - f.cancelled - failed
                    ),
                );
                row(
                    "timeouts fired",
                    format!(
                        "{} ({} cancels of a step that cannot be undone)",
                        saga.timeouts, saga.cancels
                    ),
                );
                row(
                    "late replies ignored",
                    saga.late_replies_ignored.to_string(),
                );
                row(
                    "late actions fenced",
                    format!("{} (answered, never run)", saga.late_actions_fenced),
                );
                row(
                    "compensations",
                    format!(
                        "{} undid an effect, {} had nothing to undo; {} resent after a \
                         timeout",
                        saga.compensations_undone,
                        saga.compensations_empty,
                        saga.compensations_resent,
                    ),
                );
            }
        }
        row(
            "messages published",
            format!(
                "{} (confirmed by the broker, all four outboxes)",
                f.published
            ),
        );
        row(
            "messages taking effect",
            format!("{} (inbox keys, all four inboxes)", f.effects),
        );
        row(
            "redeliveries seen",
            format!(
                "{}: {} duplicates suppressed by the inboxes, {} first effects on a redelivery",
                f.duplicates + f.redelivered_effects,
                f.duplicates,
                f.redelivered_effects
            ),
        );
        row(
            "compensation failures",
            format!(
                "{} (failed on purpose, rolled back and retried until they succeeded)",
                f.compensation_failures
            ),
        );
        row("dead-lettered", self.dead_letters.to_string());
        row(
            "faults injected",
            format!("{faults}: {}", by_kind.join(", ")),
        );
        row("broker restarts", self.broker_restarts.to_string());
        row("unexpected exits", self.unexpected_exits.to_string());
        row("elapsed", format!("{seconds:.1} s"));
        row(
            "throughput",
            format!(
                "{:.1} orders/s, {:.1} messages/s",
                f.orders as f64 / seconds,
                f.published as f64 / seconds
            ),
        );
        println!();
        if self.passed() && f.saga.is_some() {
            println!(
                "every invariant held: each saga final, none failed, each order row shipped or \
                 cancelled by its end hook; completed ones did every step once; compensated ones \
                 undid each done step once, last first, and no action took effect after its undo; \
                 nothing charged without a shipment or a refund; stock balances; each command took \
                 effect once; nothing left unsent or dead-lettered"
            );
            return;
        }
        if self.passed() {
            println!(
                "every invariant held: each order final; charged once if shipped, never if cancelled; \
                 stock reserved once, released at most once; each message took effect once; \
                 nothing left unsent or dead-lettered"
            );
            return;
        }
        println!("INVARIANTS BROKEN:");
        for violation in f.violations.iter().take(20) {
            println!("  - {violation}");
        }
        if f.violations.len() > 20 {
            println!("  ... and {} more", f.violations.len() - 20);
        }
        if self.dead_letters > 0 {
            println!("  - {} messages were dead-lettered", self.dead_letters);
        }
        if self.unexpected_exits > 0 {
            println!(
                "  - {} processes exited on their own (see their logs)",
                self.unexpected_exits
            );
        }
    }
}
