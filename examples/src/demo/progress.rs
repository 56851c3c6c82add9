//! How far the saga has got, read from the databases while it runs.

use super::databases::DemoDatabases;
use super::saga::{SagaMode, Service};

/// A snapshot of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Orders placed so far.
    pub placed: i64,
    /// Orders shipped (orchestration: sagas completed).
    pub shipped: i64,
    /// Orders cancelled, payment failed and stock released (orchestration: sagas
    /// compensated).
    pub cancelled: i64,
    /// Sagas `failed`, waiting for an operator (orchestration).
    pub failed: i64,
    /// Outbox rows confirmed by the broker, all services.
    pub sent: i64,
    /// Outbox rows not yet confirmed, all services.
    pub unsent: i64,
}

impl Progress {
    /// Reads the snapshot: the orders' statuses (choreography) or their sagas' states
    /// (orchestration), and every outbox.
    pub async fn read(databases: &DemoDatabases, mode: SagaMode) -> anyhow::Result<Self> {
        let order = databases.pool(Service::Order);
        let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(order)
            .await?;
        let (shipped, cancelled, failed): (i64, i64, i64) = match mode {
            SagaMode::Choreography => {
                sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE status = 'shipped'),
                            count(*) FILTER (WHERE status = 'cancelled'), 0::bigint FROM orders",
                )
                .fetch_one(order)
                .await?
            }
            SagaMode::Orchestration => {
                sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE state = 'completed'),
                            count(*) FILTER (WHERE state = 'compensated'),
                            count(*) FILTER (WHERE state = 'failed') FROM saga_instance",
                )
                .fetch_one(order)
                .await?
            }
        };
        let mut progress = Self {
            placed,
            shipped,
            cancelled,
            failed,
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
        self.shipped + self.cancelled + self.failed
    }

    /// Every order placed and finished, and nothing left in any outbox.
    pub fn complete(&self, orders: u32) -> bool {
        self.placed == i64::from(orders) && self.finished() == self.placed && self.unsent == 0
    }
}
