//! A whole run: set up the databases and the broker, start the processes, drive the
//! faults, stop everything, verify, report, clean up.

use std::time::Duration;

use super::broker::{DemoBroker, Rabbit};
use super::chaos::{self, Ending};
use super::cli::DemoArgs;
use super::databases::DemoDatabases;
use super::plan::{FaultKind, FaultPlan};
use super::report::Report;
use super::saga::{Event, Service};
use super::soak::{self, Sampler};
use super::stage::{self, Stage};
use super::verify::{self, Sources};
use testkit::{RabbitCluster, RabbitNode};

/// How a run ended, as an exit code: 0 every invariant held, 1 one failed, 2 the
/// run could not be set up, 130 interrupted.
pub async fn run(args: DemoArgs) -> u8 {
    match run_checked(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("exactly-once-demo: {error:#}");
            2
        }
    }
}

async fn run_checked(args: DemoArgs) -> anyhow::Result<u8> {
    let database_url = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("set DATABASE_URL to a PostgreSQL server the demo may create databases on")
    })?;
    let amqp_url =
        std::env::var("AMQP_URL").map_err(|_| anyhow::anyhow!("set AMQP_URL to RabbitMQ"))?;
    if let Some(refusal) = args.refusal() {
        anyhow::bail!("{refusal}");
    }
    let relay_program = stage::relay_program()?;
    if args.cluster && !RabbitNode::installed() {
        anyhow::bail!(
            "--cluster needs rabbitmq-server installed (on PATH, in /usr/sbin or in \
             /usr/lib/rabbitmq/bin): the run starts a cluster of its own"
        );
    }
    let prefix = format!("eod_{}", std::process::id());
    println!(
        "exactly-once-demo: {} saga, {} orders at {}/s, {:.0}% of payments fail, {:.0}% of \
         compensations fail at first, {} faults/s, seed {}",
        args.saga,
        args.orders(),
        args.order_rate(),
        args.payment_failure_rate * 100.0,
        args.compensation_failure_rate * 100.0,
        args.fault_rate(),
        args.seed
    );
    if let Some(duration) = args.soak {
        println!(
            "soak: orders placed for {} s, every process, PostgreSQL and the broker sampled every \
             {} s",
            duration.as_secs(),
            soak::EVERY.as_secs()
        );
    }

    let databases = DemoDatabases::create(&database_url, &prefix).await?;
    let rabbit = match own_rabbit(&args, &prefix).await {
        Ok(rabbit) => rabbit,
        Err(error) => {
            databases.drop_all().await?;
            return Err(error);
        }
    };
    let broker = match DemoBroker::set_up(&amqp_url, &prefix, args.saga, rabbit).await {
        Ok(broker) => broker,
        Err(error) => {
            databases.drop_all().await?;
            return Err(error);
        }
    };
    println!(
        "databases {}; RabbitMQ vhost {}",
        databases.names().collect::<Vec<_>>().join(", "),
        broker.vhost.as_deref().unwrap_or("(the URL's own)")
    );
    let outcome = run_staged(&args, &prefix, &databases, &broker, &relay_program).await;

    let cleaned = broker.tear_down().await;
    if args.keep_databases {
        println!(
            "kept the databases: {}",
            databases.names().collect::<Vec<_>>().join(", ")
        );
        print_console_command(&databases, &prefix)?;
    } else {
        databases.drop_all().await?;
        println!(
            "to follow this run's orders in the console (outbox-relay console), run it again \
             with --keep-databases"
        );
    }
    cleaned?;
    outcome
}

/// Writes the console's database list to a file only its owner reads (the URLs may
/// hold a password), and prints how to open the console on it.
fn print_console_command(databases: &DemoDatabases, prefix: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::env::temp_dir().join(format!("{prefix}-console-databases"));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?
        .write_all(databases.console_entries().as_bytes())?;
    let relay = stage::relay_program()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "outbox-relay".to_owned());
    println!(
        "open them in the console, then http://127.0.0.1:8480/ (add CONSOLE_TOKEN=<16+ characters> \
         to act):\n  {relay} console --databases-file {} --final-step {}",
        path.display(),
        CHOREOGRAPHY_FINAL_STEPS.join(",")
    );
    Ok(())
}

/// The events that end a choreographed order: shipped, or its reservation released.
const CHOREOGRAPHY_FINAL_STEPS: [&str; 2] = [
    Event::ShipmentCreated.step(),
    Event::InventoryReleased.step(),
];

