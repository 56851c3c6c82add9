//! Spreading ordering keys over relay instances.
//!
//! Keys hash into 64 partitions (`outbox.partition`). An instance publishes only the
//! partitions it holds an unexpired lease on, so each key has one publisher at a
//! time and its order holds across instances. Every heartbeat an instance renews its
//! leases, counts the live instances, and takes or gives back partitions towards a
//! fair share. A partition given back stays unowned for a grace period (the confirm
//! timeout), so the giver's last batches settle before another instance starts on
//! it; a dead instance's partitions are free once its leases expire.
//!
//! Leases are owned by instance id, so two processes given the same id would both
//! renew them and both publish. Each run therefore stamps the instance row with its
//! own token (`incarnation`); a run that finds another live run's token on its id
//! holds nothing and stands by, and takes over only once that run has left or its
//! heartbeat is older than the lease time, or once that run's database session is
//! gone: a run holds a session-level advisory lock on its id ([`LIVENESS_LOCK`]) for
//! as long as it holds the id, so a run killed with its process (a crash, `kill -9`,
//! a restart of the same relay under a fixed id) frees the id at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::types::PgInterval;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use txoutbox::postgres::interval;
use uuid::Uuid;

use crate::error::Result;

/// First key of the advisory lock a run holds on its instance id, in the two-key
/// form `(LIVENESS_LOCK, hashtext(instance_id))`, next to the doorbell's.
pub(crate) const LIVENESS_LOCK: i32 = 1869968483;

/// How long opening the liveness connection, or one question on it, may take: a
/// half-open socket must not hold up the heartbeat.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the liveness lock could not be asked about this time.
#[derive(Debug, thiserror::Error)]
enum LivenessError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("timed out")]
    Timeout(#[from] tokio::time::error::Elapsed),
}

/// Partitions in the schema (`outbox_partition_of`).
pub(crate) const PARTITIONS: i64 = 64;

/// What one heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseReport {
    pub(crate) held: usize,
    pub(crate) live_instances: i64,
    /// Another live run holds this instance id: this one holds nothing.
    pub(crate) standing_by: bool,
}

pub(crate) struct Leases {
    pool: PgPool,
    /// Partitions held after the last heartbeat, for the publishing session.
    owned: watch::Sender<Arc<[i16]>>,
    instance_id: String,
    /// This run's token on the instance row.
    incarnation: Uuid,
    /// Whether the last heartbeat found the instance row stamped with this run's
    /// token: false at start and while another run holds the id.
    holding: AtomicBool,
    /// Whether another run holds the id, as of the last heartbeat: said once.
    standing_by: AtomicBool,
    /// A connection of this run's own, and whether it holds the liveness lock.
    liveness: tokio::sync::Mutex<Option<(PgConnection, bool)>>,
    hostname: String,
    ttl: PgInterval,
    grace: PgInterval,
}

impl Leases {
    pub(crate) fn new(
        pool: PgPool,
        instance_id: String,
        hostname: String,
        ttl: Duration,
        grace: Duration,
    ) -> Self {
        let owned = watch::Sender::new(Arc::from(Vec::new()));
        Self {
            pool,
            owned,
            instance_id,
            incarnation: Uuid::now_v7(),
            holding: AtomicBool::new(false),
            standing_by: AtomicBool::new(false),
            liveness: tokio::sync::Mutex::new(None),
            hostname,
            ttl: interval(ttl),
            grace: interval(grace),
        }
    }

    /// This run's token on the instance row, which fences its claims.
    pub(crate) fn incarnation(&self) -> Uuid {
        self.incarnation
    }

    /// The partitions held as of the last heartbeat, in ascending order.
    pub(crate) fn owned(&self) -> Arc<[i16]> {
        Arc::clone(&self.owned.borrow())
    }

