//! Where each saga of an example ended, and how it got there: its state and its
//! history from `saga_event`, printed as a timeline.

use std::fmt;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use txoutbox_saga::SagaState;

/// Where one order ended, and how it got there.
#[derive(Debug)]
pub struct SagaReport {
    /// `order-{order_id}`.
    pub saga_id: String,
    /// Its final state.
    pub state: SagaState,
    /// Its history, oldest first.
    pub history: Vec<HistoryRow>,
}

/// One row of `saga_event`.
#[derive(Debug, sqlx::FromRow)]
pub struct HistoryRow {
    /// When, as `HH:MM:SS.mmm`, and milliseconds since the saga started.
    pub at: String,
    /// Milliseconds since the saga started.
    pub since_start_ms: f64,
    /// `started`, `command_sent`, `reply`, `timeout`, ...
    pub kind: String,
    /// The step's name, when the event is a step's.
    pub step: Option<String>,
    /// `action` or `compensation`.
    pub phase: Option<String>,
    /// The state before, when the event moved the saga.
    pub from_state: Option<String>,
    /// The state after.
    pub to_state: Option<String>,
    /// The command sent, the reply's outcome, the reason.
    pub detail: Option<String>,
}

impl SagaReport {
    /// Saga `saga_id`'s state and history; `steps` names its steps by index.
    pub async fn read(pool: &PgPool, saga_id: String, steps: &[String]) -> anyhow::Result<Self> {
        let state: String =
            sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = $1")
                .bind(&saga_id)
                .fetch_one(pool)
                .await?;
        let history = sqlx::query_as(
            "SELECT to_char(occurred_at, 'HH24:MI:SS.MS') AS at,
                    (extract(epoch FROM occurred_at - min(occurred_at) OVER ()) * 1000)::float8
                        AS since_start_ms,
                    kind, ($2::text[])[step + 1] AS step, phase, from_state, to_state, detail
             FROM saga_event WHERE saga_id = $1 ORDER BY id",
        )
        .bind(&saga_id)
        .bind(steps)
        .fetch_all(pool)
        .await?;
        let state =
            SagaState::parse(&state).ok_or_else(|| anyhow::anyhow!("unknown state {state}"))?;
        Ok(Self {
            saga_id,
            state,
            history,
        })
    }
}

/// Waits until every saga of `saga_ids` is finished, for at most `limit`.
pub(crate) async fn wait_until_finished(
    pool: &PgPool,
    saga_ids: &[String],
    stop: CancellationToken,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let states: Vec<String> =
            sqlx::query_scalar("SELECT state FROM saga_instance WHERE saga_id = ANY($1)")
                .bind(saga_ids)
                .fetch_all(pool)
                .await?;
        let finished = states
            .iter()
            .filter_map(|s| SagaState::parse(s))
            .filter(|s| s.is_terminal());
        if finished.count() == saga_ids.len() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not finished after {limit:?}: {states:?}"
        );
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = stop.cancelled() => anyhow::bail!("stopped before the sagas finished: {states:?}"),
        }
    }
}

impl fmt::Display for SagaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.saga_id, self.state)?;
        for row in &self.history {
            let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
            let moved = match (&row.from_state, &row.to_state) {
                (Some(from), Some(to)) => format!("{from} -> {to}"),
                _ => String::new(),
            };
            writeln!(
                f,
                "  {} (+{:>6.1} ms)  {:<12} {:<17} {:<12} {:<26} {}",
                row.at,
                row.since_start_ms,
                row.kind,
                text(&row.step),
                text(&row.phase),
                moved,
                text(&row.detail)
            )?;
        }
        Ok(())
    }
}