async fn run_staged(
    args: &DemoArgs,
    prefix: &str,
    databases: &DemoDatabases,
    broker: &DemoBroker,
    relay_program: &std::path::Path,
) -> anyhow::Result<u8> {
    let mut stage = Stage::start(args, prefix, databases, broker, relay_program).await?;
    println!(
        "processes: {}; logs in {}",
        stage.proxies.keys().cloned().collect::<Vec<_>>().join(", "),
        stage.logs.display()
    );
    let kinds = FaultKind::available(args.saga, broker.faults());
    let plan = FaultPlan::new(
        args.seed,
        args.fault_rate(),
        kinds.clone(),
        args.step_timeout(),
    );
    let mut sampler = args
        .soak
        .map(|duration| Sampler::new(duration, databases, broker));
    let chaos = chaos::drive(&mut stage, databases, broker, plan, args, sampler.as_mut()).await;
    stage.unstall_all();
    stage.fleet.stop_all(Duration::from_secs(10)).await;
    let chaos = chaos?;
    if chaos.ending == Ending::Interrupted {
        println!("interrupted: every process stopped; cleaning up");
        return Ok(130);
    }

    broker.wait_until_up().await;
    let findings = verify::verify(
        Sources {
            order: databases.pool(Service::Order),
            inventory: databases.pool(Service::Inventory),
            payment: databases.pool(Service::Payment),
            shipping: databases.pool(Service::Shipping),
        },
        args.orders(),
        args.saga,
    )
    .await?;
    let report = Report {
        findings: &findings,
        faults: &chaos.faults,
        kinds: &kinds,
        dead_letters: broker.dead_letters().await?,
        broker_restarts: broker.restarts(),
        unexpected_exits: chaos.unexpected_exits,
        elapsed: chaos.elapsed,
    };
    report.print();
    if !report.passed() {
        print_queues(broker).await;
    }
    let grew = match sampler {
        Some(sampler) => soak_report(sampler, &stage.logs).await?,
        None => false,
    };
    println!("logs of every process: {}", stage.logs.display());
    Ok(
        if report.passed() && chaos.ending == Ending::Complete && !grew {
            0
        } else {
            1
        },
    )
}

/// Where the messages that did not take effect may be: every process is stopped by
/// now, so a message a consumer held unacknowledged is back among the ready ones.
async fn print_queues(broker: &DemoBroker) {
    match broker.queues().await {
        Some(Ok(queues)) => println!("queues of the run, once every process stopped:\n{queues}"),
        Some(Err(error)) => println!("note: could not list the run's queues: {error:#}"),
        None => {}
    }
}

/// Writes the soak's series into the run's folder, prints its summary, and says
/// whether a figure grew past the rule.
async fn soak_report(sampler: Sampler, folder: &std::path::Path) -> anyhow::Result<bool> {
    let samples = sampler.finish().await;
    let check = soak::rule::check(&samples);
    soak::table::write(folder, &samples, &check)?;
    println!();
    println!("{}", soak::table::summary(&samples, &check));
    println!(
        "soak series: {} and {}",
        folder.join("soak.csv").display(),
        folder.join("soak.md").display()
    );
    Ok(!check.failures().is_empty())
}

/// A three-node cluster of the run's own with `--cluster` (the run stops if it does not
/// form); else a RabbitMQ node of the run's own, to restart mid-run, where
/// `rabbitmq-server` is installed; otherwise (or with `--shared-broker`) AMQP_URL's
/// broker, and the run says so.
async fn own_rabbit(args: &DemoArgs, prefix: &str) -> anyhow::Result<Rabbit> {
    if args.cluster {
        let cluster = RabbitCluster::start(prefix, 3)
            .await
            .map_err(|error| anyhow::anyhow!("the run's RabbitMQ cluster: {error:#}"))?;
        let nodes: Vec<_> = cluster
            .nodes()
            .iter()
            .map(|node| format!("{} on port {}", node.node_name(), node.port()))
            .collect();
        println!(
            "RabbitMQ: a cluster of the run's own, {}; its nodes killed one at a time",
            nodes.join(", ")
        );
        return Ok(Rabbit::Cluster(cluster));
    }
    Ok(match own_node(args, prefix).await {
        Some(node) => Rabbit::Node(Box::new(node)),
        None => Rabbit::Shared,
    })
}

/// A RabbitMQ node of the run's own, or `None` for AMQP_URL's broker.
async fn own_node(args: &DemoArgs, prefix: &str) -> Option<RabbitNode> {
    if args.shared_broker {
        println!("RabbitMQ: AMQP_URL's broker (--shared-broker); no broker restarts");
        return None;
    }
    if !RabbitNode::installed() {
        println!(
            "note: rabbitmq-server is not installed here: using AMQP_URL's broker, and \
             skipping broker restarts"
        );
        return None;
    }
    match RabbitNode::start(prefix).await {
        Ok(node) => {
            println!(
                "RabbitMQ: a node of the run's own, {} on port {}, to restart mid-run",
                node.node_name(),
                node.port()
            );
            Some(node)
        }
        Err(error) => {
            println!(
                "note: a RabbitMQ node of the run's own did not start ({error:#}): using \
                 AMQP_URL's broker, and skipping broker restarts"
            );
            None
        }
    }
}
