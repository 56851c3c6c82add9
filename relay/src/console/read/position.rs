//! "Where is it now?": the answer at the top of a saga page. For an orchestrated
//! saga, its state and what it waits for, from the orchestrator's row. For a
//! choreographed one, the last step any service saw, how long ago, and what should
//! come next, from the records of every service.

use chrono::{DateTime, Utc};
use serde::Serialize;
use txoutbox_saga::admin::SagaView;

use super::timeline::{Entry, Kind};
use super::trace::ServiceTrace;

/// Where the saga is, and what comes next.
#[derive(Debug, Serialize)]
pub(crate) struct Position {
    /// orchestrated, choreographed or unknown (no service has a record of it).
    pub(crate) mode: &'static str,
    /// The service that holds the saga now (its orchestrator, or the last to act).
    pub(crate) service: Option<String>,
    /// The saga's state (orchestrated), or the last step seen (choreographed).
    pub(crate) now: String,
    pub(crate) last_activity_at: Option<DateTime<Utc>>,
    pub(crate) quiet_seconds: Option<f64>,
    /// What comes next, or what is wrong.
    pub(crate) next: String,
    /// Nothing has happened for longer than the stuck threshold, and it is not done.
    pub(crate) stuck: bool,
    pub(crate) finished: bool,
}

/// What decides "stuck" and "finished" for a choreographed saga.
pub(crate) struct Rules<'a> {
    pub(crate) stuck_after: std::time::Duration,
    pub(crate) final_steps: &'a [String],
}

/// The position, from the traces and their merged timeline.
pub(crate) fn locate(
    traces: &[ServiceTrace],
    timeline: &[Entry],
    rules: &Rules<'_>,
    now: DateTime<Utc>,
) -> Position {
    // The step the saga reached: what a service wrote or took. A "sent" is the relay
    // noting the broker's confirm, which may come after the next service already took
    // the message; an operator's action is no step.
    let last = timeline
        .iter()
        .rev()
        .find(|e| !matches!(e.kind, Kind::Operator | Kind::Sent));
    let last_activity_at = timeline.last().map(|e| e.at);
    let quiet_seconds = last_activity_at.map(|at| (now - at).num_milliseconds() as f64 / 1000.0);
    let quiet_too_long = quiet_seconds.is_some_and(|s| s > rules.stuck_after.as_secs_f64());
    if let Some((service, view)) = traces
        .iter()
        .find_map(|t| t.orchestrated.as_ref().map(|v| (&t.service, v)))
    {
        return orchestrated(service, view, last_activity_at, now);
    }
    let Some(last) = last else {
        return Position {
            mode: "unknown",
            service: None,
            now: "no service has a record of this saga id".to_owned(),
            last_activity_at,
            quiet_seconds,
            next: "check the id, or add the database of the service that started it".to_owned(),
            stuck: false,
            finished: false,
        };
    };
    let step = last.step.clone().unwrap_or_else(|| "-".to_owned());
    let unsent: Vec<String> = traces
        .iter()
        .flat_map(|t| {
            t.outbox
                .iter()
                .filter(|r| r.sent_at.is_none())
                .map(move |r| format!("{} from {} ({})", r.step, t.service, r.state))
        })
        .collect();
    let dead: Vec<String> = traces
        .iter()
        .flat_map(|t| {
            t.dead_letters
                .iter()
                .filter(|d| d.state == "dead")
                .map(|d| {
                    format!(
                        "{} in {}: {}",
                        d.step.as_deref().unwrap_or("?"),
                        d.queue,
                        d.reason
                    )
                })
        })
        .collect();
    // A final step ends the saga only once nothing of it waits: no message unsent or
    // parked, no dead letter.
    let finished = rules.final_steps.contains(&step) && unsent.is_empty() && dead.is_empty();
    let next = if !dead.is_empty() {
        format!(
            "a consumer gave up: {} (send it back once the cause is fixed)",
            dead.join("; ")
        )
    } else if !unsent.is_empty() {
        format!("not sent yet: {}", unsent.join(", "))
    } else if finished {
        format!("nothing: {step} ends this saga")
    } else {
        format!("a service to act on {step}")
    };
    Position {
        mode: "choreographed",
        service: Some(last.service.clone()),
        now: format!("{step} {} in {}", last.kind.label(), last.service),
        last_activity_at,
        quiet_seconds,
        next,
        stuck: !finished && quiet_too_long,
        finished,
    }
}

