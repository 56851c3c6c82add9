//! What the broker cannot be asked at all: rows checked before they are published.
//!
//! The table contract accepts any JSON object as `headers`, but AMQP has limits a
//! publish cannot break without corrupting the connection rather than failing one
//! message: a header name is a short string (at most 255 bytes), and a message's
//! properties travel in one frame (at most the negotiated `frame_max`). Such a row
//! would fail the same way every time, so it is parked as dead at once, with the
//! reason, instead of being published.

use std::collections::HashSet;

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use crate::envelope::properties;
use crate::metrics::FailureReason;
use crate::refusal::Refusal;
use crate::store::OutboxRow;

/// Bytes of a content-header frame around the properties: frame type, channel and
/// size (7), end marker (1), class, weight, body size and property flags (14).
const CONTENT_HEADER_OVERHEAD: usize = 22;

/// The longest AMQP short string: header names, exchange, routing key.
const SHORT_STRING_MAX: usize = 255;

/// A batch ready for the wire: its rows, each with its AMQP properties.
pub(crate) struct Prepared {
    pub(crate) rows: Vec<OutboxRow>,
    pub(crate) properties: Vec<BasicProperties>,
    /// Rows that cannot be published, and why. Later rows of their ordering keys are
    /// in neither list: they wait behind the dead row, order first.
    pub(crate) invalid: Vec<(OutboxRow, Refusal)>,
}

/// Builds each row's properties and sets apart the rows that cannot be published.
pub(crate) fn prepare(rows: Vec<OutboxRow>, frame_max: u32) -> Prepared {
    let mut prepared = Prepared {
        rows: Vec::with_capacity(rows.len()),
        properties: Vec::with_capacity(rows.len()),
        invalid: Vec::new(),
    };
    let mut held: HashSet<String> = HashSet::new();
    for row in rows {
        if !held.is_empty() && held.contains(&row.ordering_key) {
            continue;
        }
        // Names first: a name too long for a short string cannot even be built.
        let checked = check_names(&row).and_then(|()| {
            let props = properties(&row);
            check_size(&props, frame_max).map(|()| props)
        });
        match checked {
            Ok(props) => {
                prepared.rows.push(row);
                prepared.properties.push(props);
            }
            Err(text) => {
                held.insert(row.ordering_key.clone());
                let reason = FailureReason::InvalidRow;
                prepared.invalid.push((row, Refusal { reason, text }));
            }
        }
    }
    prepared
}

/// Why the row's headers cannot be AMQP headers, if so: a name longer than a short string.
fn check_names(row: &OutboxRow) -> Result<(), String> {
    match row
        .headers
        .0
        .keys()
        .find(|name| name.len() > SHORT_STRING_MAX)
    {
        None => Ok(()),
        Some(name) => {
            let shown: String = name.chars().take(40).collect();
            Err(format!(
                "header name '{shown}...' is {} bytes; AMQP allows {SHORT_STRING_MAX}",
                name.len()
            ))
        }
    }
}

/// Why `properties` do not fit one frame on a connection with `frame_max`, if so.
fn check_size(properties: &BasicProperties, frame_max: u32) -> Result<(), String> {
    let size = content_header_size(properties);
    if frame_max > 0 && size > frame_max as usize {
        return Err(format!(
            "headers and properties take {size} bytes; they must fit one frame of {frame_max} bytes (the broker's frame_max)"
        ));
    }
    Ok(())
}

/// The size of the content-header frame carrying `properties`, for the properties
/// the relay sets (see `envelope::properties`).
fn content_header_size(properties: &BasicProperties) -> usize {
    let short =
        |s: &Option<lapin::types::ShortString>| s.as_ref().map_or(0, |s| 1 + s.as_str().len());
    let headers = properties.headers().as_ref().map_or(0, |h| {
        4 + h
            .inner()
            .iter()
            .map(|(k, v)| 1 + k.as_str().len() + value_size(v))
            .sum::<usize>()
    });
    CONTENT_HEADER_OVERHEAD
        + short(properties.message_id())
        + short(properties.correlation_id())
        + short(properties.kind())
        + short(properties.content_type())
        + properties.timestamp().map_or(0, |_| 8)
        + properties.delivery_mode().map_or(0, |_| 1)
        + headers
}

