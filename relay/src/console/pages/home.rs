//! The home page: what is wrong now, service by service, and the sagas that went quiet.

use maud::{Markup, html};

use super::layout::{Viewer, page, query_value, saga_link, span, when, when_or_dash};
use crate::console::read::home::ServiceSummary;
use crate::console::read::stuck::{StuckReport, StuckSaga};

pub(crate) fn render(
    viewer: &Viewer,
    services: &[ServiceSummary],
    stuck: Option<&StuckReport>,
    stuck_after: std::time::Duration,
) -> Markup {
    let body = html! {
        h1 { "Services" }
        div.cards {
            @for s in services { (card(s)) }
        }
        h2 id="stuck" { "Stuck choreographed sagas (quiet for over " (span(stuck_after.as_secs_f64())) ", last step not final)" }
        @match stuck {
            None => p.muted { "Looking: the first look at every service's inbox has not ended yet." },
            Some(report) => {
                p.muted { "As of " (when(report.checked_at)) " (looked at every 30 s)." }
                (stuck_table(&report.sagas))
            }
        }
    };
    page("Home", viewer, body)
}

fn stuck_table(stuck: &[StuckSaga]) -> Markup {
    html! {
        @if stuck.is_empty() {
            p.muted id="no-stuck" { "None." }
        } @else {
            table id="stuck-sagas" {
                tr { th { "saga id" } th { "last step" } th { "in service" } th { "last activity" } }
                @for s in stuck {
                    tr.trouble {
                        td { a href=(saga_link(&s.saga_id)) { (s.saga_id) } }
                        td { (s.last_step) }
                        td { (s.service) }
                        td { (when(s.last_activity_at)) }
                    }
                }
            }
        }
    }
}

fn card(s: &ServiceSummary) -> Markup {
    html! {
        div.card id={ "service-" (s.service) } {
            h2 { (s.service) }
            @if let Some(error) = &s.error {
                p.bad { (error) }
            }
            @if let Some(outbox) = &s.outbox {
                p {
                    "Relay backlog: " strong { (outbox.backlog) }
                    ", oldest pending " (span(outbox.oldest_pending_age_seconds))
                    br;
                    "Parked outbox rows: "
                    @if outbox.parked > 0 {
                        a.bad href={ "/parked?service=" (query_value(&s.service)) } { (outbox.parked) }
                    } @else { span.ok { "0" } }
                }
            }
            p {
                "Consumer dead letters: "
                @if s.dead_letters.is_empty() { span.ok { "0" } }
                @for q in &s.dead_letters {
                    a.bad href={ "/dead-letters?service=" (query_value(&s.service)) "&queue=" (query_value(&q.queue)) } {
                        (q.count) " in " (q.queue)
                    }
                    " "
                }
            }
            @if let Some(sagas) = &s.sagas {
                p {
                    "Sagas: "
                    @if sagas.by_state.iter().all(|(_, count)| *count == 0) { span.muted { "none" } }
                    @for (state, count) in &sagas.by_state {
                        @if *count > 0 { (state) " " strong { (count) } "  " }
                    }
                    br;
                    "Overdue: "
                    @if sagas.overdue > 0 { span.bad { (sagas.overdue) } } @else { span.ok { "0" } }
                    @if sagas.oldest_active_age_seconds > 0.0 {
                        ", oldest unfinished " (span(sagas.oldest_active_age_seconds))
                    }
                }
                @if !s.overdue.is_empty() {
                    table {
                        tr { th { "overdue saga" } th { "state" } th { "deadline" } }
                        @for o in &s.overdue {
                            tr.trouble {
                                td { a href=(saga_link(&o.saga_id)) { (o.saga_id) } }
                                td { (o.state) " at step " (o.current_step) }
                                td { (when_or_dash(o.deadline_at)) }
                            }
                        }
                    }
                }
            }
        }
    }
}
