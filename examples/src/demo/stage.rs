//! The stage of a run: the four services and their relays, each behind a TCP proxy
//! of its own to RabbitMQ, so a fault can hit one process's connections. Under
//! orchestration the order service runs a second process, so that the saga's
//! orchestrator has two instances. On a cluster, each proxy leads to one node (the
//! processes spread over the nodes), and each process's `AMQP_URL` lists the other
//! nodes after its proxy, for it to move on to when its node is cut off or killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use testkit::FaultyProxy;

use super::broker::DemoBroker;
use super::cli::DemoArgs;
use super::databases::DemoDatabases;
use super::fleet::{Fleet, ProcessSpec};
use super::plan::Target;
use super::saga::{SagaMode, Service};

/// The processes of a run and the proxies in front of them.
pub struct Stage {
    /// The processes, by the name of their target.
    pub fleet: Fleet,
    /// One proxy per process.
    pub proxies: BTreeMap<String, Arc<FaultyProxy>>,
    /// The node (an index into the broker's node URLs) each process's proxy leads to.
    pub homes: BTreeMap<String, usize>,
    /// Where each process logs.
    pub logs: PathBuf,
}

/// Relay settings for a lively demo: a dead relay's leases lapse in 5 s, a lost
/// confirm is given up on in 3 s (below the lease), and sent rows are kept for the
/// verifier to count.
const RELAY_ENV: &[(&str, &str)] = &[
    ("OUTBOX_HTTP_ADDR", "127.0.0.1:0"),
    ("OUTBOX_LEASE_TTL", "5s"),
    ("OUTBOX_HEARTBEAT_INTERVAL", "1s"),
    ("OUTBOX_CONFIRM_TIMEOUT", "3s"),
    ("OUTBOX_SHUTDOWN_TIMEOUT", "5s"),
    ("OUTBOX_RETRY_BASE", "500ms"),
    ("OUTBOX_RETENTION", "1d"),
];

impl Stage {
    /// Starts every service and relay of the run.
    pub async fn start(
        args: &DemoArgs,
        prefix: &str,
        databases: &DemoDatabases,
        broker: &DemoBroker,
        relay_program: &Path,
    ) -> anyhow::Result<Self> {
        let logs = std::env::temp_dir().join(format!("exactly-once-demo-{prefix}"));
        std::fs::create_dir_all(&logs)?;
        let mut stage = Self {
            fleet: Fleet::default(),
            proxies: BTreeMap::new(),
            homes: BTreeMap::new(),
            logs,
        };
        let own_program = std::env::current_exe()?;
        let mut targets = Vec::new();
        for service in Service::ALL {
            targets.push(Target::service(service));
            targets.push(Target::relay(service));
        }
        if args.saga == SagaMode::Orchestration {
            targets.push(Target::second(Service::Order));
        }
        let nodes = &broker.node_urls;
        for (n, target) in targets.into_iter().enumerate() {
            let name = target.to_string();
            let home = n % nodes.len();
            let proxy = Arc::new(FaultyProxy::in_front_of(nodes[home].as_str()).await?);
            let mut proxied = nodes[home].clone();
            proxied.set_host(Some("127.0.0.1"))?;
            proxied
                .set_port(Some(proxy.port))
                .map_err(|()| anyhow::anyhow!("AMQP_URL cannot take a port"))?;
            let others = nodes.iter().enumerate().filter(|(i, _)| *i != home);
            let amqp = std::iter::once(proxied.to_string())
                .chain(others.map(|(_, url)| url.to_string()))
                .collect::<Vec<_>>()
                .join(",");
            let service = target.service;
            let mut env = vec![
                (
                    "DATABASE_URL".to_owned(),
                    databases.url(service).to_string(),
                ),
                ("AMQP_URL".to_owned(), amqp),
                ("NO_COLOR".to_owned(), "1".to_owned()),
            ];
            let spec = if target.relay {
                env.extend(
                    RELAY_ENV
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
                env.push(("OUTBOX_EXCHANGE".to_owned(), prefix.to_owned()));
                env.push(("OUTBOX_INSTANCE_ID".to_owned(), name.clone()));
                ProcessSpec {
                    program: relay_program.to_owned(),
                    args: vec!["run".to_owned()],
                    env,
                    log: stage.logs.join(format!("{name}.log")),
                }
            } else {
                ProcessSpec {
                    program: own_program.clone(),
                    args: service_args(args, prefix, target),
                    env,
                    log: stage.logs.join(format!("{name}.log")),
                }
            };
            stage.fleet.start(&name, spec)?;
            stage.proxies.insert(name.clone(), proxy);
            stage.homes.insert(name, home);
        }
        Ok(stage)
    }

    /// Lets traffic through every proxy again.
    pub fn unstall_all(&self) {
        for proxy in self.proxies.values() {
            proxy.stall(false);
        }
    }
}

/// A service process's flags. Only the order service's first process places orders.
fn service_args(args: &DemoArgs, prefix: &str, target: Target) -> Vec<String> {
    let orders = if target.second { 0 } else { args.orders() };
    vec![
        "service".to_owned(),
        "--service".to_owned(),
        target.service.name().to_owned(),
        "--saga".to_owned(),
        args.saga.name().to_owned(),
        "--prefix".to_owned(),
        prefix.to_owned(),
        "--orders".to_owned(),
        orders.to_string(),
        "--order-rate".to_owned(),
        args.order_rate().to_string(),
        "--seed".to_owned(),
        args.seed.to_string(),
        "--payment-failure-rate".to_owned(),
        args.payment_failure_rate.to_string(),
        "--compensation-failure-rate".to_owned(),
        args.compensation_failure_rate.to_string(),
        "--step-timeout-ms".to_owned(),
        args.step_timeout().as_millis().to_string(),
    ]
}

/// The `outbox-relay` binary: `OUTBOX_RELAY_BIN`, or the one built next to this
/// program (`cargo build -p txoutbox-relay`).
pub fn relay_program() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OUTBOX_RELAY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe()?.with_file_name("outbox-relay");
    if beside.is_file() {
        Ok(beside)
    } else {
        anyhow::bail!(
            "no outbox-relay binary at {}; build it first (cargo build -p txoutbox-relay, with the \
             same --release as this demo) or set OUTBOX_RELAY_BIN",
            beside.display()
        )
    }
}
