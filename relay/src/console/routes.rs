//! The console's routes, and the headers every answer carries.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::state::Console;
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
        .layer(middleware::from_fn(secure_headers))
        .with_state(console)
}

async fn style() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
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
