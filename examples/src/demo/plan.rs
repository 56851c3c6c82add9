//! The fault schedule: which fault, against what, when. Drawn from the seed alone, so
//! the same seed gives the same schedule.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::saga::Service;

/// The kinds of fault the demo injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The TCP proxy drops every connection of one process to RabbitMQ.
    ConnectionCut,
    /// The TCP proxy black-holes one process's traffic for a few seconds.
    BlackHole,
    /// RabbitMQ closes every connection of the demo, from the broker's side.
    BrokerClose,
    /// `kill -9` of one relay, restarted shortly after.
    KillRelay,
    /// `kill -9` of one service (a consumer), restarted shortly after.
    KillConsumer,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 5] = [
        Self::ConnectionCut,
        Self::BlackHole,
        Self::BrokerClose,
        Self::KillRelay,
        Self::KillConsumer,
    ];

    /// How the report names the kind.
    pub fn label(self) -> &'static str {
        match self {
            Self::ConnectionCut => "connection cut (proxy)",
            Self::BlackHole => "black hole (proxy)",
            Self::BrokerClose => "closed by the broker",
            Self::KillRelay => "relay kill -9",
            Self::KillConsumer => "consumer kill -9",
        }
    }
}

/// Which process a fault hits: a service, or the relay beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// The service.
    pub service: Service,
    /// Its relay rather than the service itself.
    pub relay: bool,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.relay {
            write!(f, "{}-relay", self.service)
        } else {
            write!(f, "{}-service", self.service)
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// When, from the start of the run.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
    /// Against which process (ignored by `BrokerClose`, which hits them all).
    pub target: Target,
    /// How long a black hole lasts, or how long a killed process stays down.
    pub lasts: Duration,
}

/// The schedule, drawn one fault at a time. The first faults are one of each kind in
/// a seeded order, so even a short run sees every kind; after that, kinds are drawn
/// at random. Gaps are exponential with the asked mean rate.
#[derive(Debug)]
pub struct FaultPlan {
    rng: StdRng,
    rate: f64,
    clock: Duration,
    first_of_each: Vec<FaultKind>,
}

impl FaultPlan {
    /// A plan of `rate` faults per second on average; 0 plans none.
    pub fn new(seed: u64, rate: f64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut first_of_each = FaultKind::ALL.to_vec();
        first_of_each.shuffle(&mut rng);
        first_of_each.reverse();
        Self {
            rng,
            rate,
            clock: Duration::from_secs(1),
            first_of_each,
        }
    }

    /// The next fault, or `None` when the plan injects none.
    pub fn next_fault(&mut self) -> Option<Fault> {
        if self.rate <= 0.0 {
            return None;
        }
        let kind = match self.first_of_each.pop() {
            Some(kind) => kind,
            None => FaultKind::ALL[self.rng.random_range(0..FaultKind::ALL.len())],
        };
        let service = Service::ALL[self.rng.random_range(0..Service::ALL.len())];
        let relay = match kind {
            FaultKind::KillRelay => true,
            FaultKind::KillConsumer => false,
            _ => self.rng.random_bool(0.5),
        };
        let lasts = Duration::from_millis(match kind {
            FaultKind::BlackHole => self.rng.random_range(2_000..=4_000),
            _ => self.rng.random_range(300..=1_500),
        });
        let fault = Fault {
            at: self.clock,
            kind,
            target: Target { service, relay },
            lasts,
        };
        // Exponential gaps, at least 200 ms apart so each fault is seen on its own.
        let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let gap = (-uniform.ln() / self.rate).max(0.2);
        self.clock += Duration::from_secs_f64(gap.min(3_600.0));
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(seed: u64, rate: f64, n: usize) -> Vec<Fault> {
        let mut plan = FaultPlan::new(seed, rate);
        std::iter::from_fn(|| plan.next_fault()).take(n).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(draw(42, 1.0, 50), draw(42, 1.0, 50));
        assert_ne!(draw(42, 1.0, 50), draw(43, 1.0, 50));
    }

    #[test]
    fn the_first_five_faults_are_one_of_each_kind() {
        for seed in 0..20 {
            let mut kinds: Vec<FaultKind> = draw(seed, 1.0, 5).iter().map(|f| f.kind).collect();
            kinds.sort();
            assert_eq!(kinds, FaultKind::ALL.to_vec(), "seed {seed}");
        }
    }

    #[test]
    fn kills_hit_the_right_kind_of_process_and_time_moves_forward() {
        let faults = draw(9, 2.0, 200);
        for pair in faults.windows(2) {
            assert!(pair[1].at > pair[0].at);
        }
        for fault in &faults {
            match fault.kind {
                FaultKind::KillRelay => assert!(fault.target.relay),
                FaultKind::KillConsumer => assert!(!fault.target.relay),
                _ => {}
            }
        }
    }

    #[test]
    fn rate_zero_plans_nothing() {
        assert!(draw(1, 0.0, 10).is_empty());
    }
}
