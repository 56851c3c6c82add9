//! Reading the relay's envelope off a delivery.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::de::DeserializeOwned;
use txoutbox::wire::{ATTEMPTS_HEADER, SAGA_ID_HEADER, STEP_HEADER, TRACEPARENT_HEADER};

/// A decoded message, as a handler sees it (through [`Context::envelope`]).
///
/// [`Context::envelope`]: crate::Context::envelope
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Envelope {
    /// The business transaction (AMQP `correlation_id`, or header `saga_id`).
    pub saga_id: String,
    /// The saga step or event name (AMQP `type`, or header `step`).
    pub step: String,
    /// The AMQP `message_id`, if any.
    pub message_id: Option<String>,
    /// The AMQP `reply_to`: where the sender wants an answer, if anywhere.
    pub reply_to: Option<String>,
    /// The AMQP `timestamp` (the relay sets it to when the message was written).
    pub timestamp: Option<SystemTime>,
    /// The W3C trace context of the code that wrote the message (header
    /// `traceparent`); [`Context::emit`](crate::Context::emit) carries the trace on.
    pub traceparent: Option<String>,
    /// Every AMQP header, as JSON: strings, numbers and booleans as themselves,
    /// tables as objects, arrays as arrays, byte arrays as arrays of numbers.
    pub headers: BTreeMap<String, serde_json::Value>,
    /// The body, parsed as JSON.
    pub payload: serde_json::Value,
    /// Delivery attempts so far, this one included.
    pub attempt: u32,
    /// Whether the broker says it delivered this message before.
    pub redelivered: bool,
}

impl Envelope {
    /// A first delivery of `step` of saga `saga_id` with `payload`, and nothing
    /// else set: for driving a handler by hand (see [`Context::new`]).
    ///
    /// [`Context::new`]: crate::Context::new
    pub fn new(
        saga_id: impl Into<String>,
        step: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            saga_id: saga_id.into(),
            step: step.into(),
            message_id: None,
            reply_to: None,
            timestamp: None,
            traceparent: None,
            headers: BTreeMap::new(),
            payload,
            attempt: 1,
            redelivered: false,
        }
    }

    /// The payload as `T`. The consumer does this for a typed handler, and
    /// dead-letters a message whose payload does not fit at once: no retry would
    /// make it fit.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// A header's value, if it is a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.as_str()
    }
}

/// Why a delivery is not a message of the relay's envelope. No retry changes that,
/// so the message is dead-lettered at once, with this as its reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("no saga_id: neither correlation_id nor a {SAGA_ID_HEADER} header")]
    NoSagaId,
    #[error("no step: neither type nor a {STEP_HEADER} header")]
    NoStep,
    #[error("{0} contains a NUL byte, which PostgreSQL text cannot hold")]
    NulByte(&'static str),
    #[error("payload is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// The envelope of a delivery, or why it has none.
pub(crate) fn decode(delivery: &Delivery) -> Result<Envelope, DecodeError> {
    let props = &delivery.properties;
    let headers = headers(props);
    let saga_id = saga_id(props, &headers).ok_or(DecodeError::NoSagaId)?;
    let step = step(props, &headers).ok_or(DecodeError::NoStep)?;
    let message_id = props.message_id().as_ref().map(|s| s.to_string());
    // The key goes into the inbox table: a NUL would fail the statement, for this
    // message and the batch around it, on every try.
    let fields = [
        ("saga_id", Some(&saga_id)),
        ("step", Some(&step)),
        ("message_id", message_id.as_ref()),
    ];
    if let Some((field, _)) = fields
        .iter()
        .find(|(_, value)| value.is_some_and(|v| v.contains('\0')))
    {
        return Err(DecodeError::NulByte(field));
    }
    let payload = serde_json::from_slice(&delivery.data).map_err(DecodeError::NotJson)?;
    Ok(Envelope {
        saga_id,
        step,
        message_id,
        reply_to: props.reply_to().as_ref().map(|s| s.to_string()),
        timestamp: props
            .timestamp()
            .map(|seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)),
        traceparent: text(&headers, TRACEPARENT_HEADER),
        headers,
        payload,
        attempt: attempts(props.headers().as_ref()).saturating_add(1),
        redelivered: delivery.redelivered,
    })
}

/// Every AMQP header of a delivery, as JSON (see [`Envelope::headers`]).
pub(crate) fn headers(props: &BasicProperties) -> BTreeMap<String, serde_json::Value> {
    props
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.to_string(), json(value)))
                .collect()
        })
        .unwrap_or_default()
}

/// The saga id: the AMQP `correlation_id`, else the header; empty is missing.
pub(crate) fn saga_id(
    props: &BasicProperties,
    headers: &BTreeMap<String, serde_json::Value>,
) -> Option<String> {
    either(props.correlation_id(), headers, SAGA_ID_HEADER)
}

/// The step: the AMQP `type`, else the header; empty is missing.
pub(crate) fn step(
    props: &BasicProperties,
    headers: &BTreeMap<String, serde_json::Value>,
) -> Option<String> {
    either(props.kind(), headers, STEP_HEADER)
}

/// The AMQP property, else the header of the same meaning; empty is missing.
fn either(
    property: &Option<ShortString>,
    headers: &BTreeMap<String, serde_json::Value>,
    header: &str,
) -> Option<String> {
    property
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| text(headers, header))
        .filter(|s| !s.is_empty())
}

/// A header's value, if it is a string.
fn text(headers: &BTreeMap<String, serde_json::Value>, name: &str) -> Option<String> {
    headers.get(name)?.as_str().map(str::to_owned)
}

/// Attempts recorded on a delivery by earlier retries.
pub(crate) fn attempts(headers: Option<&FieldTable>) -> u32 {
    match headers.and_then(|h| h.inner().get(ATTEMPTS_HEADER)) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// An AMQP header value as JSON, the form the relay writes headers from.
fn json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(x) => Value::from(*x),
        AMQPValue::Double(x) => Value::from(*x),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(s.to_string()),
        AMQPValue::FieldArray(values) => values.as_slice().iter().map(json).collect(),
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.to_string(), json(value)))
                .collect(),
        ),
        AMQPValue::ByteArray(bytes) => bytes.as_slice().iter().copied().map(Value::from).collect(),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{DecimalValue, FieldArray, LongString};
    use serde_json::json;

    use super::*;

    #[test]
    fn header_values_read_as_json() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongLongInt(3));
        let array = FieldArray::from(vec![AMQPValue::Boolean(true), AMQPValue::Void]);
        let cases = [
            (
                AMQPValue::LongString(LongString::from("00-ab-cd-01")),
                json!("00-ab-cd-01"),
            ),
            (AMQPValue::LongInt(-7), json!(-7)),
            (AMQPValue::FieldArray(array), json!([true, null])),
            (AMQPValue::FieldTable(table), json!({"n": 3})),
            (
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 150,
                }),
                json!(1.5),
            ),
            (AMQPValue::ByteArray(vec![1u8, 2].into()), json!([1, 2])),
        ];
        for (value, expected) in cases {
            assert_eq!(json(&value), expected, "{value:?}");
        }
    }

    #[test]
    fn decode_errors_say_what_is_missing() {
        assert!(DecodeError::NoSagaId.to_string().starts_with("no saga_id"));
        assert!(DecodeError::NoStep.to_string().starts_with("no step"));
        let not_json = serde_json::from_slice::<serde_json::Value>(b"nope").unwrap_err();
        assert!(
            DecodeError::NotJson(not_json)
                .to_string()
                .starts_with("payload is not JSON")
        );
    }
}
