//! Which deliveries of a channel are still in hand, so that a finished batch can be
//! acked with one `basic.ack` (`multiple`) when that acks nothing else.
//!
//! A multiple-ack of tag T acks every unacked delivery up to T on the channel. Batches
//! run side by side and finish in any order, so it is safe only when no delivery
//! below T is still being handled; otherwise the batch acks its deliveries one by
//! one, at once. No delivery waits for another batch to be acked, so a slow handler
//! holds back nothing but its own batch.

use std::collections::BTreeSet;

/// The delivery tags handed to batches and not yet settled, on one channel.
#[derive(Debug, Default)]
pub(crate) struct AckWindow {
    in_hand: BTreeSet<u64>,
}

/// How to ack the deliveries of a finished batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Acks {
    /// One `basic.ack` with `multiple` up to this tag: it covers exactly the batch.
    UpTo(u64),
    /// Each of these tags on its own.
    Each(Vec<u64>),
}

impl AckWindow {
    /// `tags` were handed to a batch.
    pub(crate) fn taken(&mut self, tags: impl IntoIterator<Item = u64>) {
        self.in_hand.extend(tags);
    }

    /// How many deliveries batches hold now.
    pub(crate) fn len(&self) -> usize {
        self.in_hand.len()
    }

    /// A batch is done: `settled` are all its tags, `acked` those of them to ack
    /// (the rest were nacked, before this). Says how to send the acks; send them
    /// before the next call, in the order the calls were made.
    pub(crate) fn settle(&mut self, settled: &[u64], acked: &[u64]) -> Acks {
        for tag in settled {
            self.in_hand.remove(tag);
        }
        let Some(&highest) = acked.iter().max() else {
            return Acks::Each(Vec::new());
        };
        // Every tag below `highest` that is not in hand has been acked or nacked
        // already (by this batch or an earlier call), so a multiple-ack reaches only
        // this batch's acked deliveries.
        let below_all_settled = self.in_hand.first().is_none_or(|&lowest| lowest > highest);
        if acked.len() > 1 && below_all_settled {
            Acks::UpTo(highest)
        } else {
            Acks::Each(acked.to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_with_nothing_below_it_in_hand_is_acked_at_once() {
        let mut window = AckWindow::default();
        window.taken(1..=4);
        assert_eq!(window.settle(&[1, 2, 3, 4], &[1, 2, 3, 4]), Acks::UpTo(4));
    }

    #[test]
    fn a_batch_that_finishes_first_acks_its_own_one_by_one() {
        let mut window = AckWindow::default();
        window.taken(1..=3);
        window.taken(4..=6);
        assert_eq!(
            window.settle(&[4, 5, 6], &[4, 5, 6]),
            Acks::Each(vec![4, 5, 6])
        );
        // The earlier batch, once done, covers only itself: 4-6 are acked already.
        assert_eq!(window.settle(&[1, 2, 3], &[1, 2, 3]), Acks::UpTo(3));
    }

    #[test]
    fn a_later_batch_still_in_hand_does_not_stop_a_multiple_ack() {
        let mut window = AckWindow::default();
        window.taken(1..=3);
        window.taken(4..=6);
        assert_eq!(window.settle(&[1, 2, 3], &[1, 2, 3]), Acks::UpTo(3));
    }

    #[test]
    fn nacked_deliveries_are_settled_but_not_acked() {
        let mut window = AckWindow::default();
        window.taken(1..=4);
        // 4 was nacked (back to the queue) before the acks go out; a multiple-ack up
        // to 3 leaves it alone.
        assert_eq!(window.settle(&[1, 2, 3, 4], &[1, 2, 3]), Acks::UpTo(3));
        window.taken(5..=6);
        assert_eq!(window.settle(&[5, 6], &[]), Acks::Each(vec![]));
    }

    #[test]
    fn a_single_ack_is_sent_plain() {
        let mut window = AckWindow::default();
        window.taken([7]);
        assert_eq!(window.settle(&[7], &[7]), Acks::Each(vec![7]));
    }
}
