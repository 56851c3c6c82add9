//! Looks for stuck choreographed sagas in the background, every half minute: the look
//! groups a lookback's inbox records by saga, too much to do on every load of the home
//! page, which shows the last answer and its age instead.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::read::stuck::{self, StuckReport, StuckRules};
use super::state::Console;

/// Time between two looks.
const EVERY: Duration = Duration::from_secs(30);

/// Looks until `shutdown`.
pub(crate) async fn stuck_sagas(console: Arc<Console>, shutdown: CancellationToken) {
    loop {
        let rules = StuckRules {
            stuck_after: console.stuck_after,
            lookback: console.lookback,
            final_steps: &console.final_steps,
        };
        let sagas = stuck::find(&console.services, &rules).await;
        *console.stuck.write().await = Some(StuckReport {
            checked_at: Utc::now(),
            sagas,
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}
