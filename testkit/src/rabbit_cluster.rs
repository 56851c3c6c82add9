//! A RabbitMQ cluster of private nodes: a test's own, or the local one that
//! `scripts/rabbitmq-cluster.sh` keeps running for tests, the demo and people.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::rabbit_node::{Place, RabbitNode};

/// How long the members may take to show up as running in `cluster_status`.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Written in a detached cluster's directory once the cluster has formed: without it,
/// the directory holds a formation that did not finish.
const FORMED: &str = "formed";
/// A detached member's Erlang distribution port, above its AMQP port (RabbitMQ's own
/// are 5672 and 25672).
const DIST_PORT_OFFSET: u16 = 20_000;

/// RabbitMQ nodes of their own ([`RabbitNode`]s) joined into one cluster, for a test of
/// what clients do when a member stops, dies or comes back: quorum queues, failover
/// between nodes. Members share the process's Erlang cookie; the machine's shared
/// broker is not touched.
///
/// [`RabbitCluster::start`] starts the members at once, then joins each to the first
/// (`rabbitmqctl stop_app`, `join_cluster`, `start_app`), and returns when
/// `cluster_status` shows all of them running. Three nodes form a cluster in 16-20 s
/// on a 2-CPU VM (RabbitMQ 3.10.8, Erlang 25): 10-13 s to start them together (one
/// alone takes 7.5 s), then 0.5-1 s per `rabbitmqctl` call, 6-7.5 s to join the two
/// others one after the other, and 0.5-1 s until `cluster_status` shows them. Joining
/// them at once saved only 1.3 s and is what RabbitMQ's peer discovery takes a lock
/// to avoid, so they join in turn. Two clusters starting at once on 2 CPUs take
/// 32-34 s each.
///
/// Every member is dropped as a [`RabbitNode`] is: killed, and its directory removed
/// (left for the next start to sweep when the test panics). [`RabbitCluster::remove`]
/// kills them all too, as their data goes anyway.
///
/// ```rust,no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use testkit::{RabbitCluster, RabbitNode};
///
/// if !RabbitNode::installed() {
///     eprintln!("skipped: rabbitmq-server is not installed");
///     return Ok(());
/// }
/// let mut cluster = RabbitCluster::start("failover", 3).await?;
/// // ... clients connect to cluster.amqp_urls(); declare a quorum queue "orders" ...
/// if let Some(leader) = cluster.queue_leader("orders", "/").await? {
///     cluster.node_mut(leader).stop().await?;
/// }
/// cluster.remove().await
/// # }
/// ```
pub struct RabbitCluster {
    nodes: Vec<RabbitNode>,
    /// The directory of a detached cluster's members, removed with them.
    detached: Option<PathBuf>,
}

/// A quorum queue's members as the cluster sees them, each an index into
/// [`RabbitCluster::nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuorumQueue {
    /// The member that leads the queue; `None` while none does (an election).
    pub leader: Option<usize>,
    /// Every member of the queue's Raft group, in the cluster's order.
    pub members: Vec<usize>,
    /// The members that run the queue now, in the cluster's order.
    pub online: Vec<usize>,
}

impl RabbitCluster {
    /// Starts `size` fresh nodes (named as [`RabbitNode::start`] names them), joins them
    /// into one cluster, and returns once all of them run in it. The error of a cluster
    /// that does not form names the step, and the nodes are killed.
    pub async fn start(name: &str, size: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(size > 0, "a cluster has at least one node");
        let nodes = RabbitNode::start_many(name, size).await?;
        let cluster = Self {
            nodes,
            detached: None,
        };
        cluster.form().await?;
        Ok(cluster)
    }

