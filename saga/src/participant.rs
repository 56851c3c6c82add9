//! The services that execute a saga's commands: a handler per command, run through
//! the inbox, whose reply goes back to the orchestrator through the outbox in the
//! same transaction.
//!
//! ```rust,no_run
//! use txoutbox_inbox::{BoxError, Consumer, ConsumerConfig, Context};
//! use txoutbox_saga::participant::{SagaCommands, Verdict};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Charge { order_id: i64, amount_cents: i64 }
//!
//! async fn charge(mut ctx: Context<'_>, cmd: Charge) -> Result<Verdict<serde_json::Value>, BoxError> {
//!     if cmd.amount_cents > 100_000 {
//!         return Ok(Verdict::Declined("over the card limit".into())); // replied as a failure
//!     }
//!     sqlx::query("INSERT INTO charges (order_id, cents) VALUES ($1, $2)")
//!         .bind(cmd.order_id).bind(cmd.amount_cents).execute(ctx.db()).await?;
//!     Ok(Verdict::Done(serde_json::json!({ "charged": cmd.amount_cents }))) // merged into the saga's data
//! }
//!
//! async fn refund(mut ctx: Context<'_>, cmd: Charge) -> Result<(), BoxError> {
//!     sqlx::query("DELETE FROM charges WHERE order_id = $1").bind(cmd.order_id).execute(ctx.db()).await?;
//!     Ok(())
//! }
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConsumerConfig::new("payment").bind("events", "payment.*");
//! let payments = Consumer::new(pool, "amqp://127.0.0.1:5672/%2f", "payment", config)
//!     .action("payment.charge", charge)
//!     .compensation("payment.refund", refund)
//!     .spawn()?;
//! # Ok(()) }
//! ```
//!
//! What the helper guarantees, per `saga_id` and command:
//! - An action takes effect at most once, however often it is delivered or resent, and
//!   every delivery is answered with the same reply.
//! - A compensation that arrives before its action (the action timed out at the
//!   orchestrator, then came late) fences it: the action will never take effect, and
//!   the compensation has nothing to undo. So does a compensation of an action that
//!   was declined.
//! - A compensation that fails (returns an error) rolls back and is retried by the
//!   consumer; the orchestrator resends it after its timeout, up to its attempts.
//! - An action that arrives after its deadline (the `x-saga-deadline` header) is not
//!   run: it is answered as fenced, since the orchestrator has stopped waiting for it
//!   and is compensating or cancelling it.
//! - A compensation registered with
//!   [`compensation_with_result`](SagaCommands::compensation_with_result) gets the
//!   result its action recorded, even when the orchestrator compensated the step
//!   before that result reached it (a timeout, a sibling's decline in a group).
//! - Every action also answers `{command}.cancel`, which the orchestrator sends for a
//!   step that has no compensation when its action times out: the action is fenced
//!   if it has not run, and the reply is its outcome either way.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use txoutbox::wire::step_route;
use txoutbox_inbox::{BoxError, Consumer, Context, Envelope, Handler, Reject};

use crate::effects::{self, Claim};
use crate::wire::{self, Reply};

/// What an action decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<R> {
    /// It took effect; `R` is merged into the saga's data.
    Done(R),
    /// It refuses, for this reason (a payment declined): a business answer, recorded
    /// like an effect, replied as a failure. The orchestrator compensates the steps
    /// before it.
    Declined(String),
}

/// Registers saga command handlers on a [`Consumer`].
pub trait SagaCommands: Sized {
    /// Handles action `command` with `handler`, an
    /// `async fn(Context<'_>, T) -> Result<Verdict<R>, E>`. An error `E` (or a panic)
    /// rolls back and is retried by the consumer; it is not a reply.
    fn action<H, T, R, E>(self, command: &str, handler: H) -> Self
    where
        H: for<'a> Handler<'a, T, Verdict<R>, E>,
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<BoxError> + Send + 'static;

    /// Handles compensation `command` with `handler`, an
    /// `async fn(Context<'_>, T) -> Result<(), E>`, called only when its action took
    /// effect. An error rolls back and is retried.
    fn compensation<H, T, E>(self, command: &str, handler: H) -> Self
    where
        H: for<'a> Handler<'a, T, (), E>,
        T: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + Send + 'static;

