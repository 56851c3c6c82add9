//! Events delivered to sagas: a payment provider's webhook, a person's approval, a
//! parcel scanned at the depot. Each is recorded in `saga_signal` with what became of
//! it; the saga's step that waits for it takes it, merging its payload into the
//! saga's data, now or when the saga gets there.

use serde::Serialize;
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::engine::{Locked, apply_once, definition_of, lock};
use crate::error::{Error, Result};
use crate::mover::{Brought, Line, Offer, offer as offer_signal};
use crate::registry::{Definition, Registry};
use crate::state::SagaState;
use crate::transition::Event;

/// What became of an event delivered to a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signaled {
    /// Recorded: the saga's step that waits for it takes it, at the next sweep of an
    /// orchestrator (every 500 ms by default) or when the saga reaches that step.
    Kept,
    /// Taken by the step that waited for it; the saga moved on.
    Taken,
    /// Recorded and not taken, for this reason: the saga has finished, is being
    /// compensated, or is past the step that waited for it.
    Ignored(String),
    /// Recorded and refused, for this reason: none of the saga's steps waits for this
    /// event, or its payload does not fit the saga's data. Only an event that came as
    /// a message is answered so (and dead-lettered); [`signal`] answers `Kept`, and
    /// the refusal is in `saga_signal` and the history.
    Refused(String),
}

/// Delivers event `event` with `payload` to saga `saga_id`, in the caller's
/// transaction: it commits with the caller's own change, or not at all.
///
/// An event that comes before the saga reaches the step waiting for it is kept for
/// that step. One for a saga that has finished or is compensating is recorded and
/// ignored, with the reason (also in the saga's history). One for a saga that does
/// not exist is [`Error::NotFound`]. Called twice with the same event, the step takes
/// it once. The same event arriving as a message through the orchestrator's inbox
/// (see [`Orchestrator`](crate::Orchestrator)) is taken at once.
pub async fn signal<P: Serialize>(
    conn: &mut PgConnection,
    saga_id: &str,
    event: &str,
    payload: &P,
) -> Result<Signaled> {
    let payload = serde_json::to_value(payload).map_err(Error::Data)?;
    Ok(record(conn, saga_id, event, &payload, None).await?.0)
}

/// The most an event's payload may hold, as JSON. It is merged into the saga's data,
/// which every later move of the saga reads and writes again.
pub const MAX_EVENT_PAYLOAD: usize = 64 * 1024;

/// An event as it may be recorded: a name of 1 to 255 bytes, and a payload that can
/// merge into the saga's data (a JSON object, or null for none) of at most
/// [`MAX_EVENT_PAYLOAD`] bytes. Anything else is refused before it is written.
pub(crate) fn check_event(event: &str, payload: &serde_json::Value) -> Result<()> {
    if event.is_empty() || event.len() > 255 {
        return Err(Error::NotAnEvent(event.to_owned()));
    }
    let shape = match payload {
        serde_json::Value::Object(_) | serde_json::Value::Null => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
    };
    if let Some(shape) = shape {
        return Err(Error::BadEventPayload(format!(
            "the payload of event {event} is {shape}; it must be a JSON object (merged into the saga's data) or null"
        )));
    }
    let size = serde_json::to_vec(payload).map_or(0, |bytes| bytes.len());
    if size > MAX_EVENT_PAYLOAD {
        return Err(Error::BadEventPayload(format!(
            "the payload of event {event} is {size} bytes, over {MAX_EVENT_PAYLOAD}"
        )));
    }
    Ok(())
}

