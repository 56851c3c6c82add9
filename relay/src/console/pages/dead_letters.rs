//! Consumers' dead letters: listed by service, queue or saga id, and one shown whole
//! with what sends it back. Rows come as the JSON that `outbox-relay dead-letters
//! ... --json` prints, so the page and the CLI show the same fields.

use maud::{Markup, html};
use serde_json::Value;

use super::layout::{Viewer, action_fields, page, query_value, saga_link};

/// A dead letter and the service whose database holds it.
pub(crate) struct Listed {
    pub(crate) service: String,
    pub(crate) row: Value,
}

fn text(row: &Value, field: &str) -> String {
    match &row[field] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn list(
    viewer: &Viewer,
    filter_text: &str,
    rows: &[Listed],
    errors: &[String],
) -> Markup {
    let body = html! {
        h1 { "Dead letters" @if !filter_text.is_empty() { " (" (filter_text) ")" } }
        @for e in errors { p.bad { (e) } }
        form method="get" action="/dead-letters" {
            input type="text" name="service" placeholder="service";
            input type="text" name="queue" placeholder="queue";
            input type="text" name="saga_id" placeholder="saga id";
            label { input type="checkbox" name="all" value="1"; " with those sent back" }
            button type="submit" { "List" }
        }
        @if rows.is_empty() {
            p.muted { "None." }
        } @else {
            table id="dead-letters" {
                tr { th { "id" } th { "service" } th { "queue" } th { "saga id" } th { "step" } th { "attempts" } th { "reason" } th { "dead at" } th { "state" } }
                @for l in rows {
                    @let id = text(&l.row, "id");
                    tr class=[(text(&l.row, "state") == "dead").then_some("trouble")] {
                        td { a href={ "/dead-letters/" (query_value(&l.service)) "/" (id) } { (id) } }
                        td { (l.service) }
                        td { (text(&l.row, "queue")) }
                        td { @let saga = text(&l.row, "saga_id"); a href=(saga_link(&saga)) { (saga) } }
                        td { (text(&l.row, "step")) }
                        td { (text(&l.row, "attempts")) }
                        td.detail { (text(&l.row, "reason")) }
                        td { (text(&l.row, "dead_at")) }
                        td { (text(&l.row, "state")) }
                    }
                }
            }
        }
    };
    page("Dead letters", viewer, body)
}

pub(crate) fn show(viewer: &Viewer, service: &str, row: &Value) -> Markup {
    let id = text(row, "id");
    let queue = text(row, "queue");
    let return_to = format!("/dead-letters/{}/{}", query_value(service), id);
    let body = html! {
        h1 { "Dead letter " (id) " of " (service) }
        table id="dead-letter" {
            @if let Value::Object(fields) = row {
                @for (name, value) in fields {
                    tr {
                        th { (name) }
                        td.detail {
                            @match value {
                                Value::String(s) => (s),
                                Value::Null => "",
                                Value::Object(_) | Value::Array(_) => pre { (serde_json::to_string_pretty(value).unwrap_or_default()) },
                                other => (other.to_string()),
                            }
                        }
                    }
                }
            }
        }
        @if text(row, "state") == "dead" {
            @if !viewer.actions_enabled {
                p.muted { "Actions are off: the console has no token (CONSOLE_TOKEN)." }
            } @else if let Some(login) = &viewer.login {
                form.act method="post" action={ "/actions/dead-letter-send-back?service=" (query_value(service)) "&id=" (id) } {
                    (action_fields(login, &return_to)) button type="submit" id="send-back" { "Send it back to " (queue) }
                }
                form.act method="post" action={ "/actions/dead-letter-send-back?service=" (query_value(service)) "&queue=" (query_value(&queue)) } {
                    (action_fields(login, &return_to)) button type="submit" id="send-back-all" { "Send back all of " (queue) ".dead" }
                }
            } @else {
                p { a href="/login" { "Log in" } " to send it back." }
            }
        }
    };
    page(&format!("Dead letter {id}"), viewer, body)
}
