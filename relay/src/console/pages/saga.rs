//! A saga's page: where it is now at the top, then every service's records of it on
//! one timeline, and the actions an operator may take on it.

use maud::{Markup, html};
use txoutbox_saga::admin::OperatorRequest;

use super::layout::{
    Viewer, action_fields, page, query_value, saga_link, span, when, when_or_dash,
};
use crate::console::read::position::Position;
use crate::console::read::timeline::Entry;
use crate::console::read::trace::ServiceTrace;

/// Everything the page shows.
pub(crate) struct SagaPage<'a> {
    pub(crate) saga_id: &'a str,
    pub(crate) position: &'a Position,
    pub(crate) traces: &'a [ServiceTrace],
    pub(crate) timeline: &'a [Entry],
}

pub(crate) fn render(viewer: &Viewer, p: &SagaPage<'_>) -> Markup {
    let class = if p.position.stuck {
        "now stuck"
    } else if p.position.finished {
        "now finished"
    } else {
        "now"
    };
    let return_to = saga_link(p.saga_id);
    let body = html! {
        h1 { "Saga " span id="saga-id" { (p.saga_id) } }
        div class=(class) id="position" {
            dl {
                dt { "Kind" } dd { (p.position.mode) }
                dt { "Now" } dd id="now" { (p.position.now) }
                dt { "Held by" } dd { (p.position.service.as_deref().unwrap_or("-")) }
                dt { "Last activity" } dd {
                    (when_or_dash(p.position.last_activity_at))
                    @if let Some(quiet) = p.position.quiet_seconds { " (" (span(quiet)) " ago)" }
                }
                dt { "Next" } dd id="next" {
                    @if p.position.stuck { span.bad { "STUCK: " } }
                    (p.position.next)
                }
            }
        }
        (actions(viewer, p, &return_to))
        h2 { "Services" }
        p {
            @for t in p.traces {
                @if let Some(error) = &t.error {
                    span.bad { (t.service) ": " (error) } " · "
                } @else if t.knows_it() {
                    strong { (t.service) } ": " (t.outbox.len()) " sent, " (t.inbox.len()) " taken"
                    @if !t.dead_letters.is_empty() { ", " span.bad { (t.dead_letters.len()) " dead letter(s)" } }
                    @if t.orchestrated.is_some() { ", orchestrator" }
                    " · "
                } @else {
                    span.muted { (t.service) ": nothing" } " · "
                }
            }
        }
        h2 { "Timeline (" (p.timeline.len()) " records, oldest first)" }
        @if p.traces.iter().any(|t| t.cut) {
            p.bad { "Only the latest " (crate::console::read::records::PER_KIND_LIMIT) " records of each kind per service are shown." }
        }
        table id="timeline" {
            tr { th { "time" } th { "service" } th { "what" } th { "step" } th { "state" } th { "detail" } }
            @for e in p.timeline {
                tr class=[e.trouble.then_some("trouble")] {
                    td { (when(e.at)) }
                    td.service { (e.service) }
                    td { (e.kind.label()) }
                    td.step { (e.step.as_deref().unwrap_or("")) }
                    td { (e.state.as_deref().unwrap_or("")) }
                    td.detail { (e.detail) }
                }
            }
        }
    };
    page(&format!("Saga {}", p.saga_id), viewer, body)
}

/// Abort or retry (orchestrated), send back a dead letter, retry a parked row.
fn actions(viewer: &Viewer, p: &SagaPage<'_>, return_to: &str) -> Markup {
    let orchestrator = p.traces.iter().find(|t| t.orchestrated.is_some());
    let dead: Vec<(&str, &crate::console::read::records::DeadLetterRecord)> = p
        .traces
        .iter()
        .flat_map(|t| {
            t.dead_letters
                .iter()
                .filter(|d| d.state == "dead")
                .map(move |d| (t.service.as_str(), d))
        })
        .collect();
    let parked: Vec<(&str, &crate::console::read::records::OutboxRecord)> = p
        .traces
        .iter()
        .flat_map(|t| {
            t.outbox
                .iter()
                .filter(|r| r.state == "dead")
                .map(move |r| (t.service.as_str(), r))
        })
        .collect();
    if orchestrator.is_none() && dead.is_empty() && parked.is_empty() {
        return html! {};
    }
    html! {
        h2 { "Actions" }
        @if !viewer.actions_enabled {
            p.muted { "Actions are off: the console has no token (CONSOLE_TOKEN)." }
        } @else if let Some(login) = &viewer.login {
            @if let Some(t) = orchestrator {
                @let service = query_value(&t.service);
                @let id = query_value(p.saga_id);
                @let state = t.orchestrated.as_ref().map(|v| v.instance.state);
                @if state.is_some_and(|s| OperatorRequest::Abort.applies_in().contains(&s)) {
                    form.act method="post" action={ "/actions/saga-abort?service=" (service) "&saga_id=" (id) } {
                        (action_fields(login, return_to)) button type="submit" id="abort" { "Abort (compensate)" }
                    }
                }
                @if state.is_some_and(|s| OperatorRequest::Retry.applies_in().contains(&s)) {
                    form.act method="post" action={ "/actions/saga-retry?service=" (service) "&saga_id=" (id) } {
                        (action_fields(login, return_to)) button type="submit" id="retry" { "Retry compensation" }
                    }
                }
            }
            @for (service, d) in &dead {
                div {
                    form.act method="post" action={ "/actions/dead-letter-send-back?service=" (query_value(service)) "&id=" (d.id) } {
                        (action_fields(login, return_to))
                        button type="submit" class="send-back" { "Send back dead letter " (d.id) " to " (d.queue) }
                    }
                    " " a href={ "/dead-letters/" (query_value(service)) "/" (d.id) } { "show it" }
                }
            }
            @for (service, r) in &parked {
                div {
                    form.act method="post" action={ "/actions/outbox-retry?service=" (query_value(service)) "&id=" (r.id) } {
                        (action_fields(login, return_to))
                        button type="submit" class="retry-row" { "Retry parked row " (r.step) " in " (service) }
                    }
                }
            }
        } @else {
            p { a href="/login" { "Log in" } " with the console's token to abort, retry or send back." }
        }
    }
}
