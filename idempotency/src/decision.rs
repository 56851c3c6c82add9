//! What becomes of a delivery once its handling is over: acked, retried later, or
//! dead-lettered. A pure function of what happened, the attempt and the config, so
//! every branch is tested here without a broker or a database.

use std::sync::Arc;
use std::time::Duration;

use crate::reject::Reject;

use crate::config::ConsumerConfig;
use crate::envelope::DecodeError;
use crate::error::Error;
use crate::handler::BoxError;

/// Why a delivery did not take effect. Its message is the dead reason, or the
/// error a retry records.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Not a message of the relay's envelope.
    #[error(transparent)]
    Undecodable(DecodeError),
    /// No handler is registered for the step.
    #[error("unknown step: {0}")]
    UnknownStep(String),
    /// The payload does not deserialize into the handler's payload type.
    #[error("payload does not fit the handler's type: {0}")]
    BadPayload(serde_json::Error),
    /// The handler returned an error, or panicked; its transaction rolled back.
    #[error("{0}")]
    Handler(BoxError),
    /// The inbox refused the message, and would again (an empty key, a result that
    /// is not JSON).
    #[error("{0}")]
    Refused(String),
    /// PostgreSQL failed around the handler (the key, the result, the commit). Shared:
    /// a failed commit is the failure of every delivery of the batch.
    #[error("database: {0}")]
    Database(Arc<sqlx::Error>),
}

impl From<Error<Failure>> for Failure {
    fn from(error: Error<Failure>) -> Self {
        match error {
            Error::Handler(failure) => failure,
            Error::Database(error) => Failure::Database(Arc::new(error)),
            refused @ (Error::InvalidKey(_) | Error::Result(_)) => {
                Failure::Refused(refused.to_string())
            }
        }
    }
}

/// What to do with a delivery. `attempts` is what the copy's `x-attempts` header
/// will say: handler runs that failed, this one included if it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It took effect (or had already): ack it.
    Ack,
    /// Try again after `delay`, through a retry queue.
    Retry {
        attempts: u32,
        delay: Duration,
        error: String,
    },
    /// Give up: to the dead-letter queue, with `reason`. `last_error` is the
    /// handler's error when a handler ran and failed (its dead letter's record keeps
    /// it apart from the reason, which may only summarise it).
    Dead {
        attempts: u32,
        reason: String,
        kind: DeadKind,
        last_error: Option<String>,
    },
}

/// Why a delivery was given up, as a class for metrics (the reason says the rest).
/// Its discriminant is its counter's index in [`DeadKind::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum DeadKind {
    /// Not a message of the relay's envelope (no saga id, not JSON, ...).
    Undecodable,
    /// No handler for its step.
    UnknownStep,
    /// Its payload does not fit the handler's type.
    BadPayload,
    /// The inbox refused its key or its result.
    Refused,
    /// The handler said no retry can help ([`Reject`]).
    Rejected,
    /// The handler failed on every attempt.
    AttemptsExhausted,
}

impl DeadKind {
    pub(crate) const ALL: [DeadKind; 6] = [
        DeadKind::Undecodable,
        DeadKind::UnknownStep,
        DeadKind::BadPayload,
        DeadKind::Refused,
        DeadKind::Rejected,
        DeadKind::AttemptsExhausted,
    ];

