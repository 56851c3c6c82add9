//! The console's routes, and the headers every answer carries.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Redirect;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::state::{Console, cookie};
use super::{actions, login, views};

/// Nothing runs but what the binary serves: no script at all, styles from
/// `/console.css` only, forms posting back here only, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const STYLE: &str = include_str!("console.css");

pub(crate) fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(views::home))
        .route("/api/home", get(views::home_json))
        .route("/search", get(views::search))
        .route("/api/search", get(views::search_json))
        .route("/saga", get(views::saga))
        .route("/api/saga", get(views::saga_json))
        .route("/dead-letters", get(views::dead_letters))
        .route("/api/dead-letters", get(views::dead_letters_json))
        .route("/dead-letters/{service}/{id}", get(views::dead_letter))
        .route(
            "/api/dead-letters/{service}/{id}",
            get(views::dead_letter_json),
        )
        .route("/parked", get(views::parked))
        .route("/api/parked", get(views::parked_json))
        .route("/login", get(login::form).post(login::log_in))
        .route("/logout", post(login::log_out))
        .route("/actions/{action}", post(actions::act))
        .route("/console.css", get(style))
        .layer(middleware::from_fn_with_state(Arc::clone(&console), guard))
        .layer(middleware::from_fn(secure_headers))
        .with_state(console)
}

async fn style() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// Refuses what the console must not answer: on loopback, a request naming another
/// host (a web page that rebound its name to 127.0.0.1); beyond loopback, a page
/// asked for without a login (the login form and the style excepted).
async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if console.loopback && !names_loopback(headers.get(HOST).and_then(|h| h.to_str().ok())) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only to localhost, 127.0.0.1 or [::1]",
        )
            .into_response();
    }
    let path = request.uri().path();
    let open = matches!(path, "/login" | "/console.css");
    let authorization = headers.get(AUTHORIZATION).and_then(|h| h.to_str().ok());
    if open || console.gate.may_read(cookie(headers), authorization) {
        return next.run(request).await;
    }
    if path.starts_with("/api/") {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "log in: send Authorization: Bearer <token>" })),
        )
            .into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

/// True when the `Host` header names this machine's loopback, with any port.
fn names_loopback(host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1"
    )
}

async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::names_loopback;

    #[test]
    fn only_loopback_names_reach_a_loopback_console() {
        for host in [
            "localhost",
            "localhost:8480",
            "127.0.0.1:8480",
            "[::1]:8480",
            "LOCALHOST",
        ] {
            assert!(names_loopback(Some(host)), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8480",
            "127.0.0.1.evil.example",
            "[::2]:1",
        ] {
            assert!(!names_loopback(Some(host)), "{host}");
        }
        assert!(!names_loopback(None));
    }
}