/// Records a signal and marks its saga for the next sweep, or settles it at once
/// when the saga cannot take it. Returns what became of it, and its id.
async fn record(
    conn: &mut PgConnection,
    saga_id: &str,
    event: &str,
    payload: &serde_json::Value,
    message_id: Option<&str>,
) -> Result<(Signaled, i64)> {
    check_event(event, payload)?;
    // One statement: the saga's row locked, its state read, and a saga that can
    // still take the event marked for the next sweep.
    let state: Option<String> = sqlx::query_scalar(
        "UPDATE saga_instance
         SET signal_at = CASE WHEN state = ANY($2) THEN coalesce(signal_at, now()) END
         WHERE saga_id = $1
         RETURNING state",
    )
    .bind(saga_id)
    .bind([SagaState::Pending.as_str(), SagaState::Running.as_str()])
    .fetch_optional(&mut *conn)
    .await?;
    let id = insert(conn, saga_id, event, payload, message_id).await?;
    let Some(state) = state.as_deref().and_then(SagaState::parse) else {
        settle(conn, id, "ignored: no saga with this id").await?;
        return Err(Error::NotFound(saga_id.to_owned()));
    };
    match state {
        SagaState::Pending | SagaState::Running => Ok((Signaled::Kept, id)),
        finished => {
            let why = format!("ignored: the saga is {finished}");
            settle(conn, id, &why).await?;
            let line = signal_line(event, state, &why);
            crate::history::append(conn, saga_id, &[line]).await?;
            Ok((Signaled::Ignored(why), id))
        }
    }
}

fn signal_line(event: &str, state: SagaState, outcome: &str) -> Line {
    Line {
        from_state: Some(state),
        detail: Some(format!("event {event}: {outcome}")),
        ..Line::new("signal")
    }
}

async fn insert(
    conn: &mut PgConnection,
    saga_id: &str,
    event: &str,
    payload: &serde_json::Value,
    message_id: Option<&str>,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO saga_signal (saga_id, name, payload, message_id) VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .bind(saga_id)
    .bind(event)
    .bind(Json(payload))
    .bind(message_id)
    .fetch_one(conn)
    .await?)
}

async fn settle(conn: &mut PgConnection, id: i64, outcome: &str) -> Result<()> {
    sqlx::query(
        "UPDATE saga_signal SET settled_at = clock_timestamp(), outcome = $2
         WHERE id = $1 AND settled_at IS NULL",
    )
    .bind(id)
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(())
}

