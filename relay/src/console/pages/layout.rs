//! The frame every page shares: the bar with the search box, and small helpers that
//! turn values into what a page shows. maud escapes every value it is given, so a
//! saga id or an error message from a database renders as text, never as markup.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::console::auth::Login;

/// What the frame needs to know about the viewer.
pub(crate) struct Viewer {
    pub(crate) login: Option<Login>,
    pub(crate) actions_enabled: bool,
}

/// A whole page.
pub(crate) fn page(title: &str, viewer: &Viewer, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · txoutbox console" }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    strong { a href="/" { "txoutbox console" } }
                    a href="/dead-letters" { "Dead letters" }
                    a href="/parked" { "Parked rows" }
                    @if viewer.actions_enabled {
                        @if viewer.login.is_some() {
                            form method="post" action="/logout" { button type="submit" { "Log out" } }
                        } @else {
                            a href="/login" { "Log in to act" }
                        }
                    }
                    form method="get" action="/search" {
                        input type="search" name="q" placeholder="saga id or its start" aria-label="saga id";
                        button type="submit" id="search" { "Find" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A time as every page writes it.
pub(crate) fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// An optional time, or a dash.
pub(crate) fn when_or_dash(at: Option<DateTime<Utc>>) -> String {
    at.map(when).unwrap_or_else(|| "-".to_owned())
}

/// Seconds as a person reads them: 42 s, 5 min, 3 h, 2 d.
pub(crate) fn span(seconds: f64) -> String {
    let s = seconds.max(0.0);
    match s {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7_200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3_600.0),
        s => format!("{:.1} d", s / 86_400.0),
    }
}

/// A query-string value, percent-encoded (everything but unreserved characters).
pub(crate) fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The link to a saga's page.
pub(crate) fn saga_link(saga_id: &str) -> String {
    format!("/saga?id={}", query_value(saga_id))
}

/// A form's hidden CSRF field and reason box: what every action carries.
pub(crate) fn action_fields(login: &Login, return_to: &str) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(login.csrf);
        input type="hidden" name="return_to" value=(return_to);
        input type="text" name="reason" required placeholder="reason (recorded)" aria-label="reason";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saga_link_carries_any_id_intact() {
        assert_eq!(saga_link("order-1"), "/saga?id=order-1");
        assert_eq!(saga_link("a b/&<x>"), "/saga?id=a%20b%2F%26%3Cx%3E");
    }

    #[test]
    fn spans_read_like_a_person_says_them() {
        assert_eq!(span(42.0), "42 s");
        assert_eq!(span(600.0), "10 min");
        assert_eq!(span(3.0 * 86_400.0), "3.0 d");
    }
}
