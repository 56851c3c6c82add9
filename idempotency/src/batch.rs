//! Deliveries that arrived together, run through the inbox in one transaction.
//!
//! A transaction per delivery costs one commit, one flush of PostgreSQL's
//! write-ahead log, per message; on this project's 2-core machine that flush, not
//! the handler, bounded the consumer. Here a batch pays one: the keys are claimed in
//! one statement, the handlers run, duplicates are counted and results stored in
//! one statement each, then one commit.
//!
//! A handler that fails must take nothing of the others' with it. The first pass
//! runs the handlers back to back; if one fails, the whole transaction rolls back
//! (nothing of it ever committed) and a second pass runs the others again, each in a
//! savepoint of its own, so that a second failure rolls back only itself. The
//! failed handler is not run again: its failure is its outcome. So a batch whose
//! handlers succeed pays no savepoint, and no handler runs more than twice.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use txoutbox::reach::Explainer;

use crate::context::Context;
use crate::decision::Failure;
use crate::envelope::Envelope;
use crate::handler::{Call, Route};

/// A decoded delivery with its handler, ready to run (twice, if a second pass
/// needs it).
pub(crate) struct Prepared {
    envelope: Envelope,
    route: Arc<dyn Route>,
    /// The handler with its payload, decoded when the delivery was checked; taken
    /// by the first run, decoded again for a second.
    call: Mutex<Option<Box<dyn Call>>>,
    span: tracing::Span,
}

impl Prepared {
    pub(crate) fn new(
        envelope: Envelope,
        route: Arc<dyn Route>,
        call: Box<dyn Call>,
        span: tracing::Span,
    ) -> Self {
        Self {
            envelope,
            route,
            call: Mutex::new(Some(call)),
            span,
        }
    }

    fn key(&self) -> (&str, &str) {
        (&self.envelope.saga_id, &self.envelope.step)
    }

    fn call(&self) -> Result<Box<dyn Call>, Failure> {
        let decoded = self.call.lock().expect("never poisoned").take();
        match decoded {
            Some(call) => Ok(call),
            None => self
                .route
                .prepare(&self.envelope)
                .map_err(Failure::BadPayload),
        }
    }
}

/// What became of a delivery whose handling committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Took {
    /// Its handler ran and its effect committed with its key.
    Effect,
    /// Its key was there already: no effect, the duplicate counted.
    Duplicate,
}

/// Runs `batch` (no key twice: see [`split_repeats`]) for inbox `consumer`, and
/// says what became of each, in order.
pub(crate) async fn run(
    pool: &PgPool,
    explainer: &Explainer,
    consumer: &str,
    batch: Vec<Prepared>,
) -> Vec<Result<Took, Failure>> {
    let mut outcomes: Vec<Option<Result<Took, Failure>>> = batch.iter().map(|_| None).collect();
    let everyone: Vec<usize> = (0..batch.len()).collect();
    let mut ended = transaction(pool, consumer, &batch, &everyone, &mut outcomes, false).await;
    // A batch of one needs no second pass: its rollback was all the isolation there
    // is to have, as with a transaction per message.
    if matches!(ended, Ok(Ended::HandlerFailed)) && batch.len() > 1 {
        let others: Vec<usize> = (0..batch.len())
            .filter(|&index| !matches!(outcomes[index], Some(Err(_))))
            .collect();
        for index in &others {
            outcomes[*index] = None;
        }
        ended = transaction(pool, consumer, &batch, &others, &mut outcomes, true).await;
    }
    if let Err(error) = &ended
        && let Some(unreachable) = explainer.explain(pool, error).await
    {
        tracing::warn!(%unreachable, %consumer, "the inbox's database cannot be used; the batch goes back to its queue");
    }
    outcomes
        .into_iter()
        .map(|outcome| match (outcome, &ended) {
            // A handler that failed failed, whatever became of the transaction.
            (Some(Err(failure)), _) => Err(failure),
            (outcome, Ok(Ended::Committed)) => outcome.unwrap_or(Ok(Took::Effect)),
            // Not reached (only a batch of one ends with a failed handler, and its
            // one outcome is that failure), but if it were: rolled back, so again.
            (_, Ok(Ended::HandlerFailed)) => Err(Failure::Database(Arc::new(
                sqlx::Error::Protocol("rolled back with its batch".into()),
            ))),
            // Nothing of the batch committed: the others go again, the database's fault.
            (_, Err(error)) => Err(Failure::Database(Arc::clone(error))),
        })
        .collect()
}

