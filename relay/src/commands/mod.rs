//! What each subcommand does, once the configuration is known to be good.

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use txoutbox_relay::audit::Action;
use txoutbox_relay::{Relay, RelayConfig};

use crate::cli::DeadCommand;

mod dead_letters;
mod saga;

pub(crate) use self::dead_letters::dead_letters;
pub(crate) use self::saga::saga;

pub(crate) async fn run(
    pool: PgPool,
    amqp_url: String,
    config: RelayConfig,
    migrate: bool,
    listener: TcpListener,
) -> anyhow::Result<()> {
    if migrate {
        txoutbox::migrate(&pool)
            .await
            .context("applying migrations")?;
    }
    let relay = Relay::new(pool.clone(), amqp_url, config);
    let shutdown = CancellationToken::new();
    tokio::spawn(txoutbox_relay::serve_http(
        listener,
        relay.metrics(),
        pool,
        shutdown.clone(),
    ));
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    relay.run(shutdown.clone()).await?;
    shutdown.cancel();
    Ok(())
}

/// SIGTERM (orchestrators) and SIGINT (Ctrl-C) both mean: drain and stop.
pub(crate) async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested: no new claims; waiting for outstanding confirms");
    shutdown.cancel();
}

/// Records an operator's action done from the command line. The action is done
/// whatever becomes of its record: a database without the audit table (an older
/// schema) gets a warning, not a failed command.
pub(crate) async fn audit(
    pool: &PgPool,
    action: Action,
    target: &str,
    saga_id: Option<&str>,
    reason: &str,
) {
    let recorded =
        txoutbox_relay::audit::record(pool, action, target, saga_id, reason, "cli").await;
    if let Err(error) = recorded {
        eprintln!("outbox-relay: done, but not recorded in txoutbox_audit: {error}");
    }
}

pub(crate) async fn migrate(pool: PgPool) -> anyhow::Result<()> {
    txoutbox::migrate(&pool).await?;
    println!("outbox tables are up to date");
    Ok(())
}

/// A standby says so at each of its heartbeats; one not heard from for this long has
/// stopped (or taken over), and `status` no longer shows it.
const STANDBY_SHOWN_FOR_SECONDS: f64 = 60.0;

pub(crate) async fn status(pool: PgPool, json: bool) -> anyhow::Result<()> {
    let backlog = txoutbox_relay::backlog(&pool).await?;
    let instances = txoutbox_relay::instances(&pool).await?;
    if json {
        let value = serde_json::json!({
            "backlog": backlog.unsent,
            "oldest_pending_age_seconds": backlog.oldest_unsent_age_seconds,
            "dead": backlog.dead,
            "instances": instances,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("backlog:             {} unsent", backlog.unsent);
    println!(
        "oldest pending age:  {:.1}s",
        backlog.oldest_unsent_age_seconds
    );
    println!("dead:                {}", backlog.dead);
    println!("instances:           {}", instances.len());
    for instance in &instances {
        println!(
            "  {}  host={}  heartbeat {:.1}s ago  {}  partitions={}",
            instance.instance_id,
            instance.hostname,
            instance.heartbeat_age_seconds,
            if instance.listening { "idle" } else { "busy" },
            instance.partitions.len(),
        );
        if let (Some(host), Some(age)) = (&instance.standby_host, instance.standby_age_seconds)
            && age < STANDBY_SHOWN_FOR_SECONDS
        {
            println!(
                "    another relay with this instance id stands by, publishing nothing: host={host}, seen {age:.1}s ago"
            );
        }
    }
    Ok(())
}

pub(crate) async fn inspect(pool: PgPool, saga_id: &str, json: bool) -> anyhow::Result<()> {
    let messages = txoutbox::messages_for_saga(&pool, saga_id).await?;
    if json {
        let rows: Vec<_> = messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "step": m.step, "routing_key": m.routing_key, "exchange": m.exchange,
                    "state": format!("{:?}", m.state).to_lowercase(), "attempts": m.attempts,
                    "last_error": m.last_error, "created_at": m.created_at,
                    "available_at": m.available_at, "sent_at": m.sent_at, "payload": m.payload,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"saga_id": saga_id, "messages": rows})
            )?
        );
        return Ok(());
    }
    if messages.is_empty() {
        println!(
            "saga {saga_id}: no outbox rows (never written, or sent and deleted; keep sent rows with --retention)"
        );
        return Ok(());
    }
    println!(
        "saga {saga_id}: {} outbox row(s), in write order",
        messages.len()
    );
    for m in &messages {
        let state = format!("{:?}", m.state).to_lowercase();
        println!(
            "  {}  {:<20} {:<8} attempts={} created={} available={}{}{}",
            m.id,
            m.step,
            state,
            m.attempts,
            m.created_at.format("%H:%M:%S%.3f"),
            m.available_at.format("%H:%M:%S%.3f"),
            m.sent_at
                .map(|t| format!(" sent={}", t.format("%H:%M:%S%.3f")))
                .unwrap_or_default(),
            m.last_error
                .as_deref()
                .map(|e| format!("\n      last error: {e}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

pub(crate) async fn dead(pool: PgPool, command: DeadCommand) -> anyhow::Result<()> {
    match command {
        DeadCommand::List { limit, output } => {
            let rows = txoutbox_relay::dead_rows(&pool, limit).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!("{} dead row(s)", rows.len());
            for row in &rows {
                println!(
                    "  {}  saga={} step={} routing_key={} attempts={}\n      last error: {}",
                    row.id,
                    row.saga_id,
                    row.step,
                    row.routing_key,
                    row.attempts,
                    row.last_error.as_deref().unwrap_or("-"),
                );
            }
        }
        DeadCommand::Retry {
            id: Some(id),
            reason,
            ..
        } => {
            let saga_id: Option<String> =
                sqlx::query_scalar("SELECT saga_id FROM outbox WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&pool)
                    .await?;
            txoutbox_relay::retry_dead(&pool, id).await?;
            println!("{id} will be published again");
            let target = id.to_string();
            audit(
                &pool,
                Action::OutboxRetry,
                &target,
                saga_id.as_deref(),
                &reason,
            )
            .await;
        }
        DeadCommand::Retry {
            id: None, reason, ..
        } => {
            let count = txoutbox_relay::retry_all_dead(&pool).await?;
            println!("{count} dead row(s) will be published again");
            audit(&pool, Action::OutboxRetry, "all", None, &reason).await;
        }
    }
    Ok(())
}

pub(crate) async fn cleanup(
    pool: PgPool,
    retention: std::time::Duration,
    batch_size: u32,
) -> anyhow::Result<()> {
    let deleted = txoutbox_relay::cleanup(&pool, retention, batch_size).await?;
    println!(
        "deleted {deleted} sent row(s) older than {}s",
        retention.as_secs()
    );
    Ok(())
}
