//! `outbox-relay console`: a web page on which a support engineer finds one business
//! transaction (one saga id) across every service's database, sees where it is and
//! what is wrong now, and acts on it: abort or retry a saga, retry a parked outbox
//! row, send a consumer's dead letter back. Scripts get the same data as JSON under
//! `/api`. See `docs/guide/console.md`.

mod actions;
mod auth;
mod login;
mod pages;
mod read;
mod routes;
mod services;
pub(crate) mod settings;
mod state;
mod views;
mod watch;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use self::settings::Settings;
use self::state::Console;

/// Serves the console on an address already bound, until SIGTERM or Ctrl-C.
pub(crate) async fn serve(settings: Settings, listener: TcpListener) -> anyhow::Result<()> {
    let names: Vec<&str> = settings.databases.iter().map(|d| d.name.as_str()).collect();
    tracing::info!(
        address = %listener.local_addr()?,
        databases = %names.join(", "),
        actions = if settings.token.is_some() { "on (token set)" } else { "off (no token)" },
        "console listening"
    );
    let console = Arc::new(Console {
        services: services::open(&settings.databases),
        loopback: settings.listen.ip().is_loopback(),
        gate: auth::Gate::new(settings.token, !settings.listen.ip().is_loopback()),
        amqp_url: settings.amqp_url,
        stuck_after: settings.stuck_after,
        lookback: settings.lookback,
        final_steps: settings.final_steps,
        stuck: tokio::sync::RwLock::new(None),
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::commands::cancel_on_signal(shutdown.clone()));
    tokio::spawn(watch::stuck_sagas(Arc::clone(&console), shutdown.clone()));
    axum::serve(listener, routes::router(console))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving the console")
}
