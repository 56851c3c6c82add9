//! The saga's records from every service as one list, merged by time: the page's
//! "what happened, where, in which order".

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::trace::ServiceTrace;

/// What a timeline entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A message written to the service's outbox (its state says whether it went).
    Written,
    /// The relay had it confirmed by the broker.
    Sent,
    /// The service's inbox took it: its effect happened, once.
    Taken,
    /// The orchestrator's history: a command sent, a reply, a timeout, an operator.
    History,
    /// A consumer gave up on a message.
    DeadLettered,
    /// A dead letter went back to its queue.
    SentBack,
    /// An operator acted, with a reason.
    Operator,
}

impl Kind {
    /// The words a page shows.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Written => "written",
            Kind::Sent => "sent",
            Kind::Taken => "taken",
            Kind::History => "orchestrator",
            Kind::DeadLettered => "dead-lettered",
            Kind::SentBack => "sent back",
            Kind::Operator => "operator",
        }
    }
}

/// One thing that happened to the saga, in one service.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    pub(crate) at: DateTime<Utc>,
    pub(crate) service: String,
    pub(crate) kind: Kind,
    /// The message's step (its type), where there is one.
    pub(crate) step: Option<String>,
    /// The record's state (an outbox row's, a dead letter's, a saga's move).
    pub(crate) state: Option<String>,
    pub(crate) detail: String,
    /// True for what needs a person: a parked row, a dead letter, a failure.
    pub(crate) trouble: bool,
}

/// Every record of every service, oldest first (ties keep the services' order).
pub(crate) fn merge(traces: &[ServiceTrace]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = traces.iter().flat_map(entries_of).collect();
    entries.sort_by_key(|entry| entry.at);
    entries
}

fn entries_of(trace: &ServiceTrace) -> Vec<Entry> {
    let service = &trace.service;
    let entry = |at, kind, step: Option<&str>, state: Option<&str>, detail: String| Entry {
        at,
        service: service.clone(),
        kind,
        step: step.map(str::to_owned),
        state: state.map(str::to_owned),
        trouble: matches!(state, Some("dead" | "retry" | "failed")) || kind == Kind::DeadLettered,
        detail,
    };
    let mut out = Vec::new();
    for row in &trace.outbox {
        let mut detail = format!("to {} (message {})", row.routing_key, row.id);
        if row.attempts > 0 {
            detail.push_str(&format!(", {} attempt(s)", row.attempts));
        }
        if let Some(error) = &row.last_error {
            detail.push_str(&format!(", last error: {error}"));
        }
        out.push(entry(
            row.created_at,
            Kind::Written,
            Some(&row.step),
            Some(&row.state),
            detail,
        ));
        if let Some(sent_at) = row.sent_at {
            out.push(entry(
                sent_at,
                Kind::Sent,
                Some(&row.step),
                None,
                format!("confirmed by the broker (message {})", row.id),
            ));
        }
    }
    for record in &trace.inbox {
        let mut detail = format!("by consumer {}", record.consumer);
        if let Some(id) = &record.message_id {
            detail.push_str(&format!(" (message {id})"));
        }
        if record.duplicates > 0 {
            detail.push_str(&format!(
                "; {} duplicate(s) turned away, the last at {}",
                record.duplicates,
                record
                    .last_duplicate_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ));
        }
        out.push(entry(
            record.processed_at,
            Kind::Taken,
            Some(&record.step),
            None,
            detail,
        ));
    }
    if let Some(view) = &trace.orchestrated {
        for h in &view.history {
            let state = h.to_state.map(|s| s.to_string());
            let mut detail = h.kind.clone();
            if let Some(step) = h.step {
                detail.push_str(&format!(" at step {step}"));
            }
            if let Some(phase) = h.phase {
                detail.push_str(&format!(" ({phase:?})").to_lowercase());
            }
            if let (Some(from), Some(to)) = (h.from_state, h.to_state) {
                detail.push_str(&format!(": {from} to {to}"));
            }
            if let Some(text) = &h.detail {
                detail.push_str(&format!("; {text}"));
            }
            out.push(entry(
                h.occurred_at,
                Kind::History,
                None,
                state.as_deref(),
                detail,
            ));
        }
    }
    for dead in &trace.dead_letters {
        out.push(entry(
            dead.dead_at,
            Kind::DeadLettered,
            dead.step.as_deref(),
            Some(&dead.state),
            format!(
                "{} gave up after {} attempt(s), queue {}: {}",
                dead.consumer, dead.attempts, dead.queue, dead.reason
            ),
        ));
        if let Some(at) = dead.sent_back_at {
            out.push(entry(
                at,
                Kind::SentBack,
                dead.step.as_deref(),
                None,
                format!("dead letter {} back to {}", dead.id, dead.queue),
            ));
        }
    }
    for action in &trace.audit {
        out.push(entry(
            action.at,
            Kind::Operator,
            None,
            None,
            format!(
                "{} on {} by {}: {}",
                action.action, action.target, action.actor, action.reason
            ),
        ));
    }
    out
}
