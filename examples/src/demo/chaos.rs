//! The run's main loop: inject each fault when it is due, bring killed processes
//! back, show progress, and stop once every order is finished and every kind of
//! fault was tried.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::broker::DemoBroker;
use super::databases::DemoDatabases;
use super::plan::{Fault, FaultKind, FaultPlan};
use super::progress::Progress;
use super::stage::Stage;

/// How a run's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every order finished, nothing unsent, every kind of fault tried.
    Complete,
    /// The timeout passed first.
    TimedOut,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// What the loop saw.
#[derive(Debug)]
pub struct Chaos {
    /// How it ended.
    pub ending: Ending,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u32>,
    /// Processes that exited without being killed (each was restarted).
    pub unexpected_exits: u32,
    /// Time from start to the end of the loop.
    pub elapsed: Duration,
}

/// Drives the run until it completes, times out or is interrupted.
pub async fn drive(
    stage: &mut Stage,
    databases: &DemoDatabases,
    broker: &DemoBroker,
    mut plan: FaultPlan,
    orders: u32,
    timeout: Duration,
) -> anyhow::Result<Chaos> {
    let start = Instant::now();
    let mut chaos = Chaos {
        ending: Ending::TimedOut,
        faults: BTreeMap::new(),
        unexpected_exits: 0,
        elapsed: Duration::ZERO,
    };
    let mut tried = BTreeSet::new();
    let mut restarts: Vec<(Instant, String)> = Vec::new();
    let mut unstalls: Vec<(Instant, String)> = Vec::new();
    let mut next = plan.next_fault();
    // Once the saga is complete and every kind of fault was tried, no new faults:
    // killed processes come back, black holes end, and the run ends when the saga is
    // still complete after that.
    let mut winding_down = false;
    let mut last_shown = start;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stamp = |at: Instant| format!("[{:>6.1}s]", at.duration_since(start).as_secs_f64());

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { chaos.ending = Ending::Interrupted; break; }
            _ = terminate.recv() => { chaos.ending = Ending::Interrupted; break; }
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        while let Some(fault) = next.filter(|f| !winding_down && start + f.at <= now) {
            let said = inject(&fault, stage, broker, now, &mut restarts, &mut unstalls).await?;
            match said {
                Some(said) => {
                    *chaos.faults.entry(fault.kind).or_default() += 1;
                    println!("{} fault: {said}", stamp(now));
                }
                None => println!("{} fault skipped: {}", stamp(now), fault.kind.label()),
            }
            tried.insert(fault.kind);
            next = plan.next_fault();
        }
        for (_, name) in take_due(&mut restarts, now) {
            stage.fleet.restart(&name)?;
            println!("{} restarted {name}", stamp(now));
        }
        for (_, name) in take_due(&mut unstalls, now) {
            stage.proxies[&name].stall(false);
        }
        for (name, status) in stage.fleet.exited() {
            chaos.unexpected_exits += 1;
            println!(
                "{} {name} exited on its own ({status}); restarting it",
                stamp(now)
            );
            stage.fleet.restart(&name)?;
        }
        if now.duration_since(last_shown) >= Duration::from_secs(2) {
            last_shown = now;
            let progress = Progress::read(databases).await?;
            show(&stamp(now), &progress, orders, &chaos.faults);
            let every_kind = next.is_none() || tried.len() == FaultKind::ALL.len();
            if progress.complete(orders) && every_kind {
                if winding_down && restarts.is_empty() && unstalls.is_empty() {
                    chaos.ending = Ending::Complete;
                    break;
                }
                if !winding_down {
                    winding_down = true;
                    println!(
                        "{} saga complete; no more faults, waiting for every process to be back",
                        stamp(now)
                    );
                }
            }
        }
        if now.duration_since(start) > timeout {
            println!("{} timed out after {} s", stamp(now), timeout.as_secs());
            break;
        }
    }
    chaos.elapsed = start.elapsed();
    Ok(chaos)
}

async fn inject(
    fault: &Fault,
    stage: &mut Stage,
    broker: &DemoBroker,
    now: Instant,
    restarts: &mut Vec<(Instant, String)>,
    unstalls: &mut Vec<(Instant, String)>,
) -> anyhow::Result<Option<String>> {
    let target = fault.target.to_string();
    let lasts = format!("{:.1} s", fault.lasts.as_secs_f64());
    Ok(Some(match fault.kind {
        FaultKind::ConnectionCut => {
            stage.proxies[&target].cut_all();
            format!("the proxy cut every connection of {target} to RabbitMQ")
        }
        FaultKind::BlackHole => {
            stage.proxies[&target].stall(true);
            unstalls.push((now + fault.lasts, target.clone()));
            format!("the proxy black-holes {target}'s RabbitMQ traffic for {lasts}")
        }
        FaultKind::BrokerClose => {
            if !broker.close_every_connection() {
                return Ok(None);
            }
            "RabbitMQ closed every connection of the demo from its side".to_owned()
        }
        FaultKind::KillRelay | FaultKind::KillConsumer => {
            stage.fleet.kill(&target).await?;
            restarts.push((now + fault.lasts, target.clone()));
            format!("kill -9 {target} (back in {lasts})")
        }
    }))
}

fn take_due(pending: &mut Vec<(Instant, String)>, now: Instant) -> Vec<(Instant, String)> {
    let (due, later) = pending.drain(..).partition(|(at, _)| *at <= now);
    *pending = later;
    due
}

fn show(stamp: &str, progress: &Progress, orders: u32, faults: &BTreeMap<FaultKind, u32>) {
    println!(
        "{stamp} orders placed {}/{orders}, finished {} (shipped {}, cancelled {}) | messages sent {}, waiting {} | faults {}",
        progress.placed,
        progress.finished(),
        progress.shipped,
        progress.cancelled,
        progress.sent,
        progress.unsent,
        faults.values().sum::<u32>()
    );
}
