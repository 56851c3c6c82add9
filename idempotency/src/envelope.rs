//! Reading the relay's envelope off a delivery.

use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

/// A decoded message, as a handler sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Envelope {
    /// The business transaction (AMQP `correlation_id`, or header `saga_id`).
    pub saga_id: String,
    /// The saga step or event name (AMQP `type`, or header `step`).
    pub step: String,
    /// The AMQP `message_id`, if any.
    pub message_id: Option<String>,
    /// The body, parsed as JSON.
    pub payload: serde_json::Value,
    /// Delivery attempts so far, this one included.
    pub attempt: u32,
    /// Whether the broker says it delivered this message before.
    pub redelivered: bool,
}

/// Header carrying how many times the consumer already tried a message.
pub(crate) const ATTEMPTS_HEADER: &str = "x-attempts";

/// Why a delivery cannot be handled at all, however often it is tried.
pub(crate) fn decode(delivery: &Delivery) -> Result<Envelope, String> {
    let props = &delivery.properties;
    let headers = props.headers().as_ref();
    let saga_id = props
        .correlation_id()
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| header_text(headers, "saga_id"))
        .filter(|s| !s.is_empty())
        .ok_or("no saga_id: neither correlation_id nor a saga_id header")?;
    let step = props
        .kind()
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| header_text(headers, "step"))
        .filter(|s| !s.is_empty())
        .ok_or("no step: neither type nor a step header")?;
    let payload =
        serde_json::from_slice(&delivery.data).map_err(|e| format!("payload is not JSON: {e}"))?;
    let attempt = attempts(headers) + 1;
    Ok(Envelope {
        saga_id,
        step,
        message_id: props.message_id().as_ref().map(|s| s.to_string()),
        payload,
        attempt,
        redelivered: delivery.redelivered,
    })
}

/// Attempts recorded on a delivery by earlier retries.
pub(crate) fn attempts(headers: Option<&FieldTable>) -> u32 {
    match headers.and_then(|h| h.inner().get(ATTEMPTS_HEADER)) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}
