//! `--soak`: while the run places orders for its duration, every 10 s, sample each
//! process of the fleet (resident memory, open files, connections through its proxy
//! to RabbitMQ), PostgreSQL's connections to each of the run's databases, and the
//! broker's connections and channels in the run's vhost; then write the series and
//! judge growth ([`rule`]).

mod duration;
pub mod probe;
pub mod rule;
pub mod table;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinHandle;

use super::broker::{BrokerCounter, DemoBroker};
use super::databases::DemoDatabases;
use super::saga::Service;
use super::stage::Stage;

pub use duration::parse_duration;

/// Time between samples.
pub const EVERY: Duration = Duration::from_secs(10);

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Measure {
    /// A process's resident memory, KiB.
    RssKib,
    /// A process's open file descriptors.
    Fds,
    /// A process's open connections through its proxy to RabbitMQ.
    AmqpConnections,
    /// PostgreSQL connections to one database.
    PgConnections,
    /// Connections in the run's vhost, as the broker counts them.
    BrokerConnections,
    /// Channels in the run's vhost.
    BrokerChannels,
}

impl Measure {
    /// The column name in `soak.csv`.
    pub fn column(self) -> &'static str {
        match self {
            Measure::RssKib => "rss_kib",
            Measure::Fds => "fds",
            Measure::AmqpConnections => "amqp_connections",
            Measure::PgConnections => "pg_connections",
            Measure::BrokerConnections => "connections",
            Measure::BrokerChannels => "channels",
        }
    }

    /// How much more than 10% a figure must grow by to fail: nothing for memory, 2
    /// for counts.
    pub fn slack(self) -> f64 {
        match self {
            Measure::RssKib => 0.0,
            _ => 2.0,
        }
    }
}

/// One measured figure of one role: a process (`order-relay`), a database
/// (`order-db`) or the broker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Figure {
    /// Whose.
    pub role: String,
    /// What.
    pub measure: Measure,
}

impl Figure {
    /// `measure` of `role`.
    pub fn new(role: &str, measure: Measure) -> Self {
        Self {
            role: role.to_owned(),
            measure,
        }
    }
}

/// One sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When, from the start of the run.
    pub at: Duration,
    /// Each figure; `None` when it could not be read (a process down, the broker
    /// restarting).
    pub figures: BTreeMap<Figure, Option<u64>>,
}

/// Takes a sample every [`EVERY`] until the soak's duration has passed. The processes
/// are read at once, by the pid each role has now (a restarted process has a new one);
/// PostgreSQL and the broker on a task, so `rabbitmqctl` never holds up the run.
pub struct Sampler {
    start: Instant,
    until: Duration,
    next: Duration,
    pool: PgPool,
    databases: Vec<(String, String)>,
    broker: BrokerCounter,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sampler {
    /// A sampler for a soak of `duration`, starting now.
    pub fn new(duration: Duration, databases: &DemoDatabases, broker: &DemoBroker) -> Self {
        let names = Service::ALL
            .iter()
            .map(|s| (format!("{}-db", s.name()), databases.name(*s).to_owned()))
            .collect();
        Self {
            start: Instant::now(),
            until: duration,
            next: EVERY,
            pool: databases.pool(Service::Order).clone(),
            databases: names,
            broker: broker.counter(),
            samples: Arc::default(),
            tasks: Vec::new(),
        }
    }

    /// Samples if one is due.
    pub fn tick(&mut self, stage: &Stage) {
        let at = self.start.elapsed();
        if at < self.next || self.next > self.until {
            return;
        }
        self.next += EVERY;
        let mut figures = BTreeMap::new();
        for (name, pid) in stage.fleet.pids() {
            figures.insert(
                Figure::new(&name, Measure::RssKib),
                pid.and_then(probe::rss_kib),
            );
            figures.insert(Figure::new(&name, Measure::Fds), pid.and_then(probe::fds));
            let proxy = stage
                .proxies
                .get(&name)
                .map(|p| p.open_connections() as u64);
            figures.insert(Figure::new(&name, Measure::AmqpConnections), proxy);
        }
        let (pool, databases, broker) = (
            self.pool.clone(),
            self.databases.clone(),
            self.broker.clone(),
        );
        let samples = Arc::clone(&self.samples);
        self.tasks.push(tokio::spawn(async move {
            let names: Vec<String> = databases.iter().map(|(_, name)| name.clone()).collect();
            let counts = probe::pg_connections(&pool, &names).await;
            for (role, name) in &databases {
                let count = counts.as_ref().and_then(|c| c.get(name).copied());
                figures.insert(Figure::new(role, Measure::PgConnections), count);
            }
            let broker = broker.connections_and_channels().await;
            figures.insert(
                Figure::new("broker", Measure::BrokerConnections),
                broker.map(|(connections, _)| connections),
            );
            figures.insert(
                Figure::new("broker", Measure::BrokerChannels),
                broker.map(|(_, channels)| channels),
            );
            let sample = Sample { at, figures };
            println!(
                "[{:>6.1}s] soak sample: {}",
                at.as_secs_f64(),
                table::brief(&sample)
            );
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sample);
        }));
    }

    /// Waits for the samples still being taken, and returns them all in time order.
    pub async fn finish(self) -> Vec<Sample> {
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        let mut samples =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        samples.sort_by_key(|s| s.at);
        samples
    }
}
