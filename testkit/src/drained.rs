//! Emptying a queue without waiting, such as a consumer's `{queue}.dead` once the
//! test knows all that will come has come: [`take_headers`](crate::take_headers)
//! waits for a count; this takes what is there, which may be nothing.

use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;

/// The headers of every message in `queue` now, oldest first (acked as they are
/// taken, so the queue is left empty); none when it is empty.
pub async fn drain_headers(
    channel: &lapin::Channel,
    queue: &str,
) -> anyhow::Result<Vec<FieldTable>> {
    let mut drained = Vec::new();
    let options = BasicGetOptions { no_ack: true };
    while let Some(message) = channel.basic_get(queue.into(), options).await? {
        let headers = message.delivery.properties.headers().clone();
        drained.push(headers.unwrap_or_default());
    }
    Ok(drained)
}
