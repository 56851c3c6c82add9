//! How an outbox row looks on the wire.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use txoutbox::wire::{SAGA_ID_HEADER, STEP_HEADER};

use crate::store::OutboxRow;

/// Delivery mode 2: the broker writes the message to disk in a durable queue.
const PERSISTENT: u8 = 2;

/// AMQP properties of a row: message_id = id, correlation_id = saga_id, type = step,
/// timestamp = created_at, persistent JSON; headers = the row's headers plus
/// `saga_id` and `step`, which win over a row header of the same name.
pub(crate) fn properties(row: &OutboxRow) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in row.headers.0.iter() {
        headers.insert(ShortString::from(name.as_str()), header_value(value));
    }
    headers.insert(SAGA_ID_HEADER.into(), long_string(&row.saga_id));
    headers.insert(STEP_HEADER.into(), long_string(&row.step));
    BasicProperties::default()
        .with_message_id(row.id.to_string().into())
        .with_correlation_id(row.saga_id.as_str().into())
        .with_type(row.step.as_str().into())
        .with_timestamp(row.created_at.timestamp().max(0) as u64)
        .with_content_type("application/json".into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
}

/// String header values pass as strings; booleans and integers keep their AMQP
/// type; anything else travels as its JSON text, so no header is silently dropped.
fn header_value(value: &serde_json::Value) -> AMQPValue {
    match value {
        serde_json::Value::String(s) => long_string(s),
        serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
        serde_json::Value::Number(n) if n.is_i64() => {
            AMQPValue::LongLongInt(n.as_i64().unwrap_or(0))
        }
        other => long_string(&other.to_string()),
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> OutboxRow {
        let headers = json!({"traceparent": "00-abc-def-01", "saga_id": "spoofed", "n": 3, "ok": true, "x": [1]});
        OutboxRow {
            id: uuid::Uuid::now_v7(),
            seq: 1,
            saga_id: "saga-1".into(),
            step: "OrderCreated".into(),
            routing_key: "orders.created".into(),
            payload: "{}".into(),
            exchange: None,
            headers: sqlx::types::Json(headers.as_object().cloned().unwrap()),
            created_at: chrono::Utc::now(),
            attempts: 0,
            ordering_key: "saga-1".into(),
        }
    }

    #[test]
    fn carries_ids_and_headers() {
        let row = row();
        let props = properties(&row);
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            row.id.to_string()
        );
        assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), "saga-1");
        assert_eq!(props.kind().as_ref().unwrap().as_str(), "OrderCreated");
        assert_eq!(*props.delivery_mode(), Some(2));
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(headers["saga_id"], long_string("saga-1"), "the column wins");
        assert_eq!(headers["step"], long_string("OrderCreated"));
        assert_eq!(headers["traceparent"], long_string("00-abc-def-01"));
        assert_eq!(headers["n"], AMQPValue::LongLongInt(3));
        assert_eq!(headers["ok"], AMQPValue::Boolean(true));
        assert_eq!(headers["x"], long_string("[1]"));
    }
}