    /// Its `reason` label in `inbox_dead_lettered_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            DeadKind::Undecodable => "undecodable",
            DeadKind::UnknownStep => "unknown_step",
            DeadKind::BadPayload => "bad_payload",
            DeadKind::Refused => "refused",
            DeadKind::Rejected => "rejected",
            DeadKind::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

/// Decides the fate of attempt `attempt` (1 for a first delivery) of a message.
pub(crate) fn decide(
    outcome: Result<(), Failure>,
    attempt: u32,
    config: &ConsumerConfig,
) -> Decision {
    let untried = attempt.saturating_sub(1);
    let failure = match outcome {
        Ok(()) => return Decision::Ack,
        Err(failure) => failure,
    };
    let spends_attempt = match &failure {
        // Nothing about the message changes on a retry: dead at once.
        Failure::Undecodable(_) => return dead(DeadKind::Undecodable, untried, &failure),
        Failure::UnknownStep(_) => return dead(DeadKind::UnknownStep, untried, &failure),
        Failure::BadPayload(_) => return dead(DeadKind::BadPayload, untried, &failure),
        Failure::Refused(_) => return dead(DeadKind::Refused, attempt, &failure),
        // The handler says no retry can help.
        Failure::Handler(error) if error.downcast_ref::<Reject>().is_some() => {
            return dead(DeadKind::Rejected, attempt, &failure);
        }
        // The database, not the message, failed: retry without spending an attempt.
        // Around the handler that is any database error (the inbox's statements are
        // known to be good); inside it, one that says the connection was lost, or
        // that the transaction lost a deadlock or a serialization conflict to
        // another (handlers of two batches taking the same rows in other orders).
        Failure::Database(_) => false,
        Failure::Handler(error) => !error
            .downcast_ref::<sqlx::Error>()
            .is_some_and(|error| txoutbox::postgres::is_transient(error) || lost_a_conflict(error)),
    };
    if !spends_attempt {
        return Decision::Retry {
            attempts: untried,
            delay: config.retry_base,
            error: failure.to_string(),
        };
    }
    let error = failure.to_string();
    if attempt >= config.max_attempts {
        return Decision::Dead {
            attempts: attempt,
            reason: format!("handler failed {attempt} times; last: {error}"),
            kind: DeadKind::AttemptsExhausted,
            last_error: Some(error),
        };
    }
    Decision::Retry {
        attempts: attempt,
        delay: config.retry_delay(attempt),
        error,
    }
}

/// A deadlock (40P01) or a serialization failure (40001): PostgreSQL chose this
/// transaction to give way; the same statements pass when run again.
fn lost_a_conflict(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|error| error.code());
    matches!(code.as_deref(), Some("40P01" | "40001"))
}

