//! The run's main loop: inject each fault when it is due, bring killed processes
//! back, show progress, and stop once every order is finished and every kind of
//! fault was tried.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::broker::DemoBroker;
use super::cli::DemoArgs;
use super::databases::DemoDatabases;
use super::plan::{Fault, FaultKind, FaultPlan};
use super::progress::Progress;
use super::saga::SagaMode;
use super::soak::Sampler;
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

/// Drives the run until it completes, times out or is interrupted, sampling for a
/// soak when given a sampler.
pub async fn drive(
    stage: &mut Stage,
    databases: &DemoDatabases,
    broker: &DemoBroker,
    mut plan: FaultPlan,
    args: &DemoArgs,
    mut sampler: Option<&mut Sampler>,
) -> anyhow::Result<Chaos> {
    let (orders, mode, timeout) = (args.orders(), args.saga, args.timeout());
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
    let mut thaws: Vec<(Instant, String)> = Vec::new();
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
            let mut pending = Pending {
                restarts: &mut restarts,
                unstalls: &mut unstalls,
                thaws: &mut thaws,
            };
            match inject(&fault, stage, broker, now, &mut pending).await? {
                Injected::Now(said) => {
                    *chaos.faults.entry(fault.kind).or_default() += 1;
                    println!("{} fault: {said}", stamp(now));
                }
                Injected::Skipped => {
                    println!("{} fault skipped: {}", stamp(now), fault.kind.label());
                }
                // The broker is still coming back from the last restart: this one is
                // dropped, and a kind never tried yet is planned again for later.
                Injected::Busy => {
                    if !tried.contains(&fault.kind) {
                        plan.again_later(fault.kind);
                    }
                    next = plan.next_fault();
                    continue;
                }
            }
            tried.insert(fault.kind);
            next = plan.next_fault();
        }
        for (_, name) in take_due(&mut thaws, now) {
            stage.fleet.thaw(&name).await?;
            println!("{} {name} goes on (kill -CONT)", stamp(now));
        }
        for (_, name) in take_due(&mut restarts, now) {
            stage.fleet.restart(&name)?;
            println!("{} restarted {name}", stamp(now));
        }
        for (_, name) in take_due(&mut unstalls, now) {
            stage.proxies[&name].stall(false);
        }
        if let Some(sampler) = sampler.as_deref_mut() {
            sampler.tick(stage);
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
            let progress = Progress::read(databases, mode).await?;
            show(&stamp(now), &progress, orders, mode, &chaos.faults);
            let every_kind = next.is_none() || tried.len() == plan.kinds().len();
            if progress.complete(orders) && every_kind {
                let all_back = restarts.is_empty()
                    && unstalls.is_empty()
                    && thaws.is_empty()
                    && !broker.restarting();
                if winding_down && all_back {
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

/// Whether a fault went in.
enum Injected {
    /// It did; this says what happened.
    Now(String),
    /// It cannot be done in this run.
    Skipped,
    /// Not now: the broker, or a node of the cluster, is restarting.
    Busy,
}

/// What the loop must undo later: processes to restart, proxies to unstall,
/// processes to thaw.
struct Pending<'a> {
    restarts: &'a mut Vec<(Instant, String)>,
    unstalls: &'a mut Vec<(Instant, String)>,
    thaws: &'a mut Vec<(Instant, String)>,
}

async fn inject(
    fault: &Fault,
    stage: &mut Stage,
    broker: &DemoBroker,
    now: Instant,
    pending: &mut Pending<'_>,
) -> anyhow::Result<Injected> {
    let target = fault.target.to_string();
    let lasts = format!("{:.1} s", fault.lasts.as_secs_f64());
    Ok(Injected::Now(match fault.kind {
        FaultKind::ConnectionCut => {
            stage.proxies[&target].cut_all();
            format!("the proxy cut every connection of {target} to RabbitMQ")
        }
        FaultKind::BlackHole => {
            stage.proxies[&target].stall(true);
            pending.unstalls.push((now + fault.lasts, target.clone()));
            format!("the proxy black-holes {target}'s RabbitMQ traffic for {lasts}")
        }
        FaultKind::BrokerClose => {
            if broker.restarting() {
                return Ok(Injected::Busy);
            }
            if !broker.close_every_connection() {
                return Ok(Injected::Skipped);
            }
            "RabbitMQ closed every connection of the demo from its side".to_owned()
        }
        FaultKind::KillRelay | FaultKind::KillConsumer | FaultKind::KillOrchestrator => {
            stage.fleet.kill(&target).await?;
            pending.restarts.push((now + fault.lasts, target.clone()));
            format!("kill -9 {target} (back in {lasts})")
        }
        FaultKind::ParticipantSilent => {
            if pending.thaws.iter().any(|(_, name)| *name == target) {
                return Ok(Injected::Skipped);
            }
            stage.fleet.freeze(&target).await?;
            pending.thaws.push((now + fault.lasts, target.clone()));
            format!("kill -STOP {target}: silent for {lasts}, past its step timeout")
        }
        FaultKind::NodeKill => {
            let node = stage.homes[&target];
            if !broker.kill_node(node, fault.lasts) {
                return Ok(Injected::Busy);
            }
            format!(
                "kill -9 of RabbitMQ node {node} (the one under {target}); starting again after \
                 {lasts} down"
            )
        }
        FaultKind::BrokerRestart | FaultKind::BrokerKill => {
            if !broker.can_restart() {
                return Ok(Injected::Skipped);
            }
            let kill = fault.kind == FaultKind::BrokerKill;
            if !broker.restart(kill, fault.lasts) {
                return Ok(Injected::Busy);
            }
            let how = if kill { "killed (kill -9)" } else { "stopped" };
            format!("the run's RabbitMQ node {how}; starting again after {lasts} down")
        }
    }))
}

fn take_due(pending: &mut Vec<(Instant, String)>, now: Instant) -> Vec<(Instant, String)> {
    let (due, later) = pending.drain(..).partition(|(at, _)| *at <= now);
    *pending = later;
    due
}

fn show(
    stamp: &str,
    progress: &Progress,
    orders: u32,
    mode: SagaMode,
    faults: &BTreeMap<FaultKind, u32>,
) {
    let finished = match mode {
        SagaMode::Choreography => format!(
            "shipped {}, cancelled {}",
            progress.shipped, progress.cancelled
        ),
        SagaMode::Orchestration => format!(
            "sagas completed {}, compensated {}, failed {}",
            progress.shipped, progress.cancelled, progress.failed
        ),
    };
    println!(
        "{stamp} orders placed {}/{orders}, finished {} ({finished}) | messages sent {}, waiting {} | faults {}",
        progress.placed,
        progress.finished(),
        progress.sent,
        progress.unsent,
        faults.values().sum::<u32>()
    );
}