/// A field value's encoded size: its type tag and its bytes.
fn value_size(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::FieldTable(t) => {
            4 + t
                .inner()
                .iter()
                .map(|(k, v)| 1 + k.as_str().len() + value_size(v))
                .sum::<usize>()
        }
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_size).sum::<usize>(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::Void => 0,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldTable, LongString, ShortString};

    fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(name), value);
        BasicProperties::default()
            .with_message_id("0195d9a0-0000-7000-8000-000000000000".into())
            .with_headers(headers)
    }

    fn row(headers: serde_json::Value) -> OutboxRow {
        OutboxRow {
            id: uuid::Uuid::now_v7(),
            seq: 1,
            saga_id: "saga-1".into(),
            step: "Step".into(),
            routing_key: "key".into(),
            payload: "{}".into(),
            exchange: None,
            headers: sqlx::types::Json(headers.as_object().cloned().unwrap_or_default()),
            created_at: chrono::Utc::now(),
            attempts: 0,
            ordering_key: "saga-1".into(),
        }
    }

    #[test]
    fn ordinary_rows_pass() {
        let prepared = prepare(
            vec![row(serde_json::json!({"traceparent": "00-abc-def-01"}))],
            131_072,
        );
        assert_eq!((prepared.rows.len(), prepared.invalid.len()), (1, 0));
    }

    #[test]
    fn a_header_name_longer_than_a_short_string_is_refused_without_a_panic() {
        let prepared = prepare(
            vec![row(serde_json::json!({ "n".repeat(256): true }))],
            131_072,
        );
        let (_, refusal) = &prepared.invalid[0];
        assert_eq!(refusal.reason, FailureReason::InvalidRow);
        assert!(refusal.text.contains("256 bytes"), "{}", refusal.text);
    }

    #[test]
    fn headers_that_do_not_fit_one_frame_are_refused() {
        let prepared = prepare(
            vec![row(serde_json::json!({ "big": "x".repeat(200_000) }))],
            131_072,
        );
        assert!(prepared.invalid[0].1.text.contains("frame of 131072 bytes"));
    }

    #[test]
    fn later_rows_of_a_refused_key_are_held_back_and_others_go() {
        let mut other = row(serde_json::json!({}));
        other.ordering_key = "saga-2".into();
        let rows = vec![
            row(serde_json::json!({ "n".repeat(300): 1 })),
            row(serde_json::json!({})),
            other,
        ];
        let prepared = prepare(rows, 131_072);
        assert_eq!(prepared.invalid.len(), 1);
        assert_eq!(prepared.rows.len(), 1);
        assert_eq!(prepared.rows[0].ordering_key, "saga-2");
    }

    /// The size as the broker will see it: the frame lapin would write.
    fn encoded_size(properties: BasicProperties) -> usize {
        use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: 0,
            properties,
        };
        let frame = AMQPFrame::Header(1, header);
        let written = gen_frame(&frame)(WriteContext::from(Vec::new())).expect("encodes");
        written.write.len()
    }

    #[test]
    fn the_size_is_the_encoded_frame_size_for_real_rows() {
        let headers = serde_json::json!({
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tenant": "acme", "n": 3, "ok": true, "nested": {"a": [1, 2]}, "ratio": 0.25,
        });
        let props = properties(&row(headers));
        assert_eq!(content_header_size(&props), encoded_size(props));
    }

    #[test]
    fn the_size_counts_every_byte_of_a_header() {
        let props = with_header("ab", AMQPValue::LongString(LongString::from("xyz")));
        // overhead + message_id (1 + 36) + table length (4) + name (1 + 2) + tag, length, bytes (1 + 4 + 3)
        assert_eq!(content_header_size(&props), 22 + 37 + 4 + 3 + 8);
    }
}
