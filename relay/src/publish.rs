//! Publishing a batch: every publish issued at once, in write order on the wire.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, PublisherConfirm};

use crate::store::OutboxRow;

/// Publishes `rows`, with their `properties`, in order on `channel`, and returns
/// each one's confirm, or why it could not be published (the channel closed under it).
///
/// The publishes are issued together, not one awaited after the other: a publish
/// takes its delivery tag and queues its frames on its first poll, so polling them in
/// slice order keeps the write order on the wire while the socket writes overlap.
pub(crate) async fn publish_batch(
    channel: &Channel,
    default_exchange: &str,
    rows: &[OutboxRow],
    properties: Vec<BasicProperties>,
) -> Vec<lapin::Result<PublisherConfirm>> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let publishes = rows
        .iter()
        .zip(properties)
        .map(|(row, properties)| {
            let exchange = row.exchange.as_deref().unwrap_or(default_exchange);
            Box::pin(channel.basic_publish(
                exchange.into(),
                row.routing_key.as_str().into(),
                options,
                row.payload.as_bytes(),
                properties,
            ))
        })
        .collect();
    InOrder::new(publishes).await
}

/// Joins futures by polling each pending one in index order on every wake, so
/// their first polls, and whatever those do, happen in order.
struct InOrder<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
    pending: usize,
}

impl<F: Future> InOrder<F> {
    fn new(futures: Vec<Pin<Box<F>>>) -> Self {
        let pending = futures.len();
        let outputs = futures.iter().map(|_| None).collect();
        Self {
            futures: futures.into_iter().map(Some).collect(),
            outputs,
            pending,
        }
    }
}

// The futures are boxed and the outputs are never pinned, so moving an `InOrder`
// moves nothing that is pinned.
impl<F: Future> Unpin for InOrder<F> {}

impl<F: Future> Future for InOrder<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        for (slot, output) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(future) = slot
                && let Poll::Ready(result) = future.as_mut().poll(cx)
            {
                *slot = None;
                *output = Some(result);
                this.pending -= 1;
            }
        }
        if this.pending > 0 {
            return Poll::Pending;
        }
        let outputs = std::mem::take(&mut this.outputs);
        Poll::Ready(
            outputs
                .into_iter()
                .map(|o| o.expect("every future completed"))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn first_polls_happen_in_order_and_outputs_keep_their_place() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let futures = (0..100u64)
            .map(|i| {
                let log = Arc::clone(&log);
                Box::pin(async move {
                    log.lock().unwrap().push(i);
                    tokio::time::sleep(std::time::Duration::from_micros(100 - i)).await;
                    i * 2
                })
            })
            .collect();
        let outputs = InOrder::new(futures).await;
        assert_eq!(*log.lock().unwrap(), (0..100).collect::<Vec<_>>());
        assert_eq!(outputs, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    }
}
