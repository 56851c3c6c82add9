//! The fault schedule: which fault, against what, when. Drawn from the seed alone, so
//! the same seed gives the same schedule.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::saga::{SagaMode, Service};

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
    /// A participant frozen (`kill -STOP`) for longer than its step's timeout, then
    /// let go (`kill -CONT`): timeouts fire, and its late actions must take no effect.
    /// Orchestration only.
    ParticipantSilent,
    /// `kill -9` of one of the two order processes, each an orchestrator instance.
    /// Orchestration only.
    KillOrchestrator,
    /// The run's own RabbitMQ node stopped, then started again. Only where
    /// `rabbitmq-server` is installed.
    BrokerRestart,
    /// The run's own RabbitMQ node killed with `kill -9`, then started again.
    BrokerKill,
    /// One node of the run's own cluster killed with `kill -9`, then started again;
    /// never two down at once. Only with `--cluster`, in place of the two above.
    NodeKill,
}

/// What a run may do to its RabbitMQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFaults {
    /// Nothing but closing connections: it is `AMQP_URL`'s broker.
    Shared,
    /// Stop and kill its node of its own.
    OwnNode,
    /// Kill the nodes of its own cluster, one at a time.
    OwnCluster,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 10] = [
        Self::ConnectionCut,
        Self::BlackHole,
        Self::BrokerClose,
        Self::KillRelay,
        Self::KillConsumer,
        Self::ParticipantSilent,
        Self::KillOrchestrator,
        Self::BrokerRestart,
        Self::BrokerKill,
        Self::NodeKill,
    ];

    /// Whether this kind takes the broker, or a node of the cluster, down for a while
    /// (several seconds: a node takes that long to start again).
    pub fn is_broker_restart(self) -> bool {
        matches!(
            self,
            Self::BrokerRestart | Self::BrokerKill | Self::NodeKill
        )
    }

    /// The kinds a run can inject: the orchestrator's only under orchestration, the
    /// broker's restarts only with a node of the run's own, node kills only with a
    /// cluster of its own.
    pub fn available(mode: SagaMode, broker: BrokerFaults) -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|kind| match kind {
                Self::ParticipantSilent | Self::KillOrchestrator => mode == SagaMode::Orchestration,
                Self::BrokerRestart | Self::BrokerKill => broker == BrokerFaults::OwnNode,
                Self::NodeKill => broker == BrokerFaults::OwnCluster,
                _ => true,
            })
            .collect()
    }

    /// How the report names the kind.
    pub fn label(self) -> &'static str {
        match self {
            Self::ConnectionCut => "connection cut (proxy)",
            Self::BlackHole => "black hole (proxy)",
            Self::BrokerClose => "closed by the broker",
            Self::KillRelay => "relay kill -9",
            Self::KillConsumer => "consumer kill -9",
            Self::ParticipantSilent => "participant silent past its timeout",
            Self::KillOrchestrator => "orchestrator kill -9",
            Self::BrokerRestart => "broker restart",
            Self::BrokerKill => "broker kill -9",
            Self::NodeKill => "node kill -9",
        }
    }
}

/// Which process a fault hits: a service, the relay beside it, or (orchestration)
/// the order service's second process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// The service.
    pub service: Service,
    /// Its relay rather than the service itself.
    pub relay: bool,
    /// The service's second process rather than its first.
    pub second: bool,
}

impl Target {
    /// The first process of `service`.
    pub fn service(service: Service) -> Self {
        Self {
            service,
            relay: false,
            second: false,
        }
    }

    /// The relay of `service`.
    pub fn relay(service: Service) -> Self {
        Self {
            relay: true,
            ..Self::service(service)
        }
    }

