//! Finding the refused rows among the unconfirmed ones, and publishing the rest.
//!
//! When the broker closes a channel on a message (see `refusal`), it does not say
//! which one, and every publish still unconfirmed on that channel is lost with it.
//! Those rows are published again here, in seq order, on fresh channels, in halves
//! of a group whose channel was closed until the refused row stands alone: it alone
//! is charged an attempt, the others are sent as usual. One refused row among `n`
//! costs about `2·log2(n)` extra round trips, and no attempt of any other row.
//!
//! Rows that were refused or nacked before (`attempts > 0`) are published here too,
//! apart from the main channel, so that a row that keeps being refused closes only
//! a channel of its own.

use std::collections::{HashSet, VecDeque};

use lapin::{Channel, Connection};

use crate::broker;
use crate::error::{Error, Result};
use crate::publish::publish_batch;
use crate::settle::{self, Settled, settle};
use crate::shared::Shared;
use crate::store::OutboxRow;
use crate::validate::prepare;

/// Publishes `lost` then `apart` (each in seq order) so that only refused rows are
/// charged. `lost` were on a channel the broker closed on one of them, so the search
/// starts with their halves instead of publishing them all again; `apart` were
/// refused before and go as one group after them.
///
/// A row of an ordering key whose earlier row was charged here is not published: it
/// stays pending and waits behind that row, as the claim query makes it wait.
pub(crate) async fn isolate(
    shared: &Shared,
    connection: &Connection,
    mut lost: Vec<OutboxRow>,
    apart: Vec<OutboxRow>,
) -> Result<()> {
    let frame_max = connection.configuration().frame_max();
    let second = lost.split_off(lost.len() / 2);
    let mut groups = VecDeque::from([lost, second, apart]);
    let mut held: HashSet<String> = HashSet::new();
    let mut open: Option<Channel> = None;
    while let Some(group) = groups.pop_front() {
        let group: Vec<OutboxRow> = group
            .into_iter()
            .filter(|row| !held.contains(&row.ordering_key))
            .collect();
        if group.is_empty() {
            continue;
        }
        let channel = match open.take() {
            Some(channel) => channel,
            None => broker::confirm_channel(connection).await?,
        };
        let prepared = prepare(group, frame_max);
        let parked: Vec<_> = prepared
            .invalid
            .into_iter()
            .map(|(row, refusal)| {
                held.insert(row.ordering_key.clone());
                settle::park(shared, &row, refusal)
            })
            .collect();
        settle::record(shared, &parked).await?;
        let exchange = &shared.config.exchange;
        let publishes =
            publish_batch(&channel, exchange, &prepared.rows, prepared.properties).await;
        let Settled {
            mut suspects,
            refusal,
            gone,
            charged_keys,
        } = settle(shared, prepared.rows, publishes).await?;
        held.extend(charged_keys);
        if suspects.is_empty() {
            open = Some(channel);
            continue;
        }
        let Some(refusal) = refusal else {
            // The channel went away without a word about a message: not a refusal.
            return Err(gone.map_or(Error::Unconfirmed, Error::Broker));
        };
        if suspects.len() == 1 {
            let row = suspects.remove(0);
            held.insert(row.ordering_key.clone());
            let failure = settle::charge(shared, &row, refusal);
            settle::record(shared, &[failure]).await?;
            continue;
        }
        let second = suspects.split_off(suspects.len() / 2);
        groups.push_front(second);
        groups.push_front(suspects);
    }
    Ok(())
}