    /// Handles compensation `command` with `handler`, an
    /// `async fn(Context<'_>, Compensation<T, R>) -> Result<(), E>`, called only when
    /// its action took effect, with what the action returned in its `Verdict::Done`
    /// as this participant recorded it.
    ///
    /// Use it when the undo needs the action's result (the reservation's id). The
    /// command's payload is built from the saga's data when the compensation is sent,
    /// and that data may not hold the result yet: a step of a parallel group is
    /// compensated as soon as a sibling declines, and a timed-out step at its
    /// deadline, whether or not its reply has reached the orchestrator. The result
    /// recorded here is there whenever the action ran.
    ///
    /// A recorded result that does not deserialize into `R` (the action's handler
    /// changed what it returns) rejects the compensation, dead-lettered with the
    /// reason, and nothing is undone or recorded.
    fn compensation_with_result<H, T, R, E>(self, command: &str, handler: H) -> Self
    where
        H: for<'a> Handler<'a, Compensation<T, R>, (), E>,
        T: DeserializeOwned + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + Send + 'static;
}

/// What a compensation registered with [`SagaCommands::compensation_with_result`] is
/// given.
#[derive(Debug, Clone, PartialEq)]
pub struct Compensation<T, R> {
    /// The compensation's payload, as the saga definition built it from its data.
    pub command: T,
    /// The action's result, as this participant recorded it when the action ran.
    pub result: R,
}

/// A handler with the consumer's name, under which its effects are recorded.
struct Route<H> {
    handler: H,
    consumer: String,
}

/// The cancel of an action: which action, and whose record to read.
struct Cancel {
    action: String,
    consumer: String,
}

impl SagaCommands for Consumer {
    fn action<H, T, R, E>(self, command: &str, handler: H) -> Self
    where
        H: for<'a> Handler<'a, T, Verdict<R>, E>,
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let route = Arc::new(Route {
            handler,
            consumer: self.name().to_owned(),
        });
        let cancel = Arc::new(Cancel {
            action: command.to_owned(),
            consumer: self.name().to_owned(),
        });
        self.on_with(command, route, run_action::<H, T, R, E>)
            .on_with(format!("{command}.cancel"), cancel, run_cancel)
    }

    fn compensation<H, T, E>(self, command: &str, handler: H) -> Self
    where
        H: for<'a> Handler<'a, T, (), E>,
        T: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let route = Arc::new(Route {
            handler,
            consumer: self.name().to_owned(),
        });
        self.on_with(command, route, run_compensation::<H, T, E>)
    }

    fn compensation_with_result<H, T, R, E>(self, command: &str, handler: H) -> Self
    where
        H: for<'a> Handler<'a, Compensation<T, R>, (), E>,
        T: DeserializeOwned + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let route = Arc::new(Route {
            handler,
            consumer: self.name().to_owned(),
        });
        self.on_with(command, route, run_compensation_with_result::<H, T, R, E>)
    }
}

async fn run_action<H, T, R, E>(
    mut ctx: Context<'_>,
    payload: T,
    route: Arc<Route<H>>,
) -> Result<Reply, BoxError>
where
    H: for<'a> Handler<'a, T, Verdict<R>, E>,
    R: Serialize,
    E: Into<BoxError>,
{
    let envelope = ctx.envelope();
    let command = step_route(&envelope.step);
    let reply_to = reply_to(&ctx)?;
    let reply = match effects::claim(ctx.db(), &route.consumer, &envelope.saga_id, command).await? {
        Claim::Answered(reply) => reply,
        Claim::First if let Some(late_ms) = past_deadline(&ctx) => {
            // The orchestrator stopped waiting: it compensates or cancels this action.
            // Not running it spares an effect and its undo; recording the refusal
            // makes every later copy, and the compensation, read the same.
            let reply = Reply {
                succeeded: false,
                result: None,
                reason: Some(format!(
                    "fenced: arrived {late_ms} ms after its deadline, so it was not run"
                )),
            };
            effects::record(
                ctx.db(),
                &route.consumer,
                &envelope.saga_id,
                command,
                &reply,
            )
            .await?;
            reply
        }
        Claim::First => {
            let verdict = route
                .handler
                .call(Context::new(envelope, ctx.db()), payload)
                .await
                .map_err(Into::into)?;
            let reply = match verdict {
                Verdict::Done(result) => Reply {
                    succeeded: true,
                    result: Some(serde_json::to_value(result)?),
                    reason: None,
                },
                Verdict::Declined(reason) => Reply {
                    succeeded: false,
                    result: None,
                    reason: Some(reason),
                },
            };
            effects::record(
                ctx.db(),
                &route.consumer,
                &envelope.saga_id,
                command,
                &reply,
            )
            .await?;
            reply
        }
    };
    send_reply(&mut ctx, &reply_to, &reply).await?;
    Ok(reply)
}