    /// Makes sure a cluster that outlives this process runs in `dir` (what
    /// `scripts/rabbitmq-cluster.sh start` does): a cluster already there has its
    /// stopped members started again, whatever `first_port` and `size` say; a formation
    /// that did not finish is removed; otherwise `size` nodes start and form a cluster,
    /// named `rabbit-cluster-<port>@localhost`, on AMQP ports `first_port` and up and
    /// distribution ports 20000 above them. No `sweep` touches them, as long as `dir` is
    /// not inside the directory of [`RabbitNode::start`]'s nodes.
    pub async fn start_detached(dir: &Path, first_port: u16, size: usize) -> anyhow::Result<Self> {
        if let Some(mut cluster) = Self::open(dir)? {
            if cluster.formed() {
                cluster.start_again().await?;
                return Ok(cluster);
            }
            cluster.remove().await?;
        }
        anyhow::ensure!(size > 0, "a cluster has at least one node");
        let mut places = Vec::with_capacity(size);
        for n in 0..size {
            let port = u16::try_from(n)
                .ok()
                .and_then(|n| first_port.checked_add(n))
                .filter(|port| port.checked_add(DIST_PORT_OFFSET).is_some())
                .with_context(|| {
                    format!("{size} nodes from port {first_port} do not fit below 45536")
                })?;
            let dist_port = port + DIST_PORT_OFFSET;
            for port in [port, dist_port] {
                until_free(port).await?;
            }
            let short = format!("rabbit-cluster-{port}");
            places.push(Place {
                dir: dir.join(&short),
                short,
                port,
                dist_port,
            });
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Owned by this process until formed: an error kills them.
        let mut cluster = Self {
            nodes: RabbitNode::start_at(places).await?,
            detached: Some(dir.to_owned()),
        };
        cluster.form().await?;
        for node in &mut cluster.nodes {
            node.detach()?;
        }
        std::fs::write(dir.join(FORMED), "")?;
        Ok(cluster)
    }

    /// The detached cluster in `dir` (see [`RabbitCluster::start_detached`]), with
    /// each member running or not; `None` when there is none. Dropping it leaves the
    /// members as they are.
    pub fn open(dir: &Path) -> anyhow::Result<Option<Self>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).context(format!("reading {}", dir.display())),
        };
        let mut nodes = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                nodes.push(RabbitNode::open(&path)?);
            }
        }
        nodes.sort_by_key(RabbitNode::port);
        Ok(Some(Self {
            nodes,
            detached: Some(dir.to_owned()),
        }))
    }

    /// Starts every member that is not running again, all at once, and returns when
    /// all of them run in the cluster.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let stopped = self.nodes.iter_mut().filter(|node| !node.is_running());
        futures_util::future::try_join_all(stopped.map(RabbitNode::start_again)).await?;
        self.wait_until_running().await
    }

    /// Every member's AMQP URL, comma-separated, in the cluster's order: the form
    /// `AMQP_URL` takes for a cluster.
    pub fn amqp_urls(&self) -> String {
        let urls: Vec<_> = self.nodes.iter().map(RabbitNode::amqp_url).collect();
        urls.join(",")
    }

    /// The members, the first being the one the others joined.
    pub fn nodes(&self) -> &[RabbitNode] {
        &self.nodes
    }

    /// Member `index` (from 0).
    ///
    /// # Panics
    /// When the cluster has no such member.
    pub fn node(&self, index: usize) -> &RabbitNode {
        &self.nodes[index]
    }

    /// Member `index` (from 0), to stop, kill or start again.
    ///
    /// # Panics
    /// When the cluster has no such member.
    pub fn node_mut(&mut self, index: usize) -> &mut RabbitNode {
        &mut self.nodes[index]
    }

    /// Runs `rabbitmqctl <args>` on the first member that runs and answers; returns
    /// its stdout.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut failed = None;
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            match node.rabbitmqctl(args).await {
                Ok(output) => return Ok(output),
                Err(error) => failed = Some(error),
            }
        }
        Err(failed.unwrap_or_else(|| anyhow::anyhow!("no member of the cluster runs")))
    }

    /// The members that `cluster_status` shows running, in the cluster's order.
    pub async fn running_nodes(&self) -> anyhow::Result<Vec<usize>> {
        let status = self
            .rabbitmqctl(&["cluster_status", "--formatter", "json"])
            .await?;
        let status: serde_json::Value =
            serde_json::from_str(&status).context("cluster_status is not JSON")?;
        let mut running = self.indices(&status["running_nodes"])?;
        running.sort_unstable();
        Ok(running)
    }

    /// Waits until `cluster_status` shows every member running.
    pub async fn wait_until_running(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let last = match self.running_nodes().await {
                Ok(running) if running.len() == self.nodes.len() => return Ok(()),
                Ok(running) => format!("running: {running:?}"),
                Err(error) => format!("{error:#}"),
            };
            anyhow::ensure!(
                Instant::now() < deadline,
                "not every member of the cluster runs after {TIMEOUT:?} ({last}); see the logs \
                 in {}",
                self.nodes
                    .iter()
                    .map(|node| node.dir().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The member that leads quorum queue `queue` of `vhost`; `None` while none does.
    pub async fn queue_leader(&self, queue: &str, vhost: &str) -> anyhow::Result<Option<usize>> {
        Ok(self.quorum_queue(queue, vhost).await?.leader)
    }

    /// Quorum queue `queue` of `vhost` as `rabbitmqctl list_queues` shows it: its
    /// leader, members and online members.
    pub async fn quorum_queue(&self, queue: &str, vhost: &str) -> anyhow::Result<QuorumQueue> {
        let list = self
            .rabbitmqctl(&[
                "list_queues",
                "-p",
                vhost,
                "name",
                "type",
                "leader",
                "members",
                "online",
                "--formatter",
                "json",
            ])
            .await?;
        let list: serde_json::Value =
            serde_json::from_str(&list).context("list_queues is not JSON")?;
        let found = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|found| found["name"] == queue)
            .with_context(|| format!("no queue {queue:?} in vhost {vhost:?}"))?;
        anyhow::ensure!(
            found["type"] == "quorum",
            "queue {queue:?} is no quorum queue: {}",
            found["type"]
        );
        let leader = match found["leader"].as_str() {
            None | Some("") => None,
            Some(leader) => Some(self.index(leader)?),
        };
        let sorted = |nodes: &serde_json::Value| -> anyhow::Result<Vec<usize>> {
            let mut indices = self.indices(nodes)?;
            indices.sort_unstable();
            Ok(indices)
        };
        Ok(QuorumQueue {
            leader,
            members: sorted(&found["members"])?,
            online: sorted(&found["online"])?,
        })
    }

    /// Kills every member (their data goes anyway) and removes their directories, and
    /// a detached cluster's own.
    pub async fn remove(mut self) -> anyhow::Result<()> {
        let mut removed = Ok(());
        for mut node in std::mem::take(&mut self.nodes) {
            let gone = async move {
                if node.is_running() {
                    node.kill().await?;
                }
                node.remove().await
            };
            // The first error, after trying every member.
            removed = removed.and(gone.await);
        }
        removed?;
        if let Some(dir) = self.detached.take() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    /// Joins every member but the first to the first, one after the other, and waits
    /// until all run in the cluster.
    async fn form(&self) -> anyhow::Result<()> {
        let Some((first, others)) = self.nodes.split_first() else {
            return Ok(());
        };
        for node in others {
            for step in [
                vec!["stop_app"],
                vec!["join_cluster", first.node_name()],
                vec!["start_app"],
            ] {
                node.rabbitmqctl(&step).await.with_context(|| {
                    format!("joining {} to {}", node.node_name(), first.node_name())
                })?;
            }
        }
        self.wait_until_running().await
    }

    /// Whether this is a cluster that has formed: one of this process's, or a detached
    /// one whose formation finished.
    fn formed(&self) -> bool {
        !self.nodes.is_empty()
            && self
                .detached
                .as_ref()
                .is_none_or(|dir| dir.join(FORMED).exists())
    }

    fn index(&self, node: &str) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|ours| ours.node_name() == node)
            .with_context(|| format!("{node} is no member of this cluster"))
    }

    fn indices(&self, nodes: &serde_json::Value) -> anyhow::Result<Vec<usize>> {
        let nodes = nodes.as_array().context("not a list of nodes")?;
        nodes
            .iter()
            .map(|node| self.index(node.as_str().context("not a node name")?))
            .collect()
    }
}

/// Waits until `port` is free on 127.0.0.1, for a few seconds: the connections of a VM
/// killed a moment ago (the remains of a formation that did not finish) can hold its
/// ports for a little while after it is gone (seen for 100 ms here).
async fn until_free(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(error).context(format!("port {port} is taken: choose other ports"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
