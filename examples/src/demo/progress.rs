//! How far the saga has got, read from the databases while it runs.

use super::databases::DemoDatabases;
use super::saga::Service;

/// A snapshot of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Orders placed so far.
    pub placed: i64,
    /// Orders shipped.
    pub shipped: i64,
    /// Orders cancelled (payment failed, stock released).
    pub cancelled: i64,
    /// Outbox rows confirmed by the broker, all services.
    pub sent: i64,
    /// Outbox rows not yet confirmed, all services.
    pub unsent: i64,
}

impl Progress {
    /// Reads the snapshot.
    pub async fn read(databases: &DemoDatabases) -> anyhow::Result<Self> {
        let (placed, shipped, cancelled): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'shipped'),
                    count(*) FILTER (WHERE status = 'cancelled') FROM orders",
        )
        .fetch_one(databases.pool(Service::Order))
        .await?;
        let mut progress = Self {
            placed,
            shipped,
            cancelled,
            ..Self::default()
        };
        for service in Service::ALL {
            let (sent, unsent): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state = 'sent'),
                        count(*) FILTER (WHERE state <> 'sent') FROM outbox",
            )
            .fetch_one(databases.pool(service))
            .await?;
            progress.sent += sent;
            progress.unsent += unsent;
        }
        Ok(progress)
    }

    /// Orders in a final state.
    pub fn finished(&self) -> i64 {
        self.shipped + self.cancelled
    }

    /// Every order placed and finished, and nothing left in any outbox.
    pub fn complete(&self, orders: u32) -> bool {
        self.placed == i64::from(orders) && self.finished() == self.placed && self.unsent == 0
    }
}
