//! An idle relay's way to sleep: linger, arm the doorbell, look once more, sleep
//! until a ring, the fallback poll or a change of leases, then disarm.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{PEEK, Session};
use crate::error::{Error, Result};
use crate::wake::{Armed, Doorbell};

/// Quick looks for new rows before an idle relay arms the doorbell, so under steady
/// load it keeps polling instead of arming it for every message.
const LINGER: [Duration; 4] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
];

/// The first sleep of a relay whose doorbell a writer's open transaction kept from
/// being armed: that transaction's rows are visible when it commits, usually within
/// milliseconds.
pub(super) const FIRST_PARTLY_ARMED_PAUSE: Duration = Duration::from_millis(8);

impl Session<'_> {
    /// Idle: look again a few times in quick succession, then ask writers to ring
    /// and wait for a ring or the fallback poll.
    pub(super) async fn wait_for_work(
        &mut self,
        doorbell: &mut Doorbell,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        for pause in LINGER {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            if !self.fetch(0, PEEK).await?.is_empty() {
                return Ok(());
            }
        }
        let mut leases = self.shared.leases.watch();
        if *self.partitions != **leases.borrow_and_update() {
            return Ok(()); // the scan starts over on the partitions held now
        }
        // Listen before arming: a ring sent between arming and the LISTEN is lost.
        doorbell.listen().await;
        let armed = doorbell.arm(&self.partitions).await;
        let slept = self.sleep(doorbell, armed, &mut leases, shutdown).await;
        // Whatever ended the sleep: writers ring only while the relay sleeps. The
        // `listening` flag is only for `status`, so it is cleared alongside.
        let ((), unmarked) = tokio::join!(doorbell.disarm(), self.mark_listening(armed, false));
        slept.and(unmarked)
    }

    /// Shows this relay as sleeping (`listening`, for `status`), or no longer, if its
    /// doorbell is armed for every partition.
    async fn mark_listening(&self, armed: Armed, listening: bool) -> Result<()> {
        match armed {
            Armed::All => self.shared.leases.set_listening(listening).await,
            Armed::Partly | Armed::No => Ok(()),
        }
    }

    /// Sleeps as long as `armed` allows: until a ring or the fallback poll when
    /// writers ring for every partition; while a writer's transaction keeps one from
    /// being armed, only a little while, longer each time in case that transaction
    /// stays open. A change of the partitions held wakes it too: the doorbell is
    /// armed only for those held when it went to sleep. So does the loss of the
    /// broker connection, which ends the session.
    async fn sleep(
        &mut self,
        doorbell: &mut Doorbell,
        armed: Armed,
        leases_changed: &mut watch::Receiver<Arc<[i16]>>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let poll_interval = self.shared.config.poll_interval;
        let pause = match armed {
            Armed::All | Armed::No => poll_interval,
            Armed::Partly => {
                let pause = self.partly_armed_pause.min(poll_interval);
                self.partly_armed_pause = pause.saturating_mul(2);
                pause
            }
        };
        // One after the other: side by side they would need a pool connection more
        // than the relay's working set (see `warm`), on the way to sleep.
        self.mark_listening(armed, true).await?;
        // A row committed before the locks were taken rang no bell: look once more.
        if self.fetch(0, PEEK).await?.is_empty() {
            tokio::select! {
                _ = doorbell.wait(pause, shutdown) => {}
                Ok(()) = leases_changed.changed() => {}
                // Ends the session now, not at the next publish: until then the
                // relay would say ready without a broker.
                Ok(error) = &mut self.lost => return Err(Error::BrokerLostWhileIdle(error)),
            }
        }
        Ok(())
    }
}