async fn run_compensation<H, T, E>(
    mut ctx: Context<'_>,
    payload: T,
    route: Arc<Route<H>>,
) -> Result<Reply, BoxError>
where
    H: for<'a> Handler<'a, T, (), E>,
    E: Into<BoxError>,
{
    let reply_to = reply_to(&ctx)?;
    let envelope = ctx.envelope();
    let reply = match undoing(&mut ctx, &route.consumer).await? {
        Undoing::Answered(reply) => reply,
        Undoing::Nothing(why) => undone(&mut ctx, &route.consumer, Some(why)).await?,
        Undoing::Effect(_) => {
            route
                .handler
                .call(Context::new(envelope, ctx.db()), payload)
                .await
                .map_err(Into::into)?;
            undone(&mut ctx, &route.consumer, None).await?
        }
    };
    send_reply(&mut ctx, &reply_to, &reply).await?;
    Ok(reply)
}

async fn run_compensation_with_result<H, T, R, E>(
    mut ctx: Context<'_>,
    payload: T,
    route: Arc<Route<H>>,
) -> Result<Reply, BoxError>
where
    H: for<'a> Handler<'a, Compensation<T, R>, (), E>,
    R: DeserializeOwned,
    E: Into<BoxError>,
{
    let reply_to = reply_to(&ctx)?;
    let envelope = ctx.envelope();
    let reply = match undoing(&mut ctx, &route.consumer).await? {
        Undoing::Answered(reply) => reply,
        Undoing::Nothing(why) => undone(&mut ctx, &route.consumer, Some(why)).await?,
        Undoing::Effect(result) => {
            let result = recorded_result::<R>(envelope, result)?;
            let compensation = Compensation {
                command: payload,
                result,
            };
            route
                .handler
                .call(Context::new(envelope, ctx.db()), compensation)
                .await
                .map_err(Into::into)?;
            undone(&mut ctx, &route.consumer, None).await?
        }
    };
    send_reply(&mut ctx, &reply_to, &reply).await?;
    Ok(reply)
}

