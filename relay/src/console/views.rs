//! The read-only routes: each answers as HTML for people and, under `/api`, as JSON
//! for scripts, from the same data.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::pages;
use super::pages::dead_letters::Listed;
use super::pages::layout::saga_link;
use super::read::position::{self, Rules};
use super::read::stuck::StuckReport;
use super::read::{home, search, timeline, trace};
use super::services::{Service, unreadable};
use super::state::Console;

type Shared = State<Arc<Console>>;

/// Parked rows and dead letters listed per service.
const LISTED: i64 = 200;

async fn home_data(console: &Console) -> (Vec<home::ServiceSummary>, Option<StuckReport>) {
    let summaries =
        futures_util::future::join_all(console.services.iter().map(home::summary)).await;
    (summaries, console.stuck.read().await.clone())
}

pub(crate) async fn home(State(console): Shared, headers: HeaderMap) -> Html<String> {
    let (summaries, stuck) = home_data(&console).await;
    let viewer = console.viewer(&headers);
    Html(
        pages::home::render(&viewer, &summaries, stuck.as_ref(), console.stuck_after).into_string(),
    )
}

pub(crate) async fn home_json(State(console): Shared) -> Json<Value> {
    let (summaries, stuck) = home_data(&console).await;
    Json(json!({ "services": summaries, "stuck": stuck }))
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    q: String,
}

pub(crate) async fn search(
    State(console): Shared,
    headers: HeaderMap,
    Query(query): Query<SearchQuery>,
) -> Response {
    let q = query.q.trim();
    if q.is_empty() {
        return Redirect::to("/").into_response();
    }
    let (matches, errors) = search::by_prefix(&console.services, q).await;
    if matches.len() == 1 && matches[0].saga_id == q && errors.is_empty() {
        return Redirect::to(&saga_link(q)).into_response();
    }
    let viewer = console.viewer(&headers);
    Html(pages::other::search(&viewer, q, &matches, &errors).into_string()).into_response()
}

pub(crate) async fn search_json(
    State(console): Shared,
    Query(query): Query<SearchQuery>,
) -> Json<Value> {
    let (matches, errors) = search::by_prefix(&console.services, query.q.trim()).await;
    Json(json!({ "matches": matches, "errors": errors }))
}

#[derive(Deserialize)]
pub(crate) struct SagaQuery {
    id: String,
}

/// One saga: its traces, timeline and position.
struct SagaData {
    traces: Vec<trace::ServiceTrace>,
    timeline: Vec<timeline::Entry>,
    position: position::Position,
}

async fn saga_data(console: &Console, saga_id: &str) -> SagaData {
    let traces = trace::read(&console.services, saga_id).await;
    let timeline = timeline::merge(&traces);
    let rules = Rules {
        stuck_after: console.stuck_after,
        final_steps: &console.final_steps,
    };
    let position = position::locate(&traces, &timeline, &rules, Utc::now());
    SagaData {
        traces,
        timeline,
        position,
    }
}

pub(crate) async fn saga(
    State(console): Shared,
    headers: HeaderMap,
    Query(query): Query<SagaQuery>,
) -> Html<String> {
    let data = saga_data(&console, &query.id).await;
    let viewer = console.viewer(&headers);
    let page = pages::saga::SagaPage {
        saga_id: &query.id,
        position: &data.position,
        traces: &data.traces,
        timeline: &data.timeline,
    };
    Html(pages::saga::render(&viewer, &page).into_string())
}

pub(crate) async fn saga_json(
    State(console): Shared,
    Query(query): Query<SagaQuery>,
) -> Json<Value> {
    let data = saga_data(&console, &query.id).await;
    Json(json!({
        "saga_id": query.id,
        "position": data.position,
        "timeline": data.timeline,
        "services": data.traces,
    }))
}

#[derive(Deserialize, Default)]
pub(crate) struct DeadLetterQuery {
    service: Option<String>,
    queue: Option<String>,
    saga_id: Option<String>,
    all: Option<String>,
}

