//! Taking the messages a test expects in a queue, such as a consumer's `{queue}.dead`,
//! and reading their headers: the reason a message was dead-lettered is a header.

use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};

use crate::wait::POLL;

/// The headers of `count` messages taken from `queue` (acked as they are taken),
/// waiting up to `timeout` for them. Fails, saying what it did take, if fewer came.
pub async fn take_headers(
    channel: &lapin::Channel,
    queue: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<FieldTable>> {
    let deadline = Instant::now() + timeout;
    let mut taken = Vec::new();
    while taken.len() < count {
        let options = BasicGetOptions { no_ack: true };
        match channel.basic_get(queue.into(), options).await? {
            Some(message) => taken.push(
                message
                    .delivery
                    .properties
                    .headers()
                    .clone()
                    .unwrap_or_default(),
            ),
            None => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} with {} of {count} messages from {queue}: {taken:?}",
                    taken.len()
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
    Ok(taken)
}

/// Header `name` as text: a string header's contents; any other value, or none, as
/// its debug form, so that an assertion on it says what was there.
pub fn header_text(headers: &FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(text)) => text.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}