fn orchestrated(
    service: &str,
    view: &SagaView,
    last_activity_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Position {
    let i = &view.instance;
    let last_activity_at = last_activity_at.max(Some(i.updated_at));
    let quiet_seconds = last_activity_at.map(|at| (now - at).num_milliseconds() as f64 / 1000.0);
    let finished = i.state.is_terminal();
    let overdue = !finished && i.deadline_at.is_some_and(|d| d < now);
    let deadline = i
        .deadline_at
        .map(|d| format!(" until {}", d.format("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default();
    let last_command = view.outbox.last().map(|r| r.step.clone());
    let next = if let Some(request) = i.operator_request {
        format!(
            "{} requested: the next orchestrator sweep carries it out",
            request.as_str()
        )
    } else if finished {
        match &i.last_error {
            Some(error) => format!("nothing: it ended {} ({error})", i.state),
            None => format!("nothing: it ended {}", i.state),
        }
    } else if let Some(event) = &i.waiting_for {
        format!("the event {event}{deadline}")
    } else if let Some(command) = last_command {
        format!("the answer to {command}{deadline}")
    } else {
        format!("its first command{deadline}")
    };
    Position {
        mode: "orchestrated",
        service: Some(service.to_owned()),
        now: format!(
            "{} at step {} ({} v{})",
            i.state, i.current_step, i.saga_type, i.definition_version
        ),
        last_activity_at,
        quiet_seconds,
        next: if overdue {
            format!("overdue: {next}")
        } else {
            next
        },
        stuck: overdue,
        finished,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::console::read::records::{InboxRecord, OutboxRecord};
    use crate::console::read::timeline;

    fn trace(service: &str, outbox: Vec<OutboxRecord>, inbox: Vec<InboxRecord>) -> ServiceTrace {
        ServiceTrace {
            service: service.to_owned(),
            error: None,
            orchestrated: None,
            outbox,
            inbox,
            dead_letters: Vec::new(),
            audit: Vec::new(),
            cut: false,
        }
    }

    fn sent(step: &str, minute: u32) -> OutboxRecord {
        let at = Utc.with_ymd_and_hms(2026, 12, 7, 2, minute, 0).unwrap();
        OutboxRecord {
            id: uuid::Uuid::now_v7(),
            step: step.to_owned(),
            routing_key: step.to_lowercase(),
            state: "sent".to_owned(),
            attempts: 1,
            last_error: None,
            created_at: at,
            available_at: at,
            sent_at: Some(at),
        }
    }

    fn taken(step: &str, minute: u32) -> InboxRecord {
        InboxRecord {
            consumer: "c".to_owned(),
            step: step.to_owned(),
            message_id: None,
            processed_at: Utc.with_ymd_and_hms(2026, 12, 7, 2, minute, 0).unwrap(),
            duplicates: 0,
            last_duplicate_at: None,
        }
    }

    fn locate_at(traces: &[ServiceTrace], minute: u32, final_steps: &[String]) -> Position {
        let rules = Rules {
            stuck_after: Duration::from_secs(15 * 60),
            final_steps,
        };
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 2, minute, 0).unwrap();
        locate(traces, &timeline::merge(traces), &rules, now)
    }

    #[test]
    fn a_choreographed_saga_is_where_any_service_saw_it_last() {
        let traces = [
            trace("order", vec![sent("OrderCreated", 0)], vec![]),
            trace(
                "payment",
                vec![sent("PaymentCharged", 2)],
                vec![taken("OrderCreated", 1)],
            ),
        ];
        let here = locate_at(&traces, 5, &[]);
        assert_eq!(here.mode, "choreographed");
        assert_eq!(here.service.as_deref(), Some("payment"));
        assert!(here.now.starts_with("PaymentCharged"), "{}", here.now);
        assert!(!here.stuck, "quiet for 3 minutes only");
        assert!(locate_at(&traces, 30, &[]).stuck, "quiet for 28 minutes");
    }

    #[test]
    fn a_confirm_noted_late_is_not_where_the_saga_is() {
        // payment's row is marked sent after shipping took it and wrote its own.
        let mut charged = sent("PaymentCharged", 1);
        charged.sent_at = Some(Utc.with_ymd_and_hms(2026, 12, 7, 2, 4, 0).unwrap());
        let traces = [
            trace("payment", vec![charged], vec![]),
            trace(
                "shipping",
                vec![sent("ShipmentCreated", 3)],
                vec![taken("PaymentCharged", 2)],
            ),
        ];
        let here = locate_at(&traces, 5, &[]);
        assert!(here.now.starts_with("ShipmentCreated"), "{}", here.now);
    }

    #[test]
    fn a_final_step_is_never_stuck_and_an_unsent_message_comes_next() {
        let finals = ["PaymentCharged".to_owned()];
        let traces = [trace("payment", vec![sent("PaymentCharged", 2)], vec![])];
        let done = locate_at(&traces, 59, &finals);
        assert!(done.finished && !done.stuck);

        let mut waiting = sent("ShipmentCreated", 3);
        waiting.sent_at = None;
        waiting.state = "retry".to_owned();
        let traces = [trace("shipping", vec![waiting], vec![])];
        let next = locate_at(&traces, 4, &finals).next;
        assert!(
            next.contains("not sent yet: ShipmentCreated from shipping (retry)"),
            "{next}"
        );
    }

    #[test]
    fn a_final_step_with_a_parked_row_is_not_finished() {
        let finals = ["PaymentCharged".to_owned()];
        let mut parked = sent("PaymentCharged", 2);
        parked.sent_at = None;
        parked.state = "dead".to_owned();
        let traces = [trace("payment", vec![parked], vec![])];
        let here = locate_at(&traces, 59, &finals);
        assert!(!here.finished && here.stuck, "{here:?}");
    }

    #[test]
    fn no_record_anywhere_says_so() {
        let here = locate_at(&[trace("order", vec![], vec![])], 0, &[]);
        assert_eq!(here.mode, "unknown");
        assert!(!here.stuck);
    }
}
