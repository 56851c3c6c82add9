//! The demo's corner of RabbitMQ: a vhost of its own (so that closing "every
//! connection of the demo" from the broker's side touches nothing else, and removing
//! it removes every queue the run made), its exchange, and each service's queues. On
//! a machine with `rabbitmq-server` installed, the run has a node of its own too, which
//! it stops, kills and starts again during the run, or (`--cluster`) a three-node
//! cluster of its own, whose nodes it kills one at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use testkit::{RabbitCluster, RabbitNode};
use tokio::process::Command;
use tokio::sync::Mutex;
use txoutbox::wire::dead_queue;
use url::Url;

use super::plan::BrokerFaults;
use super::saga::{SagaMode, Service, consumer_config, queue_name};

/// Whose RabbitMQ the run uses.
pub enum Rabbit {
    /// `AMQP_URL`'s broker, which the run never stops.
    Shared,
    /// A node of the run's own, to stop or kill and start again.
    Node(Box<RabbitNode>),
    /// A cluster of the run's own, whose nodes it kills one at a time.
    Cluster(RabbitCluster),
}

/// [`Rabbit`] once the run shares it with the tasks that restart its nodes.
#[derive(Clone)]
enum Owned {
    Shared,
    Node(Arc<Mutex<RabbitNode>>),
    Cluster(Arc<Mutex<RabbitCluster>>),
}

/// The run's broker objects, and how to reach them.
pub struct DemoBroker {
    /// The AMQP URL of the run's vhost, on the first node.
    pub url: Url,
    /// The vhost made for the run, when `rabbitmqctl` could make one.
    pub vhost: Option<String>,
    /// The URL of the run's vhost on each node, in the cluster's order (one without a
    /// cluster).
    pub node_urls: Vec<Url>,
    prefix: String,
    mode: SagaMode,
    rabbit: Owned,
    restarting: Arc<AtomicBool>,
    restarts: Arc<AtomicU32>,
}

impl DemoBroker {
    /// Makes a vhost named `prefix` (through `rabbitmqctl`, where it works), then the
    /// exchange `prefix` and, for each service, its queue, bindings and dead-letter
    /// queue, so nothing a relay publishes is unroutable before a consumer starts.
    /// With a node or a cluster of the run's own, everything lives there rather than
    /// at `amqp_url`; a cluster's queues are declared through its first node.
    pub async fn set_up(
        amqp_url: &str,
        prefix: &str,
        mode: SagaMode,
        rabbit: Rabbit,
    ) -> anyhow::Result<Self> {
        let mut node_urls = match &rabbit {
            Rabbit::Shared => vec![Url::parse(amqp_url)?],
            Rabbit::Node(node) => vec![Url::parse(&node.amqp_url())?],
            Rabbit::Cluster(cluster) => cluster
                .nodes()
                .iter()
                .map(|node| Url::parse(&node.amqp_url()))
                .collect::<Result<_, _>>()?,
        };
        let rabbit = match rabbit {
            Rabbit::Shared => Owned::Shared,
            Rabbit::Node(node) => Owned::Node(Arc::new(Mutex::new(*node))),
            Rabbit::Cluster(cluster) => Owned::Cluster(Arc::new(Mutex::new(cluster))),
        };
        let user = match node_urls[0].username() {
            "" => "guest".to_owned(),
            user => user.to_owned(),
        };
        let vhost = match make_vhost(&rabbit, prefix, &user).await {
            Ok(()) => {
                for url in &mut node_urls {
                    url.set_path(&format!("/{prefix}"));
                }
                Some(prefix.to_owned())
            }
            Err(why) => {
                println!(
                    "note: no vhost of its own ({why}); using the URL's, and skipping broker-side closes"
                );
                None
            }
        };
        let broker = Self {
            url: node_urls[0].clone(),
            vhost,
            node_urls,
            prefix: prefix.to_owned(),
            mode,
            rabbit,
            restarting: Arc::new(AtomicBool::new(false)),
            restarts: Arc::new(AtomicU32::new(0)),
        };
        broker.declare().await?;
        Ok(broker)
    }

    /// Whether the run has a node of its own, which it may restart.
    pub fn can_restart(&self) -> bool {
        matches!(self.rabbit, Owned::Node(_))
    }

    /// What the run may do to its RabbitMQ.
    pub fn faults(&self) -> BrokerFaults {
        match self.rabbit {
            Owned::Shared => BrokerFaults::Shared,
            Owned::Node(_) => BrokerFaults::OwnNode,
            Owned::Cluster(_) => BrokerFaults::OwnCluster,
        }
    }