/// Where a compensation stands before its handler would run.
enum Undoing {
    /// It was answered before: the same reply again.
    Answered(Reply),
    /// Its action took no effect (it never ran, and now never will; or it declined).
    Nothing(&'static str),
    /// Its action took effect and returned this: the handler undoes it.
    Effect(Option<serde_json::Value>),
}

/// Claims the compensation and fences its action, in the handler's transaction.
async fn undoing(ctx: &mut Context<'_>, consumer: &str) -> Result<Undoing, BoxError> {
    let envelope = ctx.envelope();
    let command = step_route(&envelope.step);
    let Some(action) = envelope.header_str(wire::COMPENSATES_HEADER) else {
        return Err(Reject::new(format!(
            "{command} names no action to compensate ({})",
            wire::COMPENSATES_HEADER
        ))
        .into());
    };
    let saga_id = &envelope.saga_id;
    if let Claim::Answered(reply) = effects::claim(ctx.db(), consumer, saga_id, command).await? {
        return Ok(Undoing::Answered(reply));
    }
    Ok(
        match effects::fence(ctx.db(), consumer, saga_id, action).await? {
            None => Undoing::Nothing("nothing to undo: its action never ran, and now never will"),
            Some(action) if !action.succeeded => {
                Undoing::Nothing("nothing to undo: its action took no effect")
            }
            Some(action) => Undoing::Effect(action.result),
        },
    )
}

/// Records the compensation's reply: done, with why nothing was undone if so.
async fn undone(
    ctx: &mut Context<'_>,
    consumer: &str,
    nothing: Option<&str>,
) -> Result<Reply, BoxError> {
    let envelope = ctx.envelope();
    let reply = Reply {
        succeeded: true,
        result: None,
        reason: nothing.map(str::to_owned),
    };
    let command = step_route(&envelope.step);
    effects::record(ctx.db(), consumer, &envelope.saga_id, command, &reply).await?;
    Ok(reply)
}

/// The action's recorded result as the compensation's handler reads it. One that
/// does not fit is a message to park with the reason, not an error to retry: the
/// record will not change.
fn recorded_result<R: DeserializeOwned>(
    envelope: &Envelope,
    result: Option<serde_json::Value>,
) -> Result<R, Reject> {
    serde_json::from_value(result.unwrap_or_default()).map_err(|error| {
        let action = envelope
            .header_str(wire::COMPENSATES_HEADER)
            .unwrap_or_default();
        Reject::new(format!(
            "the recorded result of {action} does not read as this compensation expects: {error}"
        ))
    })
}

/// A cancel, for a step without a compensation whose action timed out: fences the
/// action if it has not run, and answers with its outcome either way. The reply is
/// the action's own (a success with its result, or a failure), so the orchestrator
/// goes on or compensates exactly as if the action's reply had come.
async fn run_cancel(
    mut ctx: Context<'_>,
    _payload: serde::de::IgnoredAny,
    cancel: Arc<Cancel>,
) -> Result<Reply, BoxError> {
    let reply_to = reply_to(&ctx)?;
    let saga_id = &ctx.envelope().saga_id;
    let reply = effects::fence(ctx.db(), &cancel.consumer, saga_id, &cancel.action)
        .await?
        .unwrap_or_else(|| Reply {
            succeeded: false,
            result: None,
            reason: Some("cancelled: the action never ran, and now never will".to_owned()),
        });
    send_reply(&mut ctx, &reply_to, &reply).await?;
    Ok(reply)
}

/// How long after its deadline an action arrived, if it did.
fn past_deadline(ctx: &Context<'_>) -> Option<u128> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    late_by(ctx.envelope().header_str(wire::DEADLINE_HEADER), now)
}

/// Milliseconds from the `deadline` header's value to `now_ms`, if `now_ms` is past
/// it. A missing or unreadable deadline (an older orchestrator, a hand-made message)
/// is never late: the action runs, as it did before deadlines were sent.
fn late_by(deadline: Option<&str>, now_ms: u128) -> Option<u128> {
    let deadline: u128 = deadline?.trim().parse().ok()?;
    now_ms.checked_sub(deadline).filter(|late| *late > 0)
}

/// Where the orchestrator wants the reply: a command without it is not a saga's.
fn reply_to(ctx: &Context<'_>) -> Result<String, Reject> {
    ctx.envelope()
        .header_str(wire::REPLY_TO_HEADER)
        .map(str::to_owned)
        .ok_or_else(|| {
            Reject::new(format!(
                "not a saga command: no {} header",
                wire::REPLY_TO_HEADER
            ))
        })
}

/// The reply, through the outbox, in the handler's transaction.
async fn send_reply(ctx: &mut Context<'_>, reply_to: &str, reply: &Reply) -> Result<(), BoxError> {
    let step = wire::reply_step(&ctx.envelope().step);
    let message = ctx.message(step, reply_to).payload(reply)?;
    ctx.enqueue(&message).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::late_by;

    #[test]
    fn only_a_readable_deadline_that_passed_makes_an_action_late() {
        assert_eq!(late_by(Some("1000"), 1_500), Some(500));
        assert_eq!(late_by(Some("1000"), 1_000), None);
        assert_eq!(late_by(Some("2000"), 1_000), None);
        for unreadable in [
            "",
            "soon",
            "-5",
            "1e3",
            "99999999999999999999999999999999999999999",
        ] {
            assert_eq!(late_by(Some(unreadable), 1_000), None, "{unreadable:?}");
        }
        assert_eq!(late_by(None, 1_000), None);
    }
}