    /// Is told when the partitions held change, from now on: a sleeping relay has
    /// armed its doorbell only for those it held when it went to sleep.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<[i16]>> {
        self.owned.subscribe()
    }

    /// Renews this instance's presence and leases, then moves towards a fair share;
    /// or, if another live run holds this instance id, gives up whatever it held.
    pub(crate) async fn heartbeat(&self) -> Result<LeaseReport> {
        let no_other_session = self.hold_liveness_lock().await;
        if !self.claim_instance(no_other_session).await? {
            return self.stand_by().await;
        }
        if self.standing_by.swap(false, Ordering::Relaxed) {
            tracing::warn!(instance = %self.instance_id, "the other relay with this instance id is gone; this one takes over");
        }
        if !self.holding.load(Ordering::Relaxed) && !no_other_session {
            // Leases left under this id by an earlier run whose session may still be
            // alive are not renewed but wait out their time: it may still be
            // settling. (A run whose session is gone settles nothing more: its
            // leases are renewed at once, as by the same run.) Marked as holding
            // only once done, so a failure here is tried again.
            sqlx::query("UPDATE outbox_relay_lease SET owner = NULL WHERE owner = $1")
                .bind(&self.instance_id)
                .execute(&self.pool)
                .await?;
        }
        self.holding.store(true, Ordering::Relaxed);

        let renewed: Vec<i16> = sqlx::query_scalar(
            "UPDATE outbox_relay_lease SET expires_at = now() + $2
             WHERE owner = $1 AND expires_at > now() RETURNING partition",
        )
        .bind(&self.instance_id)
        .bind(self.ttl)
        .fetch_all(&self.pool)
        .await?;
        let live_instances: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_relay_instance WHERE heartbeat_at > now() - $1",
        )
        .bind(self.ttl)
        .fetch_one(&self.pool)
        .await?;

        let fair_share = fair_share(live_instances.max(1));
        let held = renewed.len() as i64;
        let held = if held < fair_share {
            held + self.acquire(fair_share - held).await?
        } else if held > fair_share {
            held - self.release(held - fair_share, self.grace).await?
        } else {
            held
        };
        let owned: Vec<i16> = sqlx::query_scalar(
            "SELECT partition FROM outbox_relay_lease
             WHERE owner = $1 AND expires_at > now() ORDER BY partition",
        )
        .bind(&self.instance_id)
        .fetch_all(&self.pool)
        .await?;
        self.owned.send_if_modified(|current| {
            let changed = **current != *owned;
            if changed {
                *current = Arc::from(owned);
            }
            changed
        });
        Ok(LeaseReport {
            held: held as usize,
            live_instances,
            standing_by: false,
        })
    }

    /// Takes (or checks that this run still holds) the advisory lock on this instance
    /// id, on a connection of its own: true if no other session holds it. A lost
    /// connection is opened again at once, once; any other failure proves nothing
    /// and says false.
    async fn hold_liveness_lock(&self) -> bool {
        let mut slot = self.liveness.lock().await;
        for _ in 0..2 {
            match self.ask_liveness_lock(&mut slot).await {
                Ok(held) => return held,
                Err(_) => *slot = None,
            }
        }
        false
    }

    async fn ask_liveness_lock(
        &self,
        slot: &mut Option<(PgConnection, bool)>,
    ) -> std::result::Result<bool, LivenessError> {
        if slot.is_none() {
            // Not from the pool: the pool would wait up to its acquire timeout when
            // busy, and it must not hand this session to anyone else.
            let options = self.pool.connect_options();
            let connecting = PgConnection::connect_with(options.as_ref());
            let connection = tokio::time::timeout(LIVENESS_TIMEOUT, connecting).await??;
            *slot = Some((connection, false));
        }
        let (connection, held) = slot.as_mut().expect("filled above");
        let asking = async {
            if *held {
                sqlx::query_scalar::<_, bool>("SELECT true")
                    .fetch_one(&mut *connection)
                    .await
            } else {
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                    .bind(LIVENESS_LOCK)
                    .bind(&self.instance_id)
                    .fetch_one(&mut *connection)
                    .await
            }
        };
        let now = tokio::time::timeout(LIVENESS_TIMEOUT, asking).await??;
        *held = now;
        Ok(now)
    }

    /// Writes this run's heartbeat on the instance row: true if the row is this run's
    /// (new, already stamped with its token, or taken over from a run gone stale, or
    /// from one whose session is gone while `no_other_session`), false if another run
    /// of the same instance id heartbeats it. The lock proves nothing against a row
    /// of an earlier release (no token), whose relays do not take it.
    async fn claim_instance(&self, no_other_session: bool) -> Result<bool> {
        let ours: Option<bool> = sqlx::query_scalar(
            "INSERT INTO outbox_relay_instance (instance_id, hostname, incarnation)
             SELECT $1, $2, $3
             -- No row and the lock held elsewhere: another run is starting.
             WHERE $5 OR EXISTS (SELECT 1 FROM outbox_relay_instance WHERE instance_id = $1)
             ON CONFLICT (instance_id) DO UPDATE SET
                 heartbeat_at = now(),
                 hostname = EXCLUDED.hostname,
                 incarnation = EXCLUDED.incarnation,
                 started_at = CASE
                     WHEN outbox_relay_instance.incarnation IS NOT DISTINCT FROM EXCLUDED.incarnation
                     THEN outbox_relay_instance.started_at ELSE now() END,
                 listening = CASE
                     WHEN outbox_relay_instance.incarnation IS NOT DISTINCT FROM EXCLUDED.incarnation
                     THEN outbox_relay_instance.listening ELSE false END,
                 standby_host = CASE
                     WHEN outbox_relay_instance.incarnation IS NOT DISTINCT FROM EXCLUDED.incarnation
                     THEN outbox_relay_instance.standby_host END,
                 standby_seen_at = CASE
                     WHEN outbox_relay_instance.incarnation IS NOT DISTINCT FROM EXCLUDED.incarnation
                     THEN outbox_relay_instance.standby_seen_at END
             WHERE outbox_relay_instance.incarnation IS NOT DISTINCT FROM EXCLUDED.incarnation
                OR outbox_relay_instance.heartbeat_at <= now() - $4
                OR ($5 AND outbox_relay_instance.incarnation IS NOT NULL)
             RETURNING true",
        )
        .bind(&self.instance_id)
        .bind(&self.hostname)
        .bind(self.incarnation)
        .bind(self.ttl)
        .bind(no_other_session)
        .fetch_optional(&self.pool)
        .await?;
        Ok(ours.is_some())
    }

    /// Another run heartbeats this instance id: hold nothing, renew nothing, say so
    /// once, with where that run is, and leave word on its row for `status`.
    async fn stand_by(&self) -> Result<LeaseReport> {
        self.owned.send_if_modified(|current| {
            let changed = !current.is_empty();
            *current = Arc::from(Vec::new());
            changed
        });
        self.holding.store(false, Ordering::Relaxed);
        let (hostname, started_at, live_instances): (Option<String>, Option<String>, i64) =
            sqlx::query_as(
                "WITH holder AS (
                     UPDATE outbox_relay_instance SET standby_host = $3, standby_seen_at = now()
                     WHERE instance_id = $1 RETURNING hostname, started_at)
                 SELECT (SELECT hostname FROM holder), (SELECT started_at::text FROM holder),
                        (SELECT count(*) FROM outbox_relay_instance WHERE heartbeat_at > now() - $2)",
            )
            .bind(&self.instance_id)
            .bind(self.ttl)
            .bind(&self.hostname)
            .fetch_one(&self.pool)
            .await?;
        if !self.standing_by.swap(true, Ordering::Relaxed) {
            tracing::error!(
                instance = %self.instance_id,
                other_host = hostname.as_deref().unwrap_or("?"),
                other_started_at = started_at.as_deref().unwrap_or("?"),
                "another running relay uses this instance id, or an earlier run of this one \
                 did not stop cleanly; this one publishes nothing and stands by until that \
                 one stops or its heartbeat is older than the lease time. If two relays \
                 run, give each its own --instance-id (OUTBOX_INSTANCE_ID), or leave it unset"
            );
        }
        Ok(LeaseReport {
            held: 0,
            live_instances,
            standing_by: true,
        })
    }

    async fn acquire(&self, wanted: i64) -> Result<i64> {
        let taken = sqlx::query(
            "UPDATE outbox_relay_lease SET owner = $1, expires_at = now() + $2
             WHERE partition IN (SELECT partition FROM outbox_relay_lease
                                 WHERE expires_at < now()
                                 ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED)",
        )
        .bind(&self.instance_id)
        .bind(self.ttl)
        .bind(wanted)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() as i64)
    }

    async fn release(&self, count: i64, grace: PgInterval) -> Result<i64> {
        let released = sqlx::query(
            "UPDATE outbox_relay_lease SET owner = NULL, expires_at = now() + $3
             WHERE partition IN (SELECT partition FROM outbox_relay_lease WHERE owner = $1
                                 ORDER BY partition DESC LIMIT $2 FOR UPDATE)",
        )
        .bind(&self.instance_id)
        .bind(count)
        .bind(grace)
        .execute(&self.pool)
        .await?;
        Ok(released.rows_affected() as i64)
    }

    /// Gives back every lease at once and leaves the instance table: called after a
    /// clean drain, so others may start on the partitions immediately. A run standing
    /// by leaves alone the row and leases of the run that holds its instance id.
    pub(crate) async fn leave(&self) -> Result<()> {
        self.owned.send_replace(Arc::from(Vec::new()));
        // Closing the connection gives the liveness lock back.
        *self.liveness.lock().await = None;
        sqlx::query(
            "WITH ours AS (
                 DELETE FROM outbox_relay_instance
                 WHERE instance_id = $1 AND incarnation = $2 RETURNING instance_id)
             UPDATE outbox_relay_lease SET owner = NULL, expires_at = now()
             WHERE owner IN (SELECT instance_id FROM ours)",
        )
        .bind(&self.instance_id)
        .bind(self.incarnation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks this instance as sleeping with its doorbell armed, or not: for `status`
    /// and support. Writers do not read it; they try the doorbell's locks.
    pub(crate) async fn set_listening(&self, listening: bool) -> Result<()> {
        sqlx::query(
            "UPDATE outbox_relay_instance SET listening = $3
             WHERE instance_id = $1 AND incarnation = $2",
        )
        .bind(&self.instance_id)
        .bind(self.incarnation)
        .bind(listening)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Partitions per instance, rounded up so that together they cover all 64.
pub(crate) fn fair_share(live_instances: i64) -> i64 {
    (PARTITIONS + live_instances - 1) / live_instances
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn shares_cover_every_partition() {
        for live in 1..=70 {
            assert!(fair_share(live) * live >= 64, "{live}");
            assert!(
                (fair_share(live) - 1) * live < 64,
                "{live}: not the smallest share"
            );
        }
    }
}
