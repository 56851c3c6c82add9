//! The vocabulary messages carry on the wire, defined once for every part of the
//! toolkit: the relay writes these headers, the consumer reads them, the retry and
//! dead-letter queues are named by these rules, and tests, benchmarks and the demo
//! use the same names.

use std::time::Duration;

/// Header with the business transaction's id; also the AMQP `correlation_id`.
pub const SAGA_ID_HEADER: &str = "saga_id";

/// Header with the saga step or event name; also the AMQP `type`.
pub const STEP_HEADER: &str = "step";

/// Header with the W3C trace context of the code that wrote the message.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Header counting how many times a consumer already tried a message.
pub const ATTEMPTS_HEADER: &str = "x-attempts";

/// Header with the error of a message's last failed attempt, on its way to a retry.
pub const LAST_ERROR_HEADER: &str = "x-last-error";

/// Header naming why a message was dead-lettered.
pub const DEAD_REASON_HEADER: &str = "x-dead-reason";

/// The part of a step a consumer routes by: what comes before `#`. A producer that
/// sends the same command more than once (a saga resending a compensation) gives each
/// copy its own step, `{command}#{token}`, so that the inbox keeps them apart, while
/// one handler takes them all.
pub fn step_route(step: &str) -> &str {
    step.split_once('#').map_or(step, |(route, _)| route)
}

/// `{queue}.dead`: messages a consumer of `queue` could not process, each with
/// [`DEAD_REASON_HEADER`].
pub fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// `{queue}.retry.{ms}`: holds a message for `delay`, then returns it to `queue`.
/// One queue per delay, since a queue's TTL is one number.
pub fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}", delay.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_routes_by_what_comes_before_the_hash() {
        assert_eq!(step_route("inventory.release#0195"), "inventory.release");
        assert_eq!(step_route("OrderPlaced"), "OrderPlaced");
    }

    #[test]
    fn queue_names_follow_their_rules() {
        assert_eq!(dead_queue("payments"), "payments.dead");
        assert_eq!(
            retry_queue("payments", Duration::from_secs(2)),
            "payments.retry.2000"
        );
    }
}
