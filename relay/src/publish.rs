//! Publishing a batch: every publish issued at once, in write order on the wire.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
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

/// Joins futures so that their first polls happen in index order: the first poll
/// polls every one of them in order. After that, only the futures that were woken are
/// polled again (a `FuturesUnordered` holds the pending ones), so a wake costs what
/// it woke, not a pass over every pending future of the batch. Outputs keep their
/// index.
struct InOrder<F: Future> {
    /// The futures, until the first poll has polled each of them once, in order.
    unpolled: Vec<Pin<Box<F>>>,
    /// Futures that were pending after their first poll, with their index.
    pending: FuturesUnordered<Indexed<F>>,
    outputs: Vec<Option<F::Output>>,
    left: usize,
}

impl<F: Future> InOrder<F> {
    fn new(futures: Vec<Pin<Box<F>>>) -> Self {
        let left = futures.len();
        let outputs = futures.iter().map(|_| None).collect();
        Self {
            unpolled: futures,
            pending: FuturesUnordered::new(),
            outputs,
            left,
        }
    }
}

/// A future and its place in the batch.
struct Indexed<F> {
    index: usize,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Indexed<F> {
    type Output = (usize, F::Output);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = self.index;
        self.future.as_mut().poll(cx).map(|output| (index, output))
    }
}

// The futures are boxed and the outputs are never pinned, so moving an `InOrder`
// (or an `Indexed`) moves nothing that is pinned.
impl<F: Future> Unpin for InOrder<F> {}
impl<F> Unpin for Indexed<F> {}

impl<F: Future> Future for InOrder<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        for (index, mut future) in std::mem::take(&mut this.unpolled).into_iter().enumerate() {
            match future.as_mut().poll(cx) {
                Poll::Ready(output) => {
                    this.outputs[index] = Some(output);
                    this.left -= 1;
                }
                Poll::Pending => this.pending.push(Indexed { index, future }),
            }
        }
        while this.left > 0 {
            match this.pending.poll_next_unpin(cx) {
                Poll::Ready(Some((index, output))) => {
                    this.outputs[index] = Some(output);
                    this.left -= 1;
                }
                Poll::Pending => return Poll::Pending,
                // Every future left is in `pending`: not reached.
                Poll::Ready(None) => break,
            }
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
