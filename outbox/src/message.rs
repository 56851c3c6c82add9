use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};

/// AMQP short strings (routing key, exchange, correlation id, type, header names)
/// hold at most 255 bytes. The table's CHECK constraints enforce the same limit.
const AMQP_SHORT_STRING_MAX: usize = 255;

/// An outgoing message, validated and serialized, ready to be written to the outbox.
///
/// Build one with [`Message::builder`]. Construction does all the checking, so
/// [`enqueue`](crate::enqueue) only fails on database errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub(crate) id: Uuid,
    pub(crate) saga_id: String,
    pub(crate) step: String,
    pub(crate) routing_key: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) exchange: Option<String>,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) ordering_key: Option<String>,
    pub(crate) delay: Option<Duration>,
}

impl Message {
    /// Starts a message of business transaction `saga_id`, produced by saga step (or
    /// event name) `step`, published with `routing_key`.
    ///
    /// `saga_id:step` is the idempotency key on the receiving side: two messages
    /// with the same pair are the same message as far as an inbox is concerned.
    pub fn builder(
        saga_id: impl Into<String>,
        step: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> MessageBuilder {
        MessageBuilder {
            saga_id: saga_id.into(),
            step: step.into(),
            routing_key: routing_key.into(),
            exchange: None,
            headers: BTreeMap::new(),
            ordering_key: None,
            delay: None,
            id: None,
        }
    }

    /// The message id: a UUIDv7, published as the AMQP `message_id`.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The business transaction this message belongs to.
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    /// The saga step or event name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The AMQP routing key.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The serialized payload.
    pub fn payload(&self) -> &serde_json::Value {
        &self.payload
    }
}

/// Collects the parts of a [`Message`]; [`MessageBuilder::payload`] validates and
/// finishes it.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.payload(...)` builds the message"]
pub struct MessageBuilder {
    saga_id: String,
    step: String,
    routing_key: String,
    exchange: Option<String>,
    headers: BTreeMap<String, String>,
    ordering_key: Option<String>,
    delay: Option<Duration>,
    id: Option<Uuid>,
}

impl MessageBuilder {
    /// Publishes to this exchange instead of the relay's configured one.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Adds an AMQP header. Headers named `saga_id` and `step` are set by the relay
    /// from the columns of the same name and override these.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Carries a W3C trace context, so the consumer's span joins the producer's trace.
    /// With the `opentelemetry` feature the current span's context is carried
    /// without this call; an explicit value wins.
    pub fn traceparent(self, traceparent: impl Into<String>) -> Self {
        self.header(crate::wire::TRACEPARENT_HEADER, traceparent)
    }

    /// Rows with the same ordering key are published in the order they were written.
    /// Defaults to the saga id.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Publishes no earlier than `delay` after the writing transaction's start (the
    /// database clock decides, not this process's).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Uses this id instead of a fresh UUIDv7, for a producer that must know the id
    /// before it writes (for example to retry its own call idempotently).
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Serializes `payload` and validates the whole message. Nothing touches the
    /// database here; a bad message is an error before any write.
    pub fn payload<T: Serialize + ?Sized>(self, payload: &T) -> Result<Message> {
        require_short_string("saga_id", &self.saga_id)?;
        require_short_string("step", &self.step)?;
        require_short_string("routing_key", &self.routing_key)?;
        if let Some(exchange) = &self.exchange {
            limit_short_string("exchange", exchange)?;
        }
        if let Some(key) = &self.ordering_key {
            require_non_empty("ordering_key", key)?;
        }
        for name in self.headers.keys() {
            require_short_string("headers", name)?;
        }
        if let Some(delay) = self.delay {
            // The database adds the delay as an interval of milliseconds in a bigint.
            if i64::try_from(delay.as_millis()).is_err() {
                return Err(invalid("delay", "is too long"));
            }
        }
        let payload = serde_json::to_value(payload).map_err(Error::Payload)?;
        #[cfg_attr(not(feature = "opentelemetry"), allow(unused_mut))]
        let mut headers = self.headers;
        #[cfg(feature = "opentelemetry")]
        if !headers.contains_key(crate::wire::TRACEPARENT_HEADER)
            && let Some(traceparent) = crate::trace::current_traceparent()
        {
            // The writer's trace continues in whoever handles the message.
            headers.insert(crate::wire::TRACEPARENT_HEADER.to_owned(), traceparent);
        }
        Ok(Message {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            saga_id: self.saga_id,
            step: self.step,
            routing_key: self.routing_key,
            payload,
            exchange: self.exchange,
            headers,
            ordering_key: self.ordering_key,
            delay: self.delay,
        })
    }
}

fn invalid(field: &'static str, problem: &'static str) -> Error {
    Error::InvalidMessage { field, problem }
}

fn require_non_empty(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    Ok(())
}

fn limit_short_string(field: &'static str, value: &str) -> Result<()> {
    if value.len() > AMQP_SHORT_STRING_MAX {
        return Err(invalid(field, "must be at most 255 bytes"));
    }
    Ok(())
}

fn require_short_string(field: &'static str, value: &str) -> Result<()> {
    require_non_empty(field, value)?;
    limit_short_string(field, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<Message>) -> &'static str {
        match result {
            Err(Error::InvalidMessage { field, .. }) => field,
            other => panic!("expected InvalidMessage, got {other:?}"),
        }
    }

    #[test]
    fn builds_a_message_with_a_v7_id() {
        let message = Message::builder("saga-1", "OrderCreated", "orders.created")
            .payload(&serde_json::json!({"order": 1}))
            .unwrap();
        assert_eq!(message.id().get_version_num(), 7);
        assert_eq!(message.payload()["order"], 1);
    }

    #[test]
    fn rejects_empty_required_fields() {
        assert_eq!(
            field_of(Message::builder("", "s", "r").payload(&1)),
            "saga_id"
        );
        assert_eq!(field_of(Message::builder("x", "", "r").payload(&1)), "step");
        assert_eq!(
            field_of(Message::builder("x", "s", "").payload(&1)),
            "routing_key"
        );
        let empty_key = Message::builder("x", "s", "r").ordering_key("");
        assert_eq!(field_of(empty_key.payload(&1)), "ordering_key");
    }

    #[test]
    fn rejects_strings_amqp_cannot_carry() {
        let long = "k".repeat(256);
        assert_eq!(
            field_of(Message::builder("x", "s", long.as_str()).payload(&1)),
            "routing_key"
        );
        let exchange = Message::builder("x", "s", "r").exchange(long.as_str());
        assert_eq!(field_of(exchange.payload(&1)), "exchange");
        let header = Message::builder("x", "s", "r").header(long.as_str(), "v");
        assert_eq!(field_of(header.payload(&1)), "headers");
        assert!(
            Message::builder("x", "s", "k".repeat(255))
                .payload(&1)
                .is_ok()
        );
    }

    #[test]
    fn rejects_a_payload_that_is_not_json() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), "tuple keys are not JSON object keys");
        let result = Message::builder("x", "s", "r").payload(&map);
        assert!(matches!(result, Err(Error::Payload(_))));
    }
}
