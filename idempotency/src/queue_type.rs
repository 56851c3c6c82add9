//! The queue types a consumer can declare, the arguments each of its queues gets,
//! and how RabbitMQ names the type of a queue it refuses to redeclare.

use std::fmt;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use txoutbox::wire::dead_queue;

/// The type of the queues a consumer declares (`x-queue-type`).
///
/// `docs/operations/queue-types.md` says which arguments each gets and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QueueType {
    /// Replicated over the cluster's nodes (Raft), and the only type that keeps its
    /// messages through the loss of a node. Retry queues dead-letter back to the
    /// queue at least once (a message is never dropped between them), and a message
    /// whose deliveries keep being interrupted (one that crashes the consumer's
    /// process, say) goes to `{queue}.dead` after 20 redeliveries. Needs RabbitMQ 3.10
    /// or later (message TTL and at-least-once dead-lettering on quorum queues).
    #[default]
    Quorum,
    /// A queue on one node, as this crate declared them before quorum queues became
    /// the default: to keep using queues declared then, or on a broker older than 3.10.
    Classic,
}

impl QueueType {
    /// The value of `x-queue-type`: `quorum` or `classic`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deliveries of one message from a quorum queue before the broker dead-letters it
/// to `{queue}.dead`. Only deliveries that end unsettled count (the consumer's
/// connection or process died with the message in hand, or a copy to a retry queue
/// was refused): a handler's failure is retried through a copy, a new message.
pub(crate) const DELIVERY_LIMIT: i64 = 20;

impl QueueType {
    /// `{queue}.dead`: only `x-queue-type`. Nothing dead-letters out of it.
    pub(crate) fn dead_arguments(self) -> FieldTable {
        self.typed()
    }

    /// The consumer's own queue. A quorum queue sets a message aside in
    /// `{queue}.dead` after [`DELIVERY_LIMIT`] unsettled deliveries, rather than
    /// delivering it forever (RabbitMQ 3) or dropping it after its default limit
    /// (RabbitMQ 4: 20, and nowhere to go).
    pub(crate) fn main_arguments(self, queue: &str) -> FieldTable {
        let mut arguments = self.typed();
        if self == QueueType::Quorum {
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            self.dead_letter_to(&mut arguments, &dead_queue(queue));
        }
        arguments
    }

    /// A retry queue: nobody consumes it; after `delay` its messages dead-letter back
    /// to `queue`.
    pub(crate) fn retry_arguments(self, queue: &str, delay: Duration) -> FieldTable {
        let mut arguments = self.typed();
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        self.dead_letter_to(&mut arguments, queue);
        arguments
    }

    /// `x-queue-type`, which every queue of the consumer states, so that a queue of
    /// another type is refused rather than taken as it is.
    fn typed(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), text(self.as_str()));
        arguments
    }

    /// Dead-letters through the default exchange to the queue `target`; from a
    /// quorum queue at least once: the broker keeps a message until `target` has
    /// confirmed it. That needs `x-overflow: reject-publish` (with `drop-head`, the
    /// default, RabbitMQ falls back to at most once); with no length limit set it
    /// rejects nothing.
    fn dead_letter_to(self, arguments: &mut FieldTable, target: &str) {
        arguments.insert("x-dead-letter-exchange".into(), text(""));
        arguments.insert("x-dead-letter-routing-key".into(), text(target));
        if self == QueueType::Quorum {
            arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            arguments.insert("x-overflow".into(), text("reject-publish"));
        }
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// The type of an existing queue, from RabbitMQ's answer to a declaration of another:
/// `... inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received 'quorum'
/// but current is 'classic'` (or `the value 'classic' of type 'longstr'`, or `none`:
/// declared without the argument, which makes a classic queue).
pub(crate) fn existing_type(reason: &str) -> Option<String> {
    if !reason.contains("inequivalent arg 'x-queue-type'") {
        return None;
    }
    let current = reason.rsplit_once("but current is ")?.1.trim();
    if current == "none" {
        return Some(QueueType::Classic.as_str().to_owned());
    }
    let quoted = current.strip_prefix("the value ").unwrap_or(current);
    let value = quoted.strip_prefix('\'')?.split('\'').next()?;
    Some(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(table: &FieldTable) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = table
            .inner()
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    AMQPValue::LongString(text) => text.to_string(),
                    AMQPValue::LongLongInt(n) => n.to_string(),
                    other => format!("{other:?}"),
                };
                (name.to_string(), value)
            })
            .collect();
        pairs.sort();
        pairs
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = expected
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn quorum_queues_dead_letter_at_least_once_and_limit_unsettled_deliveries() {
        let quorum = QueueType::Quorum;
        assert_eq!(
            arguments(&quorum.main_arguments("pay")),
            pairs(&[
                ("x-queue-type", "quorum"),
                ("x-delivery-limit", "20"),
                ("x-dead-letter-exchange", ""),
                ("x-dead-letter-routing-key", "pay.dead"),
                ("x-dead-letter-strategy", "at-least-once"),
                ("x-overflow", "reject-publish"),
            ])
        );
        assert_eq!(
            arguments(&quorum.retry_arguments("pay", Duration::from_secs(2))),
            pairs(&[
                ("x-queue-type", "quorum"),
                ("x-message-ttl", "2000"),
                ("x-dead-letter-exchange", ""),
                ("x-dead-letter-routing-key", "pay"),
                ("x-dead-letter-strategy", "at-least-once"),
                ("x-overflow", "reject-publish"),
            ])
        );
        assert_eq!(
            arguments(&quorum.dead_arguments()),
            pairs(&[("x-queue-type", "quorum")])
        );
    }

    #[test]
    fn classic_queues_are_declared_as_before_with_their_type_stated() {
        let classic = QueueType::Classic;
        assert_eq!(
            arguments(&classic.main_arguments("pay")),
            pairs(&[("x-queue-type", "classic")])
        );
        assert_eq!(
            arguments(&classic.retry_arguments("pay", Duration::from_millis(500))),
            pairs(&[
                ("x-queue-type", "classic"),
                ("x-message-ttl", "500"),
                ("x-dead-letter-exchange", ""),
                ("x-dead-letter-routing-key", "pay"),
            ])
        );
    }

    #[test]
    fn the_existing_type_is_read_from_each_way_rabbitmq_words_it() {
        let refusal = |current: &str| {
            format!(
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'pay' in \
                 vhost '/': received 'quorum' but current is {current}"
            )
        };
        assert_eq!(existing_type(&refusal("none")).as_deref(), Some("classic"));
        assert_eq!(
            existing_type(&refusal("'classic'")).as_deref(),
            Some("classic")
        );
        assert_eq!(
            existing_type(&refusal("the value 'stream' of type 'longstr'")).as_deref(),
            Some("stream")
        );
        let other = "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue \
                     'pay.retry.1000' in vhost '/': received '1000' but current is '500'";
        assert_eq!(existing_type(other), None);
        assert_eq!(existing_type("PRECONDITION_FAILED - something new"), None);
    }
}
