//! How a batch is formed from the deliveries at hand: what is waiting when a handler
//! slot frees up, and, with [`ConsumerConfig::batch_linger`], what arrives a little
//! later while other batches are still being handled.
//!
//! Lingering only while the consumer is busy keeps both promises: a message on an
//! idle consumer goes at once, alone if it is alone; under a backlog, where several
//! batches run side by side, a slot that frees up does not take the first delivery
//! or two the broker sends after an ack and leave the rest to the next free slot.
//! Fuller batches share a commit, the claim's round trip and an ack among more
//! messages.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ConsumerConfig;

/// `first` and the deliveries already waiting behind it, up to `limit` in all,
/// without waiting for more; and how the stream ended, if it did meanwhile.
pub(crate) fn take_ready(
    first: Delivery,
    deliveries: &mut lapin::Consumer,
    limit: usize,
) -> (Vec<Delivery>, Option<lapin::Result<()>>) {
    let mut batch = vec![first];
    while batch.len() < limit {
        match deliveries.next().now_or_never() {
            Some(Some(Ok(delivery))) => batch.push(delivery),
            Some(Some(Err(error))) => return (batch, Some(Err(error))),
            Some(None) => return (batch, Some(Ok(()))),
            None => break,
        }
    }
    (batch, None)
}

/// Whether a batch may linger at all: lingering is on and another batch is in hand.
/// Asked first, so that a consumer that never lingers does not count what its other
/// batches hold.
pub(crate) fn may_linger(config: &ConsumerConfig, others_in_flight: bool) -> bool {
    !config.batch_linger.is_zero() && others_in_flight
}

/// How a batch of `formed` deliveries may linger: for how long, and up to how many
/// in all. `None` when it goes as it is: lingering is off, no other batch is in
/// hand (`others_in_flight` false), or it is full, or `prefetch` lets no more in
/// while `held` deliveries sit in other batches.
pub(crate) fn linger_for(
    config: &ConsumerConfig,
    others_in_flight: bool,
    held: usize,
    formed: usize,
) -> Option<(Duration, usize)> {
    if !may_linger(config, others_in_flight) {
        return None;
    }
    let room = usize::from(config.prefetch).saturating_sub(held);
    let limit = config.batch_size.min(room);
    (formed < limit).then_some((config.batch_linger, limit))
}

/// Adds deliveries to `batch` as they arrive, up to `limit` in all, for `linger` at
/// most and until `stop` completes (no other batch is in hand any more, or the
/// consumer shuts down); and how the stream ended, if it did meanwhile.
pub(crate) async fn linger(
    batch: &mut Vec<Delivery>,
    deliveries: &mut lapin::Consumer,
    (linger, limit): (Duration, usize),
    stop: impl Future<Output = ()>,
) -> Option<lapin::Result<()>> {
    let deadline = tokio::time::sleep(linger);
    tokio::pin!(deadline, stop);
    while batch.len() < limit {
        tokio::select! {
            // Cancel-safe: a delivery is either returned or left in the stream.
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => batch.push(delivery),
                Some(Err(error)) => return Some(Err(error)),
                None => return Some(Ok(())),
            },
            () = &mut deadline => break,
            () = &mut stop => break,
        }
    }
    None
}

/// Completes once every other batch's slot is free (this batch holds its own), or
/// at `shutdown`: a lingering batch then has nothing left to wait beside.
pub(crate) async fn others_done_or(
    slots: &Semaphore,
    concurrency: usize,
    shutdown: &CancellationToken,
) {
    let others = u32::try_from(concurrency.saturating_sub(1)).unwrap_or(u32::MAX);
    tokio::select! {
        // Nothing else takes a slot while the batch lingers, so this waits only for
        // the others to finish; the permits go back as soon as they are had.
        _ = slots.acquire_many(others) => {}
        () = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lingering(ms: u64) -> ConsumerConfig {
        let mut config = ConsumerConfig::new("orders");
        config.batch_linger = Duration::from_millis(ms);
        config
    }

    #[test]
    fn by_default_no_batch_lingers() {
        assert_eq!(linger_for(&ConsumerConfig::new("orders"), true, 0, 1), None);
    }

    #[test]
    fn a_batch_on_an_idle_consumer_goes_at_once() {
        assert_eq!(linger_for(&lingering(5), false, 0, 1), None);
    }

    #[test]
    fn a_batch_beside_others_lingers_up_to_its_size() {
        let five = Duration::from_millis(5);
        assert_eq!(linger_for(&lingering(5), true, 16, 1), Some((five, 16)));
    }

    #[test]
    fn a_batch_waits_for_no_more_than_prefetch_lets_in() {
        let five = Duration::from_millis(5);
        assert_eq!(linger_for(&lingering(5), true, 56, 3), Some((five, 8)));
        assert_eq!(linger_for(&lingering(5), true, 60, 4), None, "no room");
        assert_eq!(
            linger_for(&lingering(5), true, 70, 1),
            None,
            "over prefetch"
        );
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        assert_eq!(linger_for(&lingering(5), true, 0, 16), None);
    }

    #[tokio::test]
    async fn a_linger_stops_when_the_other_batches_are_done() {
        let slots = Semaphore::new(4);
        let mine = slots.acquire().await.unwrap();
        let other = slots.acquire().await.unwrap();
        let shutdown = CancellationToken::new();
        let stop = others_done_or(&slots, 4, &shutdown);
        tokio::pin!(stop);
        assert!(
            (&mut stop).now_or_never().is_none(),
            "another batch is in hand"
        );
        drop(other);
        assert!(stop.now_or_never().is_some(), "none is");
        assert_eq!(slots.available_permits(), 3, "the permits went back");
        drop(mine);
    }

    #[tokio::test]
    async fn a_linger_stops_at_shutdown() {
        let slots = Semaphore::new(2);
        let _mine = slots.acquire().await.unwrap();
        let _other = slots.acquire().await.unwrap();
        let shutdown = CancellationToken::new();
        let stop = others_done_or(&slots, 2, &shutdown);
        tokio::pin!(stop);
        assert!((&mut stop).now_or_never().is_none());
        shutdown.cancel();
        assert!(stop.now_or_never().is_some());
    }
}