/// How a pass over a batch ended, short of a database failure.
enum Ended {
    Committed,
    /// A handler failed in a pass without savepoints: nothing committed.
    HandlerFailed,
}

/// A prepared delivery with its place in the batch as received.
pub(crate) type Placed = (usize, Prepared);

/// Splits a batch so that no key appears twice in one transaction: the first of
/// each key stays, later ones go to the next batch, which runs after this one's
/// commit and finds the key (or, if the first failed, runs its handler itself).
pub(crate) fn split_repeats(batch: Vec<Placed>) -> (Vec<Placed>, Vec<Placed>) {
    let mut seen = HashSet::new();
    let first: Vec<bool> = batch
        .iter()
        .map(|(_, prepared)| seen.insert(prepared.key()))
        .collect();
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for (placed, first) in batch.into_iter().zip(first) {
        if first {
            now.push(placed)
        } else {
            later.push(placed)
        }
    }
    (now, later)
}

/// The keys of a batch, as the array parameters of the inbox statements, borrowed
/// from the batch's envelopes.
#[derive(Default)]
struct Keys<'a> {
    saga_ids: Vec<&'a str>,
    steps: Vec<&'a str>,
}

impl<'a> Keys<'a> {
    fn push(&mut self, (saga_id, step): (&'a str, &'a str)) {
        self.saga_ids.push(saga_id);
        self.steps.push(step);
    }
}

/// The keys a claim recorded: steps by saga id, to look up without allocating.
type Claimed = HashMap<String, HashSet<String>>;

/// One pass: the deliveries of `batch` at `indexes`, in one transaction, each
/// handler in a savepoint if `savepoints`. Without, the first failing handler ends
/// the pass and the transaction rolls back.
async fn transaction(
    pool: &PgPool,
    consumer: &str,
    batch: &[Prepared],
    indexes: &[usize],
    outcomes: &mut [Option<Result<Took, Failure>>],
    savepoints: bool,
) -> Result<Ended, Arc<sqlx::Error>> {
    let mut keys = Keys::default();
    let mut message_ids = Vec::with_capacity(indexes.len());
    for &index in indexes {
        keys.push(batch[index].key());
        message_ids.push(batch[index].envelope.message_id.as_deref());
    }
    let mut tx = pool.begin().await?;
    let claimed = claim(&mut tx, consumer, &keys, &message_ids).await?;
    let (mut duplicates, mut released) = (Keys::default(), Keys::default());
    let (mut stored, mut results) = (Keys::default(), Vec::new());
    for &index in indexes {
        let prepared = &batch[index];
        let key = prepared.key();
        if !claimed
            .get(key.0)
            .is_some_and(|steps| steps.contains(key.1))
        {
            duplicates.push(key);
            outcomes[index] = Some(Ok(Took::Duplicate));
            continue;
        }
        if savepoints {
            sqlx::query("SAVEPOINT inbox_message")
                .execute(&mut *tx)
                .await?;
        }
        match call(prepared, &mut tx).await {
            Ok(result) => {
                // A null result needs no statement: the column is NULL already.
                if !result.is_null() {
                    stored.push(key);
                    results.push(result);
                }
                outcomes[index] = Some(Ok(Took::Effect));
            }
            Err(failure) => {
                outcomes[index] = Some(Err(failure));
                if !savepoints {
                    return Ok(Ended::HandlerFailed); // dropped: the transaction rolls back
                }
                sqlx::query("ROLLBACK TO SAVEPOINT inbox_message")
                    .execute(&mut *tx)
                    .await?;
                released.push(key);
            }
        }
    }
    count_duplicates(&mut tx, consumer, &duplicates).await?;
    store_results(&mut tx, consumer, &stored, results).await?;
    release(&mut tx, consumer, &released).await?;
    tx.commit().await?;
    Ok(Ended::Committed)
}