/// Settles the events a saga that ended in `state` kept for steps it never reached.
/// Run only for definitions that wait for events: other sagas have none.
pub(crate) async fn settle_left(
    conn: &mut PgConnection,
    saga_id: &str,
    state: SagaState,
) -> Result<()> {
    sqlx::query(
        "UPDATE saga_signal SET settled_at = clock_timestamp(), outcome = $2
         WHERE saga_id = $1 AND settled_at IS NULL",
    )
    .bind(saga_id)
    .bind(format!(
        "ignored: the saga ended {state} before a step took it"
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// A signal waiting for its step.
#[derive(sqlx::FromRow)]
struct Kept {
    id: i64,
    name: String,
    payload: Json<serde_json::Value>,
    message_id: Option<String>,
}

/// Settles the signals of saga `saga_id` that can be settled now, oldest first:
/// taken by the step that waits for them, or refused. Returns what became of the
/// signal `watch`, if it was settled.
pub(crate) async fn settle_kept(
    conn: &mut PgConnection,
    registry: &Registry,
    saga_id: &str,
    watch: Option<i64>,
) -> Result<Option<Signaled>> {
    sqlx::query("UPDATE saga_instance SET signal_at = NULL WHERE saga_id = $1")
        .bind(saga_id)
        .execute(&mut *conn)
        .await?;
    let kept: Vec<Kept> = sqlx::query_as(
        "SELECT id, name, payload, message_id FROM saga_signal
         WHERE saga_id = $1 AND settled_at IS NULL ORDER BY id",
    )
    .bind(saga_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut watched = None;
    for signal in kept {
        // Taking one signal can take later ones of the list (a wait that leads to
        // another): those are settled already, and must not be offered again.
        let unsettled: bool =
            sqlx::query_scalar("SELECT settled_at IS NULL FROM saga_signal WHERE id = $1")
                .bind(signal.id)
                .fetch_one(&mut *conn)
                .await?;
        if !unsettled {
            continue;
        }
        let locked = lock(conn, saga_id).await?;
        let definition = match definition_of(registry, &locked) {
            Ok(definition) => definition,
            // The sweep's own path fails the saga; its signals wait with it.
            Err(_) => return Ok(None),
        };
        let (outcome, waiting) = offer(conn, &*definition, saga_id, &locked, &signal).await?;
        take_for_wait(conn, &*definition, saga_id, waiting).await?;
        if Some(signal.id) == watch {
            watched = outcome;
        }
    }
    Ok(watched)
}

/// A saga that just moved to the step waiting for `waiting` takes the oldest kept
/// signal of that name, if one came early; and so on while each move leads to
/// another wait whose event came.
pub(crate) async fn take_for_wait(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    mut waiting: Option<String>,
) -> Result<()> {
    while let Some(event) = waiting.take() {
        let kept: Option<Kept> = sqlx::query_as(
            "SELECT id, name, payload, message_id FROM saga_signal
             WHERE saga_id = $1 AND name = $2 AND settled_at IS NULL ORDER BY id LIMIT 1",
        )
        .bind(saga_id)
        .bind(&event)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(kept) = kept else {
            break;
        };
        let locked = lock(conn, saga_id).await?;
        waiting = offer(conn, definition, saga_id, &locked, &kept).await?.1;
    }
    Ok(())
}

/// Offers one kept signal to the saga: taken, refused, ignored, or still kept
/// (`None`) because the saga has not reached its step yet. Also returns the event
/// the saga waits for after it, if taking it led to another wait, or if its
/// payload was refused and the same step still waits.
async fn offer(
    conn: &mut PgConnection,
    definition: &dyn Definition,
    saga_id: &str,
    locked: &Locked,
    signal: &Kept,
) -> Result<(Option<Signaled>, Option<String>)> {
    let state = locked.state();
    let record = locked.record();
    let step = match offer_signal(definition, &record, &signal.name, &signal.payload.0) {
        Offer::Keep => return Ok((None, None)),
        Offer::Ignore(why) => {
            let why = not_taken(conn, saga_id, state, signal, why).await?;
            return Ok((Some(Signaled::Ignored(why)), None));
        }
        Offer::Refuse(why) => {
            let why = not_taken(conn, saga_id, state, signal, why).await?;
            return Ok((Some(Signaled::Refused(why)), None));
        }
        Offer::Misfit(why) => {
            let why = not_taken(conn, saga_id, state, signal, why).await?;
            return Ok((Some(Signaled::Refused(why)), Some(signal.name.clone())));
        }
        Offer::Take(step) => step,
    };
    let brought = Brought {
        message_id: signal.message_id.as_deref(),
        result: Some(&signal.payload.0),
    };
    let event = Event::Signal { step };
    let (_, waiting) = apply_once(conn, definition, saga_id, locked, &event, brought).await?;
    settle(conn, signal.id, &format!("taken by step {step}")).await?;
    Ok((Some(Signaled::Taken), waiting))
}

/// Settles a signal as not taken, with the reason, also in the saga's history.
async fn not_taken(
    conn: &mut PgConnection,
    saga_id: &str,
    state: SagaState,
    signal: &Kept,
    why: String,
) -> Result<String> {
    settle(conn, signal.id, &why).await?;
    let line = signal_line(&signal.name, state, &why);
    crate::history::append(conn, saga_id, &[line]).await?;
    Ok(why)
}

/// An event that came as a message through the orchestrator's inbox: recorded and
/// offered to its saga at once. An unknown saga, or an event none of its steps waits
/// for, is an error, for the consumer to dead-letter with the reason.
pub(crate) async fn deliver(
    conn: &mut PgConnection,
    registry: &Registry,
    saga_id: &str,
    event: &str,
    payload: &serde_json::Value,
    message_id: Option<&str>,
) -> Result<Signaled> {
    let (recorded, id) = record(conn, saga_id, event, payload, message_id).await?;
    if recorded != Signaled::Kept {
        return Ok(recorded);
    }
    match settle_kept(conn, registry, saga_id, Some(id)).await? {
        Some(Signaled::Refused(why)) => Err(Error::SignalRefused(why)),
        Some(outcome) => Ok(outcome),
        None => Ok(Signaled::Kept),
    }
}
