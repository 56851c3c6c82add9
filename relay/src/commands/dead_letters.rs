//! `outbox-relay dead-letters ...`: consumers' dead letters, read from the consumer's
//! database through `txoutbox_relay::dead_letters`, and sent back through the broker;
//! printed for people or as JSON.

use anyhow::Context;
use sqlx::PgPool;
use txoutbox_relay::dead_letters::{
    self, DeadLetter, DeadLetterFilter, DeadLetterState, SendBack, SendBackReport,
};

use crate::cli::DeadLettersCommand;

/// What the audit says did it.
const ACTOR: &str = "cli";

pub(crate) async fn dead_letters(
    pool: PgPool,
    amqp_url: Option<String>,
    command: DeadLettersCommand,
) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List {
            queue,
            saga_id,
            consumer,
            all,
            limit,
            output,
        } => {
            let filter = DeadLetterFilter {
                queue,
                saga_id,
                consumer,
                include_sent_back: all,
                limit,
            };
            let letters = dead_letters::list(&pool, &filter).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            print_list(&letters);
        }
        DeadLettersCommand::Show { id, output } => {
            let letter = dead_letters::get(&pool, id)
                .await?
                .with_context(|| format!("no dead letter with id {id}"))?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&letter)?);
                return Ok(());
            }
            print_show(&letter)?;
        }
        DeadLettersCommand::SendBack {
            id,
            all_of,
            reason,
            output,
        } => {
            let target = match (id, all_of) {
                (Some(id), _) => SendBack::One(id),
                (None, Some(queue)) => SendBack::AllOf { queue },
                (None, None) => anyhow::bail!("name a dead letter's id, or --all-of QUEUE"),
            };
            let amqp_url = amqp_url.context("send-back moves messages: AMQP_URL is needed")?;
            let report = dead_letters::send_back(&pool, &amqp_url, target, &reason, ACTOR).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            print_report(&report);
        }
    }
    Ok(())
}

/// The human form of `list`: one line each.
fn print_list(letters: &[DeadLetter]) {
    println!("{} dead letter(s), newest first", letters.len());
    for l in letters {
        println!(
            "  {}  {}  {}  saga={} step={} attempts={}{}  {}",
            l.id,
            time(l.dead_at),
            l.queue,
            l.saga_id.as_deref().unwrap_or("-"),
            l.step.as_deref().unwrap_or("-"),
            l.attempts,
            if l.state == DeadLetterState::SentBack {
                " (sent back)"
            } else {
                ""
            },
            l.reason,
        );
    }
}

/// The human form of `show`: every field, the headers and payload pretty-printed.
fn print_show(l: &DeadLetter) -> anyhow::Result<()> {
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    println!("dead letter {}", l.id);
    println!("  consumer:    {}", l.consumer);
    println!("  queue:       {} (its copy in {}.dead)", l.queue, l.queue);
    println!("  message id:  {}", or_dash(&l.message_id));
    println!("  saga:        {}", or_dash(&l.saga_id));
    println!("  step:        {}", or_dash(&l.step));
    println!("  reason:      {}", l.reason);
    println!("  kind:        {}", l.kind);
    println!("  attempts:    {}", l.attempts);
    println!("  last error:  {}", or_dash(&l.last_error));
    println!("  dead at:     {}", time(l.dead_at));
    match (l.state, l.sent_back_at) {
        (DeadLetterState::SentBack, Some(at)) => println!(
            "  state:       sent back at {}: {}",
            time(at),
            l.sent_back_reason.as_deref().unwrap_or("-")
        ),
        (state, _) => println!("  state:       {}", state.as_str()),
    }
    println!(
        "  headers:     {}",
        indent(&serde_json::to_string_pretty(&l.headers)?)
    );
    match l.body.payload() {
        Some(payload) => println!(
            "  payload:     {}",
            indent(&serde_json::to_string_pretty(&payload)?)
        ),
        None => println!("  body (not JSON): {}", l.body.text()),
    }
    Ok(())
}

/// The human form of `send-back`.
fn print_report(report: &SendBackReport) {
    println!(
        "sent back {} message(s) from {}.dead to {} ({} looked at)",
        report.moved.len(),
        report.queue,
        report.queue,
        report.scanned,
    );
    for moved in &report.moved {
        println!(
            "  dead letter {}  message={} saga={}",
            moved
                .dead_letter_id
                .map_or_else(|| "- (no row)".to_owned(), |id| id.to_string()),
            moved.message_id.as_deref().unwrap_or("-"),
            moved.saga_id.as_deref().unwrap_or("-"),
        );
    }
    if report.bound_reached {
        println!(
            "more messages wait in {}.dead than one run looks at: run it again for the rest",
            report.queue
        );
    }
}

fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Pretty JSON's lines after the first, indented under its label.
fn indent(text: &str) -> String {
    text.replace('\n', "\n               ")
}