fn dead(kind: DeadKind, attempts: u32, failure: &Failure) -> Decision {
    let reason = failure.to_string();
    // Of these, only a rejection comes from a handler that ran.
    let last_error = (kind == DeadKind::Rejected).then(|| reason.clone());
    Decision::Dead {
        attempts,
        reason,
        kind,
        last_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dead_kind_counts_at_its_own_index() {
        for (i, kind) in DeadKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind:?}");
        }
    }

    #[test]
    fn a_rejected_message_is_dead_at_once() {
        let config = ConsumerConfig::new("q");
        let failure = Failure::Handler(Box::new(Reject::new("no such saga")));
        match decide(Err(failure), 1, &config) {
            Decision::Dead {
                reason, last_error, ..
            } => {
                assert_eq!(reason, "rejected: no such saga");
                assert_eq!(last_error.as_deref(), Some("rejected: no such saga"));
            }
            other => panic!("{other:?}"),
        }
    }

    fn config() -> ConsumerConfig {
        let mut config = ConsumerConfig::new("payments");
        config.max_attempts = 3;
        config.retry_base = Duration::from_millis(100);
        config.retry_max = Duration::from_millis(250);
        config
    }

    fn reason(decision: Decision) -> (u32, String) {
        match decision {
            Decision::Dead {
                attempts, reason, ..
            } => (attempts, reason),
            other => panic!("expected dead, got {other:?}"),
        }
    }

    fn bad_payload() -> serde_json::Error {
        serde_json::from_value::<u32>(serde_json::json!("ten")).unwrap_err()
    }

    #[test]
    fn a_success_is_acked() {
        assert_eq!(decide(Ok(()), 1, &config()), Decision::Ack);
    }

    #[test]
    fn a_handler_failure_is_retried_with_a_doubling_capped_delay() {
        let retry = |attempt| decide(Err(Failure::Handler("declined".into())), attempt, &config());
        let delays = [1, 2].map(|attempt| match retry(attempt) {
            Decision::Retry {
                attempts,
                delay,
                error,
            } => {
                assert_eq!((attempts, error.as_str()), (attempt, "declined"));
                delay
            }
            other => panic!("expected a retry, got {other:?}"),
        });
        assert_eq!(
            delays,
            [Duration::from_millis(100), Duration::from_millis(200)]
        );
        let mut long = config();
        long.max_attempts = 10;
        let capped = decide(Err(Failure::Handler("x".into())), 5, &long);
        assert!(
            matches!(capped, Decision::Retry { delay, .. } if delay == Duration::from_millis(250))
        );
    }

    #[test]
    fn the_last_attempt_is_dead_with_the_count_and_the_last_error() {
        let (attempts, reason) = reason(decide(
            Err(Failure::Handler("declined".into())),
            3,
            &config(),
        ));
        assert_eq!(attempts, 3);
        assert_eq!(reason, "handler failed 3 times; last: declined");
        let last = decide(Err(Failure::Handler("declined".into())), 3, &config());
        assert!(
            matches!(&last, Decision::Dead { last_error: Some(e), .. } if e == "declined"),
            "the handler's own error, apart from the reason: {last:?}"
        );
    }

    #[test]
    fn a_panic_is_a_handler_failure() {
        // The consumer turns a panic into this error; it takes the same path.
        let panicked = || Failure::Handler("handler panicked: boom".into());
        assert!(matches!(
            decide(Err(panicked()), 1, &config()),
            Decision::Retry { attempts: 1, .. }
        ));
        let (_, reason) = reason(decide(Err(panicked()), 3, &config()));
        assert!(reason.contains("handler panicked: boom"), "{reason}");
    }

    #[test]
    fn a_database_outage_is_retried_without_spending_an_attempt() {
        let outage = decide(
            Err(Failure::Database(Arc::new(sqlx::Error::PoolTimedOut))),
            3,
            &config(),
        );
        assert!(
            matches!(outage, Decision::Retry { attempts: 2, delay, .. } if delay == Duration::from_millis(100)),
            "{outage:?}"
        );
        // The same, when the handler's own statement met the outage.
        let in_handler = Failure::Handler(Box::new(sqlx::Error::PoolTimedOut));
        assert!(matches!(
            decide(Err(in_handler), 3, &config()),
            Decision::Retry { attempts: 2, .. }
        ));
    }

    #[test]
    fn a_refusal_inside_the_handler_spends_an_attempt() {
        // A constraint the handler's own statement broke: the message's fault.
        let refusal = || Failure::Handler(Box::new(sqlx::Error::RowNotFound));
        assert!(matches!(
            decide(Err(refusal()), 1, &config()),
            Decision::Retry { attempts: 1, .. }
        ));
        assert!(matches!(
            decide(Err(refusal()), 3, &config()),
            Decision::Dead { attempts: 3, .. }
        ));
    }

    #[test]
    fn what_no_retry_can_fix_is_dead_at_once() {
        let (attempts, why) = reason(decide(
            Err(Failure::BadPayload(bad_payload())),
            1,
            &config(),
        ));
        assert_eq!(attempts, 0, "the handler never ran");
        let unknown = decide(Err(Failure::UnknownStep("x".into())), 1, &config());
        assert!(
            matches!(
                unknown,
                Decision::Dead {
                    last_error: None,
                    ..
                }
            ),
            "no handler ran, so no handler's error: {unknown:?}"
        );
        assert!(
            why.starts_with("payload does not fit the handler's type: invalid type"),
            "{why}"
        );
        let (_, why) = reason(decide(
            Err(Failure::UnknownStep("LaunchRocket".into())),
            1,
            &config(),
        ));
        assert_eq!(why, "unknown step: LaunchRocket");
        let (_, why) = reason(decide(
            Err(Failure::Undecodable(DecodeError::NoSagaId)),
            1,
            &config(),
        ));
        assert!(why.starts_with("no saga_id"), "{why}");
        let refused = Failure::from(Error::<Failure>::InvalidKey("consumer"));
        let (attempts, why) = reason(decide(Err(refused), 2, &config()));
        assert_eq!(attempts, 2);
        assert!(why.contains("consumer must not be empty"), "{why}");
    }
}
