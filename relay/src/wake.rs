//! Waiting for work without polling hard: the doorbell and the fallback poll.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

/// Channel the `outbox_fill_defaults` trigger notifies.
const CHANNEL: &str = "outbox_ready";

/// First key of the advisory locks an idle relay holds, one per partition (the
/// second key): 'outb' in ASCII. A writer's row that cannot take its partition's
/// lock rings (migration `20261201000002`).
const DOORBELL_LOCK: i32 = 0x6f75_7462;

/// Gives back every advisory lock the listener's session holds: the doorbell's.
const UNLOCK_ALL: &str = "SELECT pg_advisory_unlock_all()";

/// How long giving back the doorbell's locks may take before a failed listener is
/// dropped anyway.
const FORGET_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether writers will ring for every partition the relay publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Armed {
    /// For every one: a row of any of them wakes the relay.
    All,
    /// Not for all: a writer's transaction holds the lock of one of them, so its
    /// rows, visible when it commits, ring no bell. Look again soon.
    Partly,
    /// Not at all: no listener.
    No,
}

/// Listens on the doorbell channel. Notifications can be lost while the listener
/// reconnects (sqlx #447), which is why every wait also ends at the fallback poll.
pub(crate) struct Doorbell {
    pool: PgPool,
    listener: Option<PgListener>,
}

impl Doorbell {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            listener: None,
        }
    }

    /// Listens from now on, connecting the listener if it is not. Call it before
    /// asking writers to ring: a ring sent before the `LISTEN` is lost, and the relay
    /// would sleep until the fallback poll with work waiting.
    pub(crate) async fn listen(&mut self) {
        if self.listener.is_none() {
            self.listener = self.connect().await;
        }
    }

    /// Asks writers to ring for `partitions`: takes, on the listener's connection,
    /// the lock each of their rows tries to share. Call it after
    /// [`Doorbell::listen`], and look for rows once more after it: a row whose
    /// writer committed before rang no bell. [`Doorbell::disarm`] undoes it.
    pub(crate) async fn arm(&mut self, partitions: &[i16]) -> Armed {
        let Some(listener) = self.listener.as_mut() else {
            return Armed::No;
        };
        let refused: sqlx::Result<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($2::smallint[]) AS p
             WHERE NOT pg_try_advisory_lock($1, p)",
        )
        .bind(DOORBELL_LOCK)
        .bind(partitions)
        .fetch_one(&mut *listener)
        .await;
        match refused {
            Ok(0) => Armed::All,
            Ok(_) => Armed::Partly,
            Err(error) => {
                tracing::debug!(%error, "cannot arm the doorbell; polling until the listener is back");
                self.forget().await;
                Armed::No
            }
        }
    }

    /// Stops writers ringing: a relay at work polls, and a NOTIFY in every writer's
    /// commit would serialize their commits.
    pub(crate) async fn disarm(&mut self) {
        let Some(listener) = self.listener.as_mut() else {
            return; // forgotten, with its locks given back
        };
        if let Err(error) = sqlx::query(UNLOCK_ALL).execute(&mut *listener).await {
            tracing::debug!(%error, "cannot disarm the doorbell; dropping the listener");
            self.forget().await;
        }
    }

    /// Drops the listener after a failure. Its connection goes back to the pool, not
    /// away, and advisory locks held by a session outlive a failed statement: so the
    /// doorbell's locks are given back first, if the connection answers. Left held,
    /// they would make every writer ring, busy relay or not.
    async fn forget(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let unlock = sqlx::query(UNLOCK_ALL).execute(&mut listener);
            if let Ok(Err(error)) = tokio::time::timeout(FORGET_TIMEOUT, unlock).await {
                tracing::debug!(%error, "cannot give back the doorbell's locks");
            }
        }
    }

    /// Waits for a ring, `poll_interval`, shutdown, or the loss of the listener's
    /// connection (with the doorbell's locks), whichever comes first. It does
    /// not connect: [`Doorbell::listen`] comes first, before writers are asked to
    /// ring, and a listener it could not connect leaves the fallback poll alone.
    /// True if a writer rang.
    pub(crate) async fn wait(
        &mut self,
        poll_interval: Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(listener) = self.listener.as_mut() else {
            // No listener: the fallback poll alone keeps the relay going.
            tokio::select! {
                () = tokio::time::sleep(poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
            return false;
        };
        let rang = tokio::select! {
            ring = listener.try_recv() => match ring {
                Ok(Some(_)) => true,
                // Its connection was lost, and the doorbell's locks with it: writers
                // no longer ring, so wake to look and arm again (on a new one).
                Ok(None) => {
                    tracing::debug!("doorbell listener reconnected; arming again");
                    false
                }
                Err(error) => {
                    tracing::debug!(%error, "doorbell listener lost; polling until it is back");
                    self.forget().await;
                    false
                }
            },
            () = tokio::time::sleep(poll_interval) => false,
            () = shutdown.cancelled() => false,
        };
        // One ring is enough: drop the others queued behind it.
        if let Some(listener) = self.listener.as_mut() {
            while listener.next_buffered().is_some() {}
        }
        rang
    }

    async fn connect(&self) -> Option<PgListener> {
        let result = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match result {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for the doorbell; relying on the fallback poll");
                None
            }
        }
    }
}
