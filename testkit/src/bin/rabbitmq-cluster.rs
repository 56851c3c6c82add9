//! A local RabbitMQ cluster of three nodes for tests, the demo and people, that
//! outlives this command: `rabbitmq-cluster start|status|stop`.
//! Run with: `scripts/rabbitmq-cluster.sh start` (which calls this).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use testkit::{RabbitCluster, RabbitNode};

/// How many nodes `start` forms a cluster of.
const NODES: usize = 3;

/// A local three-node RabbitMQ cluster on ports of its own (the machine's broker is
/// not touched), for tests, the demo and people.
#[derive(Parser)]
#[command(
    after_help = "Exit codes: 0 done (status: every node runs), 1 error, 3 status: \
                        not every node runs, or no cluster."
)]
struct Cli {
    /// Where the nodes keep their data, logs and cookie [default: rabbitmq-cluster in
    /// $TMPDIR, or /tmp]
    #[arg(long, env = "RABBIT_CLUSTER_DIR", global = true)]
    dir: Option<PathBuf>,
    /// The first node's AMQP port, the others' follow it; Erlang distribution runs
    /// 20000 above each
    #[arg(
        long,
        env = "RABBIT_CLUSTER_PORT",
        default_value_t = 5681,
        global = true
    )]
    port: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts the cluster (or the nodes of it that are down), and prints the AMQP_URL
    /// to use on stdout: `export AMQP_URL=$(scripts/rabbitmq-cluster.sh start)`.
    Start,
    /// Shows each node and whether it runs in the cluster.
    Status,
    /// Stops the nodes and removes their data.
    Stop,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    anyhow::ensure!(
        RabbitNode::installed(),
        "rabbitmq-server is not installed (looked on PATH, in /usr/sbin and /usr/lib/rabbitmq/bin)"
    );
    let dir = cli
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join("rabbitmq-cluster"));
    let _one_at_a_time = lock(&dir)?;
    match cli.command {
        Command::Start => start(&dir, cli.port).await,
        Command::Status => status(&dir).await,
        Command::Stop => stop(&dir).await,
    }
}

async fn start(dir: &Path, port: u16) -> anyhow::Result<ExitCode> {
    let clock = Instant::now();
    let ran = match RabbitCluster::open(dir)? {
        Some(cluster) if cluster.nodes().iter().all(RabbitNode::is_running) => {
            let running = cluster.running_nodes().await.unwrap_or_default();
            !running.is_empty() && running.len() == cluster.nodes().len()
        }
        _ => false,
    };
    let cluster = RabbitCluster::start_detached(dir, port, NODES)
        .await
        .with_context(|| {
            format!(
                "the cluster in {} did not start; `scripts/rabbitmq-cluster.sh stop` removes it",
                dir.display()
            )
        })?;
    if cluster
        .nodes()
        .first()
        .is_some_and(|node| node.port() != port)
    {
        eprintln!(
            "rabbitmq-cluster: note: the cluster in {} has ports of its own; stop it first \
             to move it to port {port}",
            dir.display()
        );
    }
    let how = match ran {
        true => "already ran".to_owned(),
        false => format!("started in {:.1?}", clock.elapsed()),
    };
    eprintln!(
        "rabbitmq-cluster: {} nodes run in {} ({how}); AMQP_URL:",
        cluster.nodes().len(),
        dir.display(),
    );
    println!("{}", cluster.amqp_urls());
    Ok(ExitCode::SUCCESS)
}

async fn status(dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(cluster) = RabbitCluster::open(dir)? else {
        println!("no cluster in {}", dir.display());
        return Ok(ExitCode::from(3));
    };
    let running = match cluster.nodes().iter().any(RabbitNode::is_running) {
        true => cluster.running_nodes().await.unwrap_or_default(),
        false => Vec::new(),
    };
    println!("cluster in {}:", dir.display());
    for (index, node) in cluster.nodes().iter().enumerate() {
        let state = match (node.is_running(), running.contains(&index)) {
            (true, true) => "running",
            (true, false) => "running, not in the cluster",
            (false, _) => "stopped",
        };
        println!("  {}  {}  {state}", node.node_name(), node.amqp_url());
    }
    println!("AMQP_URL={}", cluster.amqp_urls());
    Ok(
        match !running.is_empty() && running.len() == cluster.nodes().len() {
            true => ExitCode::SUCCESS,
            false => ExitCode::from(3),
        },
    )
}

async fn stop(dir: &Path) -> anyhow::Result<ExitCode> {
    match RabbitCluster::open(dir)? {
        Some(cluster) => {
            cluster.remove().await?;
            eprintln!("rabbitmq-cluster: stopped, and removed {}", dir.display());
        }
        None => eprintln!("rabbitmq-cluster: no cluster in {}", dir.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// An exclusive lock on `<dir>.lock`, so that two commands on one cluster take turns.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    let mut path = dir.as_os_str().to_owned();
    path.push(".lock");
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::File::create(&path)
        .with_context(|| format!("opening {}", Path::new(&path).display()))?;
    file.lock()?;
    Ok(file)
}
