//! `outbox-relay saga ...`: read sagas through `txoutbox_saga::admin`, or ask the orchestrators
//! to retry or abort one, and print the answer for people or as JSON.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use txoutbox_relay::audit::Action;
use txoutbox_saga::admin::{HistoryEntry, SagaSummary, SagaView};

use crate::cli::SagaCommand;

pub(crate) async fn saga(pool: PgPool, command: SagaCommand) -> anyhow::Result<()> {
    match command {
        SagaCommand::List {
            state,
            overdue,
            waiting,
            limit,
            output,
        } => {
            let filter = txoutbox_saga::admin::ListFilter {
                state,
                overdue,
                waiting,
                limit,
            };
            let sagas = txoutbox_saga::admin::list(&pool, filter).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&sagas)?);
                return Ok(());
            }
            print_list(&sagas);
        }
        SagaCommand::Show { saga_id, output } => {
            let Some(view) = txoutbox_saga::admin::show(&pool, &saga_id).await? else {
                return Err(txoutbox_saga::admin::AdminError::NotFound(saga_id).into());
            };
            if output.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
                return Ok(());
            }
            print_show(&view);
        }
        SagaCommand::Retry { saga_id, reason } => {
            txoutbox_saga::admin::request_retry(&pool, &saga_id).await?;
            super::audit(&pool, Action::SagaRetry, &saga_id, Some(&saga_id), &reason).await;
            println!(
                "retry of saga {saga_id} requested: the next orchestrator sweep resumes its compensation \
                 (follow it with `outbox-relay saga show {saga_id}`)"
            );
        }
        SagaCommand::Abort { saga_id, reason } => {
            txoutbox_saga::admin::request_abort(&pool, &saga_id, &reason).await?;
            super::audit(&pool, Action::SagaAbort, &saga_id, Some(&saga_id), &reason).await;
            println!(
                "abort of saga {saga_id} requested: the next orchestrator sweep compensates its steps \
                 (follow it with `outbox-relay saga show {saga_id}`)"
            );
        }
    }
    Ok(())
}

/// The human form of `saga list`.
fn print_list(sagas: &[SagaSummary]) {
    println!("{} saga(s), most recently changed first", sagas.len());
    for s in sagas {
        println!(
            "  {}  {:<13} {} v{}  step={} attempts={} deadline={}{}{}  updated={}{}{}",
            s.saga_id,
            s.state,
            s.saga_type,
            s.definition_version,
            s.current_step,
            s.attempts,
            time_or_dash(s.deadline_at),
            if s.overdue { " (overdue)" } else { "" },
            s.waiting_for
                .as_deref()
                .map(|event| format!("  waiting for {event}"))
                .unwrap_or_default(),
            time(s.updated_at),
            s.operator_request
                .map(|r| format!("  requested={}", r.as_str()))
                .unwrap_or_default(),
            s.last_error
                .as_deref()
                .map(|e| format!("\n      last error: {e}"))
                .unwrap_or_default(),
        );
    }
}

/// The human form of `saga show`.
fn print_show(view: &SagaView) {
    let i = &view.instance;
    let overdue = i.deadline_at.is_some_and(|d| d < Utc::now()) && !i.state.is_terminal();
    println!(
        "saga {}: {}, {} v{}, step {}, attempts {}, deadline {}{}",
        i.saga_id,
        i.state,
        i.saga_type,
        i.definition_version,
        i.current_step,
        i.attempts,
        time_or_dash(i.deadline_at),
        if overdue { " (overdue)" } else { "" },
    );
    println!("  last error: {}", i.last_error.as_deref().unwrap_or("-"));
    if let Some(event) = &i.waiting_for {
        println!(
            "  waiting for event {event} since {} ({} ago), until {}",
            time_or_dash(i.stage_started_at),
            i.stage_started_at.map(ago).unwrap_or_else(|| "-".into()),
            time_or_dash(i.deadline_at),
        );
    }
    if !view.branches.is_empty() {
        println!(
            "  parallel group since {}:",
            time_or_dash(i.stage_started_at)
        );
        for branch in &view.branches {
            let answer = if branch.answered {
                "answered"
            } else {
                "waiting for its reply"
            };
            println!("    step {} {}: {answer}", branch.step, branch.command);
        }
    }
    if let Some(ending) = i.ending {
        let next = match i.deadline_at {
            Some(at) => format!("next try at {}", time(at)),
            None => "`saga retry` runs it again".to_owned(),
        };
        println!(
            "  ending: {ending}; its on_{ending} hook failed {} time(s); {next}",
            i.end_attempts
        );
    }
    if let Some(request) = i.operator_request {
        println!(
            "  operator request: {}, waiting for an orchestrator's sweep",
            request.as_str()
        );
    }
    println!(
        "  started {}  updated {}  finished {}",
        time(i.created_at),
        time(i.updated_at),
        time_or_dash(i.finished_at),
    );

    println!("history ({} event(s)):", view.history.len());
    for entry in &view.history {
        timeline(entry);
    }

    println!("outbox ({} row(s), in write order):", view.outbox.len());
    for row in &view.outbox {
        println!(
            "  {}  {:<22} {:<8} attempts={} created={}{}{}",
            row.id,
            row.routing_key,
            row.state,
            row.attempts,
            time(row.created_at),
            row.sent_at
                .map(|t| format!(" sent={}", time(t)))
                .unwrap_or_default(),
            row.last_error
                .as_deref()
                .map(|e| format!("\n      last error: {e}"))
                .unwrap_or_default(),
        );
    }

    if !view.signals.is_empty() {
        println!("events delivered ({}):", view.signals.len());
        for signal in &view.signals {
            println!(
                "  {}  {:<24} {}",
                time(signal.received_at),
                signal.name,
                signal
                    .outcome
                    .as_deref()
                    .unwrap_or("kept for the step that waits for it"),
            );
        }
    }

    println!("inbox ({} record(s)):", view.inbox.len());
    for record in &view.inbox {
        println!(
            "  {:<16} {}  processed={} duplicates={}{}",
            record.consumer,
            record.step,
            time(record.processed_at),
            record.duplicates,
            record
                .last_duplicate_at
                .map(|t| format!(" last duplicate={}", time(t)))
                .unwrap_or_default(),
        );
    }
}

/// `time  kind  step/phase  from → to  detail`.
fn timeline(entry: &HistoryEntry) {
    let at = match (entry.step, entry.phase) {
        (Some(step), Some(phase)) => format!("{step}/{}", phase.as_str()),
        (Some(step), None) => step.to_string(),
        (None, _) => "-".to_owned(),
    };
    let moved = match (entry.from_state, entry.to_state) {
        (Some(from), Some(to)) => format!("{from} → {to}"),
        (Some(from), None) => format!("{from}"),
        (None, Some(to)) => format!("→ {to}"),
        (None, None) => "-".to_owned(),
    };
    let line = format!(
        "  {}  {:<18} {:<14} {:<27} {}{}",
        time(entry.occurred_at),
        entry.kind,
        at,
        moved,
        entry.detail.as_deref().unwrap_or(""),
        entry
            .message_id
            .as_deref()
            .map(|id| format!("  message={id}"))
            .unwrap_or_default(),
    );
    println!("{}", line.trim_end());
}

/// How long ago `at` was, as `3h 2m`, `5m 12s` or `40s`.
fn ago(at: DateTime<Utc>) -> String {
    let seconds = (Utc::now() - at).num_seconds().max(0);
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn time_or_dash(at: Option<DateTime<Utc>>) -> String {
    at.map(time).unwrap_or_else(|| "-".to_owned())
}
