//! One saga across every configured service: what each database holds of it, read
//! side by side.

use serde::Serialize;
use txoutbox_saga::admin::SagaView;

use super::missing::admin_or_none;
use super::records::{self, AuditRecord, DeadLetterRecord, InboxRecord, OutboxRecord};
use crate::console::services::{Service, unreadable};

/// What one service's database holds of the saga.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceTrace {
    pub(crate) service: String,
    /// Set when the database could not be read; the lists are then empty.
    pub(crate) error: Option<String>,
    /// The saga's instance and history, where this service orchestrates it.
    pub(crate) orchestrated: Option<SagaView>,
    pub(crate) outbox: Vec<OutboxRecord>,
    pub(crate) inbox: Vec<InboxRecord>,
    pub(crate) dead_letters: Vec<DeadLetterRecord>,
    pub(crate) audit: Vec<AuditRecord>,
    /// Some kind of record had more than the page shows: only the latest are listed.
    pub(crate) cut: bool,
}

impl ServiceTrace {
    /// True when this service has any record of the saga.
    pub(crate) fn knows_it(&self) -> bool {
        self.orchestrated.is_some()
            || !self.outbox.is_empty()
            || !self.inbox.is_empty()
            || !self.dead_letters.is_empty()
            || !self.audit.is_empty()
    }
}

/// Reads every service at once; one that fails is reported in its trace.
pub(crate) async fn read(services: &[Service], saga_id: &str) -> Vec<ServiceTrace> {
    let reads = services.iter().map(|service| async move {
        match read_one(service, saga_id).await {
            Ok(trace) => trace,
            Err(error) => ServiceTrace {
                service: service.name.clone(),
                error: Some(unreadable(&error)),
                orchestrated: None,
                outbox: Vec::new(),
                inbox: Vec::new(),
                dead_letters: Vec::new(),
                audit: Vec::new(),
                cut: false,
            },
        }
    });
    futures_util::future::join_all(reads).await
}

async fn read_one(service: &Service, saga_id: &str) -> sqlx::Result<ServiceTrace> {
    let pool = &service.pool;
    let (orchestrated, mut outbox, mut inbox, mut dead_letters, mut audit) = tokio::try_join!(
        orchestrated(service, saga_id),
        records::outbox(pool, saga_id),
        records::inbox(pool, saga_id),
        records::dead_letters(pool, saga_id),
        records::audit(pool, saga_id),
    )?;
    let limit = records::PER_KIND_LIMIT as usize;
    let cut = [outbox.len(), inbox.len(), dead_letters.len(), audit.len()]
        .iter()
        .any(|&n| n >= limit);
    // Read newest first, so that a cut keeps the latest; shown oldest first.
    outbox.reverse();
    inbox.reverse();
    dead_letters.reverse();
    audit.reverse();
    Ok(ServiceTrace {
        service: service.name.clone(),
        error: None,
        orchestrated,
        outbox,
        inbox,
        dead_letters,
        audit,
        cut,
    })
}

/// The orchestrator's view, where this service has the saga tables and the saga.
async fn orchestrated(service: &Service, saga_id: &str) -> sqlx::Result<Option<SagaView>> {
    admin_or_none(txoutbox_saga::admin::show(&service.pool, saga_id).await)
}
