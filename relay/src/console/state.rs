//! What every request handler shares: the services, the gate, and the rules for
//! "stuck".

use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

use super::auth::Gate;
use super::pages::layout::Viewer;
use super::read::stuck::StuckReport;
use super::services::Service;

/// The console's state.
pub(crate) struct Console {
    pub(crate) services: Vec<Service>,
    pub(crate) gate: Gate,
    /// Listening on loopback only: a request must name a loopback host (DNS rebinding).
    pub(crate) loopback: bool,
    pub(crate) amqp_url: Option<String>,
    pub(crate) stuck_after: Duration,
    pub(crate) lookback: Duration,
    pub(crate) final_steps: Vec<String>,
    /// Found in the background ([`super::watch`]); None until the first look ends.
    pub(crate) stuck: tokio::sync::RwLock<Option<StuckReport>>,
}

impl Console {
    /// The service named `name`.
    pub(crate) fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Who is looking, as the frame shows it.
    pub(crate) fn viewer(&self, headers: &HeaderMap) -> Viewer {
        Viewer {
            login: self.gate.login(cookie(headers)),
            actions_enabled: self.gate.actions_enabled(),
        }
    }
}

/// The request's `Cookie:` header.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers.get(COOKIE).and_then(|v| v.to_str().ok())
}