/// Records the batch's keys in one statement, in key order (so two batches that
/// share keys wait on each other instead of deadlocking), and returns those this
/// transaction recorded. A key another transaction holds uncommitted is waited for:
/// found if that one commits, claimed here if it rolls back.
async fn claim(
    conn: &mut PgConnection,
    consumer: &str,
    keys: &Keys<'_>,
    message_ids: &[Option<&str>],
) -> sqlx::Result<Claimed> {
    let claimed: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO inbox (consumer, saga_id, step, message_id)
         SELECT $1, k.saga_id, k.step, k.message_id
         FROM unnest($2::text[], $3::text[], $4::text[]) AS k (saga_id, step, message_id)
         ORDER BY k.saga_id, k.step
         ON CONFLICT (consumer, saga_id, step) DO NOTHING
         RETURNING saga_id, step",
    )
    .bind(consumer)
    .bind(&keys.saga_ids)
    .bind(&keys.steps)
    .bind(message_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_saga = Claimed::new();
    for (saga_id, step) in claimed {
        by_saga.entry(saga_id).or_default().insert(step);
    }
    Ok(by_saga)
}

/// Counts each duplicate on its key, so support can see it came back. Rows are
/// locked in key order first, like the claim; the UPDATE then finds them by key, so
/// that a count another transaction committed meanwhile is added to, not lost (by
/// row address, the UPDATE would look for the version its snapshot saw, and miss it).
async fn count_duplicates(
    conn: &mut PgConnection,
    consumer: &str,
    keys: &Keys<'_>,
) -> sqlx::Result<()> {
    if keys.saga_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH locked AS (
             SELECT i.saga_id, i.step FROM inbox i
             JOIN unnest($2::text[], $3::text[]) AS k (saga_id, step)
               ON i.saga_id = k.saga_id AND i.step = k.step
             WHERE i.consumer = $1
             ORDER BY i.saga_id, i.step
             FOR UPDATE OF i)
         UPDATE inbox AS i SET duplicates = i.duplicates + 1, last_duplicate_at = now()
         FROM locked
         WHERE i.consumer = $1 AND i.saga_id = locked.saga_id AND i.step = locked.step",
    )
    .bind(consumer)
    .bind(&keys.saga_ids)
    .bind(&keys.steps)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores what the handlers returned, for duplicates to be handed.
async fn store_results(
    conn: &mut PgConnection,
    consumer: &str,
    keys: &Keys<'_>,
    results: Vec<serde_json::Value>,
) -> sqlx::Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE inbox AS i SET result = r.result
         FROM unnest($2::text[], $3::text[], $4::jsonb[]) AS r (saga_id, step, result)
         WHERE i.consumer = $1 AND i.saga_id = r.saga_id AND i.step = r.step",
    )
    .bind(consumer)
    .bind(&keys.saga_ids)
    .bind(&keys.steps)
    .bind(results)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Gives back the keys of handlers that failed: their savepoints rolled back the
/// effect but not the key, which the claim recorded before them.
async fn release(conn: &mut PgConnection, consumer: &str, keys: &Keys<'_>) -> sqlx::Result<()> {
    if keys.saga_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM inbox
         WHERE consumer = $1 AND (saga_id, step) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
    )
    .bind(consumer)
    .bind(&keys.saga_ids)
    .bind(&keys.steps)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Runs one handler on the transaction, in its message's span.
///
/// A panic is the handler failing: its savepoint (or transaction) rolls back and
/// the message takes the retry path to the dead queue. Left to unwind, it would kill
/// the task with the batch unacked, holding prefetch slots, and panic again after
/// every restart. Unwind safety holds: what the handler may leave half-changed is
/// the transaction, rolled back. The call is inside the block, so a panic before the
/// future is caught too.
async fn call(prepared: &Prepared, conn: &mut PgConnection) -> Result<serde_json::Value, Failure> {
    let call = prepared.call()?;
    let envelope = &prepared.envelope;
    let run = AssertUnwindSafe(async { call.call(Context::new(envelope, conn)).await });
    async {
        run.catch_unwind().await.unwrap_or_else(|payload| {
            let message = txoutbox::panic::message(&*payload);
            tracing::error!(panic = message, "handler panicked");
            Err(Failure::Handler(
                format!("handler panicked: {message}").into(),
            ))
        })
    }
    .instrument(prepared.span.clone())
    .await
}
