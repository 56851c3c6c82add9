//! The actions an operator takes from the console: abort or retry a saga, retry a
//! parked outbox row, send a dead letter back. Each needs a logged-in session, the
//! form's CSRF token and a reason; each is recorded with the reason (the saga's
//! history and `txoutbox_audit`).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use txoutbox_relay::audit::Action;

use super::pages;
use super::state::{Console, cookie};

/// Who the audit names for the console's actions.
const ACTOR: &str = "console";

/// What every action's form carries.
#[derive(Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    return_to: String,
}

/// What the action acts on.
#[derive(Deserialize)]
pub(crate) struct Target {
    service: String,
    saga_id: Option<String>,
    id: Option<String>,
    queue: Option<String>,
}

/// An action's answer: done, or refused with the status that says why.
type Outcome = Result<String, (StatusCode, String)>;

pub(crate) async fn act(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(action): Path<String>,
    Query(target): Query<Target>,
    Form(form): Form<ActionForm>,
) -> Response {
    let viewer = console.viewer(&headers);
    let back = safe_return(&form.return_to);
    let outcome = if !console.gate.actions_enabled() {
        Err((
            StatusCode::FORBIDDEN,
            "actions are off: the console has no token".to_owned(),
        ))
    } else if !console.gate.allows(cookie(&headers), &form.csrf) {
        Err((
            StatusCode::FORBIDDEN,
            "log in first: this action needs the console's token".to_owned(),
        ))
    } else if form.reason.trim().is_empty() {
        Err((
            StatusCode::BAD_REQUEST,
            "give a reason: it is recorded with the action".to_owned(),
        ))
    } else {
        carry_out(&console, &action, &target, form.reason.trim()).await
    };
    let (status, ok, message) = match outcome {
        Ok(message) => {
            tracing::info!(?action, service = ?target.service, %message, reason = ?form.reason.trim(), "console action");
            (StatusCode::OK, true, message)
        }
        Err((status, message)) => {
            tracing::warn!(?action, service = ?target.service, %message, "console action refused");
            (status, false, message)
        }
    };
    (
        status,
        Html(pages::other::notice(&viewer, ok, &message, &back).into_string()),
    )
        .into_response()
}

async fn carry_out(console: &Console, action: &str, target: &Target, reason: &str) -> Outcome {
    let Some(service) = console.service(&target.service) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no service named {}", target.service),
        ));
    };
    let pool = &service.pool;
    let refused = |e: &dyn std::fmt::Display| (StatusCode::CONFLICT, e.to_string());
    match action {
        "saga-abort" | "saga-retry" => {
            let saga_id = target
                .saga_id
                .as_deref()
                .ok_or((StatusCode::BAD_REQUEST, "no saga_id".to_owned()))?;
            let kind = if action == "saga-abort" {
                txoutbox_saga::admin::request_abort(pool, saga_id, reason)
                    .await
                    .map_err(|e| refused(&e))?;
                Action::SagaAbort
            } else {
                txoutbox_saga::admin::request_retry(pool, saga_id)
                    .await
                    .map_err(|e| refused(&e))?;
                Action::SagaRetry
            };
            let done = format!(
                "{} of saga {saga_id} requested in {}: the next orchestrator sweep carries it out",
                if kind == Action::SagaAbort {
                    "abort"
                } else {
                    "retry"
                },
                service.name
            );
            let recorded =
                txoutbox_relay::audit::record(pool, kind, saga_id, Some(saga_id), reason, ACTOR)
                    .await;
            Ok(audited(recorded, done))
        }
        "outbox-retry" => {
            let id: uuid::Uuid = target.id.as_deref().and_then(|id| id.parse().ok()).ok_or((
                StatusCode::BAD_REQUEST,
                "id is not an outbox row id".to_owned(),
            ))?;
            let saga_id: Option<String> =
                sqlx::query_scalar("SELECT saga_id FROM outbox WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| refused(&e))?;
            txoutbox_relay::retry_dead(pool, id)
                .await
                .map_err(|e| refused(&e))?;
            let done = format!(
                "parked row {id} of {} has a fresh set of attempts",
                service.name
            );
            let target = id.to_string();
            let recorded = txoutbox_relay::audit::record(
                pool,
                Action::OutboxRetry,
                &target,
                saga_id.as_deref(),
                reason,
                ACTOR,
            )
            .await;
            Ok(audited(recorded, done))
        }
        "dead-letter-send-back" => {
            let Some(amqp_url) = console.amqp_url.as_deref() else {
                return Err((
                    StatusCode::CONFLICT,
                    "sending back needs the broker: start the console with AMQP_URL".to_owned(),
                ));
            };
            use txoutbox_relay::dead_letters::SendBack;
            let what = match (&target.id, &target.queue) {
                (Some(id), _) => SendBack::One(id.parse().map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        "id is not a dead letter id".to_owned(),
                    )
                })?),
                (None, Some(queue)) => SendBack::AllOf {
                    queue: queue.clone(),
                },
                (None, None) => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "name a dead letter (id) or a queue".to_owned(),
                    ));
                }
            };
            let report =
                txoutbox_relay::dead_letters::send_back(pool, amqp_url, what, reason, ACTOR)
                    .await
                    .map_err(|e| refused(&e))?;
            Ok(format!(
                "sent back to {}: {} message(s){}",
                report.queue,
                report.moved.len(),
                if report.bound_reached {
                    " (more wait in .dead: send back again)"
                } else {
                    ""
                }
            ))
        }
        other => Err((StatusCode::NOT_FOUND, format!("no action named {other}"))),
    }
}

/// An action's answer once it is done: its record in the audit failing does not undo
/// it, so the page says both.
fn audited(recorded: txoutbox_relay::Result<i64>, done: String) -> String {
    match recorded {
        Ok(_) => done,
        Err(error) => format!("{done}; but it is not recorded in txoutbox_audit: {error}"),
    }
}

/// Where "Back" leads: a path of this console, never another site.
fn safe_return(return_to: &str) -> String {
    let plain = !return_to
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\');
    if plain && return_to.starts_with('/') && !return_to.starts_with("//") {
        return_to.to_owned()
    } else {
        "/".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::safe_return;

    #[test]
    fn back_never_leads_off_the_console() {
        assert_eq!(safe_return("/saga?id=a"), "/saga?id=a");
        assert_eq!(safe_return("//evil.example/"), "/");
        assert_eq!(safe_return("https://evil.example/"), "/");
        assert_eq!(safe_return("/\\evil.example"), "/");
        assert_eq!(safe_return("/\t/evil.example"), "/");
        assert_eq!(safe_return("/\n/evil.example"), "/");
    }
}
