//! Waiting for work without polling hard: the doorbell and the fallback poll.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

/// Channel the `outbox_ring_doorbell` trigger notifies.
const CHANNEL: &str = "outbox_ready";

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

    /// Waits for a ring, `poll_interval`, or shutdown, whichever comes first. It does
    /// not connect: [`Doorbell::listen`] comes first, before writers are asked to
    /// ring, and a listener it could not connect leaves the fallback poll alone.
    pub(crate) async fn wait(&mut self, poll_interval: Duration, shutdown: &CancellationToken) {
        let Some(listener) = self.listener.as_mut() else {
            // No listener: the fallback poll alone keeps the relay going.
            tokio::select! {
                () = tokio::time::sleep(poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
            return;
        };
        tokio::select! {
            ring = listener.recv() => {
                if let Err(error) = ring {
                    tracing::debug!(%error, "doorbell listener lost; polling until it is back");
                    self.listener = None;
                }
            }
            () = tokio::time::sleep(poll_interval) => {}
            () = shutdown.cancelled() => {}
        }
        // One ring is enough: drop the others queued behind it.
        if let Some(listener) = self.listener.as_mut() {
            while listener.next_buffered().is_some() {}
        }
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