    /// The second process of `service`.
    pub fn second(service: Service) -> Self {
        Self {
            second: true,
            ..Self::service(service)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.relay, self.second) {
            (true, _) => write!(f, "{}-relay", self.service),
            (false, true) => write!(f, "{}-service-2", self.service),
            (false, false) => write!(f, "{}-service", self.service),
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
    /// Against which process (ignored by the broker's faults, which hit them all; a
    /// node kill hits the node this process's proxy leads to).
    pub target: Target,
    /// How long a black hole or a silence lasts, or how long a killed process (or the
    /// broker) stays down.
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
    kinds: Vec<FaultKind>,
    first_of_each: Vec<FaultKind>,
    step_timeout: Duration,
}

impl FaultPlan {
    /// A plan of `rate` faults per second on average, of the given kinds; 0 plans
    /// none. A silent participant stays silent past `step_timeout`.
    pub fn new(seed: u64, rate: f64, kinds: Vec<FaultKind>, step_timeout: Duration) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut first_of_each = kinds.clone();
        first_of_each.shuffle(&mut rng);
        first_of_each.reverse();
        Self {
            rng,
            rate,
            clock: Duration::from_secs(1),
            kinds,
            first_of_each,
            step_timeout,
        }
    }

    /// A kind at random, a broker restart one time in ten: each takes the broker away
    /// for several seconds, long enough to time out every saga in flight.
    fn draw_kind(&mut self) -> FaultKind {
        let (broker, others): (Vec<FaultKind>, Vec<FaultKind>) =
            self.kinds.iter().partition(|kind| kind.is_broker_restart());
        let pool = if others.is_empty() || (!broker.is_empty() && self.rng.random_bool(0.1)) {
            broker
        } else {
            others
        };
        pool[self.rng.random_range(0..pool.len())]
    }

    /// A fault of `kind` could not go in (the broker was restarting): one of this kind
    /// comes again once the other kinds not yet drawn had their turn.
    pub fn again_later(&mut self, kind: FaultKind) {
        self.first_of_each.insert(0, kind);
    }

    /// The kinds this plan draws from.
    pub fn kinds(&self) -> &[FaultKind] {
        &self.kinds
    }

    /// The next fault, or `None` when the plan injects none.
    pub fn next_fault(&mut self) -> Option<Fault> {
        if self.rate <= 0.0 || self.kinds.is_empty() {
            return None;
        }
        let kind = match self.first_of_each.pop() {
            Some(kind) => kind,
            None => self.draw_kind(),
        };
        let service = Service::ALL[self.rng.random_range(0..Service::ALL.len())];
        let participant = Service::ALL[self.rng.random_range(1..Service::ALL.len())];
        let target = match kind {
            FaultKind::KillRelay => Target::relay(service),
            FaultKind::KillConsumer => Target::service(service),
            FaultKind::ParticipantSilent => Target::service(participant),
            FaultKind::KillOrchestrator if self.rng.random_bool(0.5) => {
                Target::second(Service::Order)
            }
            FaultKind::KillOrchestrator => Target::service(Service::Order),
            _ if self.rng.random_bool(0.5) => Target::relay(service),
            _ => Target::service(service),
        };
        let millis = |rng: &mut StdRng, range: std::ops::RangeInclusive<u64>| {
            Duration::from_millis(rng.random_range(range))
        };
        let lasts = match kind {
            FaultKind::BlackHole => millis(&mut self.rng, 2_000..=4_000),
            FaultKind::ParticipantSilent => {
                self.step_timeout + millis(&mut self.rng, 1_000..=2_500)
            }
            FaultKind::BrokerRestart | FaultKind::BrokerKill | FaultKind::NodeKill => {
                millis(&mut self.rng, 500..=2_000)
            }
            _ => millis(&mut self.rng, 300..=1_500),
        };
        let fault = Fault {
            at: self.clock,
            kind,
            target,
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
        let kinds = FaultKind::available(SagaMode::Orchestration, BrokerFaults::OwnNode);
        let mut plan = FaultPlan::new(seed, rate, kinds, Duration::from_secs(3));
        std::iter::from_fn(|| plan.next_fault()).take(n).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(draw(42, 1.0, 50), draw(42, 1.0, 50));
        assert_ne!(draw(42, 1.0, 50), draw(43, 1.0, 50));
    }

    #[test]
    fn the_first_faults_are_one_of_each_kind() {
        for seed in 0..20 {
            let mut kinds: Vec<FaultKind> = draw(seed, 1.0, 9).iter().map(|f| f.kind).collect();
            kinds.sort();
            let own_node = FaultKind::ALL
                .into_iter()
                .filter(|k| *k != FaultKind::NodeKill);
            assert_eq!(kinds, own_node.collect::<Vec<_>>(), "seed {seed}");
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
                FaultKind::ParticipantSilent => {
                    assert!(!fault.target.relay && fault.target.service != Service::Order);
                    assert!(
                        fault.lasts > Duration::from_secs(3),
                        "silent past the timeout"
                    );
                }
                FaultKind::KillOrchestrator => {
                    assert!(!fault.target.relay && fault.target.service == Service::Order);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn choreography_and_a_shared_broker_leave_out_what_they_cannot_do() {
        let kinds = FaultKind::available(SagaMode::Choreography, BrokerFaults::Shared);
        assert_eq!(kinds.len(), 5);
        assert!(!kinds.contains(&FaultKind::ParticipantSilent));
        assert!(!kinds.contains(&FaultKind::BrokerRestart));
        let kinds = FaultKind::available(SagaMode::Choreography, BrokerFaults::OwnNode);
        assert!(kinds.contains(&FaultKind::BrokerKill));
        assert!(!kinds.contains(&FaultKind::NodeKill));
    }

    #[test]
    fn a_cluster_kills_nodes_in_place_of_restarting_the_broker() {
        let kinds = FaultKind::available(SagaMode::Orchestration, BrokerFaults::OwnCluster);
        assert_eq!(kinds.len(), 8);
        assert!(kinds.contains(&FaultKind::NodeKill));
        assert!(!kinds.contains(&FaultKind::BrokerRestart));
        assert!(!kinds.contains(&FaultKind::BrokerKill));
    }

    #[test]
    fn rate_zero_plans_nothing() {
        assert!(draw(1, 0.0, 10).is_empty());
    }
}