impl DeadLetterQuery {
    fn describe(&self) -> String {
        [
            ("service", &self.service),
            ("queue", &self.queue),
            ("saga id", &self.saga_id),
        ]
        .iter()
        .filter_map(|(name, value)| {
            value
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| format!("{name} {v}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
    }
}

fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

async fn dead_letter_data(
    console: &Console,
    query: &DeadLetterQuery,
) -> (Vec<Listed>, Vec<String>) {
    let wanted = given(&query.service);
    let filter = txoutbox_relay::dead_letters::DeadLetterFilter {
        queue: given(&query.queue),
        saga_id: given(&query.saga_id),
        consumer: None,
        include_sent_back: query.all.is_some(),
        limit: LISTED,
    };
    let filter = &filter;
    let reads = chosen(console, wanted.as_deref()).map(|service| async move {
        let found = txoutbox_relay::dead_letters::list(&service.pool, filter).await;
        (service, found)
    });
    let (rows, errors) = rows_and_errors(futures_util::future::join_all(reads).await);
    let rows = rows
        .into_iter()
        .map(|(service, row)| Listed { service, row })
        .collect();
    (rows, errors)
}

pub(crate) async fn dead_letters(
    State(console): Shared,
    headers: HeaderMap,
    Query(query): Query<DeadLetterQuery>,
) -> Html<String> {
    let (rows, errors) = dead_letter_data(&console, &query).await;
    let viewer = console.viewer(&headers);
    Html(pages::dead_letters::list(&viewer, &query.describe(), &rows, &errors).into_string())
}

pub(crate) async fn dead_letters_json(
    State(console): Shared,
    Query(query): Query<DeadLetterQuery>,
) -> Json<Value> {
    let (rows, errors) = dead_letter_data(&console, &query).await;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|l| json!({ "service": l.service, "dead_letter": l.row }))
        .collect();
    Json(json!({ "dead_letters": rows, "errors": errors }))
}

async fn one_dead_letter(
    console: &Console,
    service: &str,
    id: i64,
) -> Result<Value, (StatusCode, String)> {
    let Some(found) = console.service(service) else {
        return Err((StatusCode::NOT_FOUND, format!("no service named {service}")));
    };
    match txoutbox_relay::dead_letters::get(&found.pool, id).await {
        Ok(Some(row)) => Ok(serde_json::to_value(row).unwrap_or(Value::Null)),
        Ok(None) => Err((
            StatusCode::NOT_FOUND,
            format!("{service} has no dead letter {id}"),
        )),
        Err(error) => Err((StatusCode::BAD_GATEWAY, format!("{service}: {error}"))),
    }
}

pub(crate) async fn dead_letter(
    State(console): Shared,
    headers: HeaderMap,
    Path((service, id)): Path<(String, i64)>,
) -> Response {
    let viewer = console.viewer(&headers);
    match one_dead_letter(&console, &service, id).await {
        Ok(row) => {
            Html(pages::dead_letters::show(&viewer, &service, &row).into_string()).into_response()
        }
        Err((status, why)) => (
            status,
            Html(pages::other::not_found(&viewer, &why).into_string()),
        )
            .into_response(),
    }
}

pub(crate) async fn dead_letter_json(
    State(console): Shared,
    Path((service, id)): Path<(String, i64)>,
) -> Response {
    match one_dead_letter(&console, &service, id).await {
        Ok(row) => Json(json!({ "service": service, "dead_letter": row })).into_response(),
        Err((status, why)) => (status, Json(json!({ "error": why }))).into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct ParkedQuery {
    service: Option<String>,
}

async fn parked_data(
    console: &Console,
    query: &ParkedQuery,
) -> (Vec<(String, Value)>, Vec<String>) {
    let wanted = given(&query.service);
    let reads = chosen(console, wanted.as_deref()).map(|service| async move {
        (
            service,
            txoutbox_relay::dead_rows(&service.pool, LISTED).await,
        )
    });
    rows_and_errors(futures_util::future::join_all(reads).await)
}

/// The services a list reads: all, or the one `wanted`.
fn chosen<'a>(console: &'a Console, wanted: Option<&'a str>) -> impl Iterator<Item = &'a Service> {
    console
        .services
        .iter()
        .filter(move |s| wanted.is_none_or(|w| w == s.name))
}

/// What each service's read found, as JSON rows with their service's name; and the
/// services that could not be read. A service without the table has no rows, not an
/// error.
fn rows_and_errors<T: serde::Serialize>(
    found: Vec<(&Service, txoutbox_relay::Result<Vec<T>>)>,
) -> (Vec<(String, Value)>, Vec<String>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (service, read) in found {
        match read {
            Ok(found) => rows.extend(found.iter().map(|row| {
                let row = serde_json::to_value(row).unwrap_or(Value::Null);
                (service.name.clone(), row)
            })),
            Err(txoutbox_relay::Error::Database(error))
                if super::read::is_missing_table(&error) => {}
            Err(txoutbox_relay::Error::Database(error)) => {
                errors.push(format!("{}: {}", service.name, unreadable(&error)))
            }
            Err(error) => errors.push(format!("{}: {error}", service.name)),
        }
    }
    (rows, errors)
}

pub(crate) async fn parked(
    State(console): Shared,
    headers: HeaderMap,
    Query(query): Query<ParkedQuery>,
) -> Html<String> {
    let (rows, errors) = parked_data(&console, &query).await;
    let viewer = console.viewer(&headers);
    Html(pages::other::parked(&viewer, &rows, &errors).into_string())
}

pub(crate) async fn parked_json(
    State(console): Shared,
    Query(query): Query<ParkedQuery>,
) -> Json<Value> {
    let (rows, errors) = parked_data(&console, &query).await;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|(service, row)| json!({ "service": service, "row": row }))
        .collect();
    Json(json!({ "parked": rows, "errors": errors }))
}