    /// Whether a restart is under way (the broker, or one node of the cluster, is down
    /// or starting).
    pub fn restarting(&self) -> bool {
        self.restarting.load(Ordering::SeqCst)
    }

    /// Waits (up to two minutes) for a restart under way to finish, so that the
    /// broker can be asked what it holds.
    pub async fn wait_until_up(&self) {
        for _ in 0..1_200 {
            if !self.restarting() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Restarts of the run's node, or of a node of its cluster, completed so far.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// On a task of its own (a node takes seconds to start): stops the run's node
    /// (`kill -9` when `kill`), leaves it down for `down_for`, and starts it again on
    /// the same port and data. False when there is no node of the run's own, or a
    /// restart is already under way.
    pub fn restart(&self, kill: bool, down_for: Duration) -> bool {
        let Owned::Node(node) = self.rabbit.clone() else {
            return false;
        };
        if self.restarting.swap(true, Ordering::SeqCst) {
            return false;
        }
        let (restarting, restarts) = (Arc::clone(&self.restarting), Arc::clone(&self.restarts));
        tokio::spawn(async move {
            let mut node = node.lock().await;
            let stopped = if kill {
                node.kill().await
            } else {
                node.stop().await
            };
            if let Err(error) = stopped {
                println!("note: stopping the run's RabbitMQ node failed: {error:#}");
            }
            tokio::time::sleep(down_for).await;
            match node.start_again().await {
                Ok(()) => {
                    restarts.fetch_add(1, Ordering::SeqCst);
                }
                Err(error) => println!("RabbitMQ node did not start again: {error:#}"),
            }
            restarting.store(false, Ordering::SeqCst);
        });
        true
    }

    /// On a task of its own: kills node `index` of the run's cluster (`kill -9` of its
    /// Erlang VM), leaves it down for `down_for`, and starts it again on the same port
    /// and data. The other nodes keep a majority of every quorum queue. False when the
    /// run has no cluster, or a node is already down: never two at once.
    pub fn kill_node(&self, index: usize, down_for: Duration) -> bool {
        let Owned::Cluster(cluster) = self.rabbit.clone() else {
            return false;
        };
        if self.restarting.swap(true, Ordering::SeqCst) {
            return false;
        }
        let (restarting, restarts) = (Arc::clone(&self.restarting), Arc::clone(&self.restarts));
        tokio::spawn(async move {
            let mut cluster = cluster.lock().await;
            let node = cluster.node_mut(index);
            if let Err(error) = node.kill().await {
                println!("note: killing RabbitMQ node {index} failed: {error:#}");
            }
            tokio::time::sleep(down_for).await;
            match node.start_again().await {
                Ok(()) => {
                    restarts.fetch_add(1, Ordering::SeqCst);
                }
                Err(error) => println!("RabbitMQ node {index} did not start again: {error:#}"),
            }
            restarting.store(false, Ordering::SeqCst);
        });
        true
    }

    /// What the soak's sampler needs to count the run's connections and channels.
    pub fn counter(&self) -> BrokerCounter {
        BrokerCounter {
            rabbit: self.rabbit.clone(),
            vhost: self.vhost.clone(),
            restarting: Arc::clone(&self.restarting),
        }
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        Ok(Connection::connect(self.url.as_str(), ConnectionProperties::default()).await?)
    }

    async fn declare(&self) -> anyhow::Result<()> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.prefix.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        for service in Service::ALL {
            consumer_config(&self.prefix, service, self.mode)
                .declare(&channel)
                .await?;
        }
        connection.close(200, "declared".into()).await?;
        Ok(())
    }

    /// Asks the broker, on a task of its own (`rabbitmqctl` takes a second or more),
    /// to close every connection in the run's vhost. False when the run has no vhost
    /// of its own: closing all of the broker's connections would hit others.
    pub fn close_every_connection(&self) -> bool {
        let Some(vhost) = self.vhost.clone() else {
            return false;
        };
        let rabbit = self.rabbit.clone();
        tokio::spawn(async move {
            let closed = rabbitmqctl(
                &rabbit,
                &[
                    "close_all_connections",
                    "--vhost",
                    &vhost,
                    "exactly-once-demo: a fault injected from the broker's side",
                ],
            )
            .await;
            if let Err(error) = closed {
                println!("note: the broker-side close failed: {error:#}");
            }
        });
        true
    }

    /// Messages waiting in the services' dead-letter queues.
    pub async fn dead_letters(&self) -> anyhow::Result<u32> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        let mut total = 0;
        for service in Service::ALL {
            let dead = dead_queue(&queue_name(&self.prefix, service));
            let queue = channel
                .queue_declare(
                    dead.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            total += queue.message_count();
        }
        connection.close(200, "counted".into()).await?;
        Ok(total)
    }

    /// Each queue of the run's vhost with its messages ready and unacknowledged and its
    /// consumers, as `rabbitmqctl list_queues` prints them: where a message that never
    /// took effect is (still queued, held by a consumer, or gone). `None` without a
    /// vhost of the run's own.
    pub async fn queues(&self) -> Option<anyhow::Result<String>> {
        let vhost = self.vhost.as_deref()?;
        let columns = [
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ];
        let mut args = vec!["list_queues", "--vhost", vhost];
        args.extend(columns);
        Some(rabbitmqctl(&self.rabbit, &args).await)
    }

    /// Removes what the run made: its node or cluster, or the vhost with everything
    /// in it, or, without any, the run's exchange and queues (retry queues included).
    pub async fn tear_down(self) -> anyhow::Result<()> {
        match self.rabbit {
            Owned::Node(node) => return node_of_its_own(node).await?.remove().await,
            Owned::Cluster(cluster) => return node_of_its_own(cluster).await?.remove().await,
            Owned::Shared => {}
        }
        if let Some(vhost) = &self.vhost {
            return rabbitmqctl(&Owned::Shared, &["delete_vhost", vhost])
                .await
                .map(drop);
        }
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        for service in Service::ALL {
            consumer_config(&self.prefix, service, self.mode)
                .delete(&channel)
                .await?;
        }
        channel
            .exchange_delete(
                self.prefix.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        connection.close(200, "removed".into()).await?;
        Ok(())
    }
}

/// Counts the connections and channels in the run's vhost, off the run's loop.
#[derive(Clone)]
pub struct BrokerCounter {
    rabbit: Owned,
    vhost: Option<String>,
    restarting: Arc<AtomicBool>,
}

impl BrokerCounter {
    /// Connections and channels in the run's vhost (`rabbitmqctl list_connections`);
    /// `None` without a vhost of the run's own, while a node restarts, or when the tool
    /// does not answer within 5 s.
    pub async fn connections_and_channels(&self) -> Option<(u64, u64)> {
        let vhost = self.vhost.as_deref()?;
        if self.restarting.load(Ordering::SeqCst) {
            return None;
        }
        let args = [
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "--vhost",
            vhost,
            "channels",
        ];
        let listed = tokio::time::timeout(Duration::from_secs(5), rabbitmqctl(&self.rabbit, &args));
        let output = listed.await.ok()?.ok()?;
        let channels: Vec<u64> = output
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        Some((channels.len() as u64, channels.iter().sum()))
    }
}

/// The run's node or cluster, once no restart holds it any more: a restart still under
/// way (a run cut short) finishes first.
async fn node_of_its_own<T>(mut shared: Arc<Mutex<T>>) -> anyhow::Result<T> {
    for _ in 0..600 {
        match Arc::try_unwrap(shared) {
            Ok(owned) => return Ok(owned.into_inner()),
            Err(still) => shared = still,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the run's RabbitMQ node is still being restarted after a minute");
}

async fn make_vhost(rabbit: &Owned, vhost: &str, user: &str) -> anyhow::Result<()> {
    rabbitmqctl(rabbit, &["add_vhost", vhost]).await?;
    let permissions = ["set_permissions", "--vhost", vhost, user, ".*", ".*", ".*"];
    rabbitmqctl(rabbit, &permissions).await.map(drop)
}

/// `rabbitmqctl` against the run's node, a running node of its cluster, or the
/// machine's default node; its output.
async fn rabbitmqctl(rabbit: &Owned, args: &[&str]) -> anyhow::Result<String> {
    match rabbit {
        Owned::Node(node) => return node.lock().await.rabbitmqctl(args).await,
        Owned::Cluster(cluster) => return cluster.lock().await.rabbitmqctl(args).await,
        Owned::Shared => {}
    }
    let output = Command::new("rabbitmqctl")
        .arg("--quiet")
        .args(args)
        // Its own process group: a Ctrl-C at the terminal must not cut the demo's
        // clean-up short.
        .process_group(0)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("rabbitmqctl: {e}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "rabbitmqctl {}: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
