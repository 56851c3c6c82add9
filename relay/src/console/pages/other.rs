//! The small pages: login, search results, parked rows, and the answer to an action.

use maud::{Markup, html};
use serde_json::Value;

use super::layout::{Viewer, action_fields, page, query_value, saga_link};
use crate::console::read::search::Match;

pub(crate) fn login(viewer: &Viewer, failed: bool) -> Markup {
    let body = html! {
        h1 { "Log in to act" }
        @if !viewer.actions_enabled {
            p { "Actions are off: the console was started without a token (CONSOLE_TOKEN or --token-file)." }
        } @else {
            @if failed { p.bad { "That is not the console's token." } }
            form method="post" action="/login" {
                label { "Token " input type="password" name="token" id="token" autocomplete="current-password" required; }
                " " button type="submit" id="log-in" { "Log in" }
            }
        }
    };
    page("Log in", viewer, body)
}

pub(crate) fn search(viewer: &Viewer, query: &str, matches: &[Match], errors: &[String]) -> Markup {
    let body = html! {
        h1 { "Sagas matching " (query) }
        @for e in errors { p.bad { (e) } }
        @if matches.is_empty() {
            p.muted { "No service has a saga id starting with this." }
        } @else {
            table id="matches" {
                tr { th { "saga id" } th { "services" } }
                @for m in matches {
                    tr { td { a href=(saga_link(&m.saga_id)) { (m.saga_id) } } td { (m.services.join(", ")) } }
                }
            }
        }
    };
    page("Search", viewer, body)
}

/// Parked outbox rows, by service, with a retry each.
pub(crate) fn parked(viewer: &Viewer, rows: &[(String, Value)], errors: &[String]) -> Markup {
    let field = |row: &Value, name: &str| match &row[name] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let body = html! {
        h1 { "Parked outbox rows" }
        @for e in errors { p.bad { (e) } }
        @if rows.is_empty() {
            p.muted { "None." }
        } @else {
            table id="parked" {
                tr { th { "service" } th { "saga id" } th { "step" } th { "attempts" } th { "last error" } th {} }
                @for (service, row) in rows {
                    tr.trouble {
                        td { (service) }
                        td { @let saga = field(row, "saga_id"); a href=(saga_link(&saga)) { (saga) } }
                        td { (field(row, "step")) }
                        td { (field(row, "attempts")) }
                        td.detail { (field(row, "last_error")) }
                        td {
                            @if let Some(login) = &viewer.login {
                                form.act method="post" action={ "/actions/outbox-retry?service=" (query_value(service)) "&id=" (field(row, "id")) } {
                                    (action_fields(login, "/parked")) button type="submit" { "Retry" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Parked rows", viewer, body)
}

/// The answer to an action: what was done, or why not.
pub(crate) fn notice(viewer: &Viewer, ok: bool, message: &str, back: &str) -> Markup {
    let body = html! {
        div class=(if ok { "flash" } else { "flash error" }) id="notice" { (message) }
        p { a href=(back) id="back" { "Back" } }
    };
    page(if ok { "Done" } else { "Refused" }, viewer, body)
}

/// A page that is not there.
pub(crate) fn not_found(viewer: &Viewer, what: &str) -> Markup {
    page(
        "Not found",
        viewer,
        html! { h1 { "Not found" } p { (what) } },
    )
}
