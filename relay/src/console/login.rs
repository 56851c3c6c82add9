//! The login form and logout: the token in, a session cookie out.

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::COOKIE;
use super::pages;
use super::state::{Console, cookie};

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    token: String,
}

pub(crate) async fn form(State(console): State<Arc<Console>>, headers: HeaderMap) -> Html<String> {
    Html(pages::other::login(&console.viewer(&headers), false).into_string())
}

pub(crate) async fn log_in(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    match console.gate.log_in(&form.token) {
        Some(session) => {
            tracing::info!("console: a session logged in");
            let cookie = format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict");
            ([(SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        None => {
            tracing::warn!("console: a login with a wrong token");
            let page =
                pages::other::login(&console.viewer(&headers), console.gate.actions_enabled());
            (StatusCode::FORBIDDEN, Html(page.into_string())).into_response()
        }
    }
}

pub(crate) async fn log_out(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    console.gate.log_out(cookie(&headers));
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(SET_COOKIE, expired)], Redirect::to("/")).into_response()
}
