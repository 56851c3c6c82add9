//! The demo's corner of RabbitMQ: a vhost of its own (so that closing "every
//! connection of the demo" from the broker's side touches nothing else, and removing
//! it removes every queue the run made), its exchange, and each service's queues. On
//! a machine with `rabbitmq-server` installed, the run has a node of its own too, which
//! it stops, kills and starts again during the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox::wire::dead_queue;
use testkit::RabbitNode;
use tokio::process::Command;
use tokio::sync::Mutex;
use url::Url;

use super::saga::{SagaMode, Service, consumer_config, queue_name};

/// The run's broker objects, and how to reach them.
pub struct DemoBroker {
    /// The AMQP URL of the run's vhost.
    pub url: Url,
    /// The vhost made for the run, when `rabbitmqctl` could make one.
    pub vhost: Option<String>,
    prefix: String,
    mode: SagaMode,
    node: Option<Arc<Mutex<RabbitNode>>>,
    restarting: Arc<AtomicBool>,
    restarts: Arc<AtomicU32>,
}

impl DemoBroker {
    /// Makes a vhost named `prefix` (through `rabbitmqctl`, where it works), then the
    /// exchange `prefix` and, for each service, its queue, bindings and dead-letter
    /// queue, so nothing a relay publishes is unroutable before a consumer starts.
    /// With `node`, everything lives on that node rather than at `amqp_url`.
    pub async fn set_up(
        amqp_url: &str,
        prefix: &str,
        mode: SagaMode,
        node: Option<RabbitNode>,
    ) -> anyhow::Result<Self> {
        let mut url = match &node {
            Some(node) => Url::parse(&node.amqp_url())?,
            None => Url::parse(amqp_url)?,
        };
        let node = node.map(|node| Arc::new(Mutex::new(node)));
        let user = match url.username() {
            "" => "guest".to_owned(),
            user => user.to_owned(),
        };
        let vhost = match make_vhost(node.as_ref(), prefix, &user).await {
            Ok(()) => {
                url.set_path(&format!("/{prefix}"));
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
            url,
            vhost,
            prefix: prefix.to_owned(),
            mode,
            node,
            restarting: Arc::new(AtomicBool::new(false)),
            restarts: Arc::new(AtomicU32::new(0)),
        };
        broker.declare().await?;
        Ok(broker)
    }

    /// Whether the run has a node of its own, which it may restart.
    pub fn can_restart(&self) -> bool {
        self.node.is_some()
    }

    /// Whether a restart is under way (the broker is down or starting).
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

    /// Restarts the run's node completed so far.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// On a task of its own (a node takes seconds to start): stops the run's node
    /// (`kill -9` when `kill`), leaves it down for `down_for`, and starts it again on
    /// the same port and data. False when there is no node of the run's own, or a
    /// restart is already under way.
    pub fn restart(&self, kill: bool, down_for: Duration) -> bool {
        let Some(node) = self.node.clone() else {
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
        let node = self.node.clone();
        tokio::spawn(async move {
            let closed = rabbitmqctl(
                node.as_ref(),
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

    /// Removes what the run made: its node, or the vhost with everything in it, or,
    /// without either, the run's exchange and queues (retry queues included).
    pub async fn tear_down(self) -> anyhow::Result<()> {
        if let Some(mut node) = self.node {
            // A restart still under way (a run cut short) finishes first.
            for _ in 0..600 {
                match Arc::try_unwrap(node) {
                    Ok(node) => return node.into_inner().remove().await,
                    Err(shared) => node = shared,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::bail!("the run's RabbitMQ node is still being restarted after a minute");
        }
        if let Some(vhost) = &self.vhost {
            return rabbitmqctl(None, &["delete_vhost", vhost]).await;
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

async fn make_vhost(
    node: Option<&Arc<Mutex<RabbitNode>>>,
    vhost: &str,
    user: &str,
) -> anyhow::Result<()> {
    rabbitmqctl(node, &["add_vhost", vhost]).await?;
    let permissions = ["set_permissions", "--vhost", vhost, user, ".*", ".*", ".*"];
    rabbitmqctl(node, &permissions).await
}

/// `rabbitmqctl` against the run's node, or the machine's default one.
async fn rabbitmqctl(node: Option<&Arc<Mutex<RabbitNode>>>, args: &[&str]) -> anyhow::Result<()> {
    if let Some(node) = node {
        node.lock().await.rabbitmqctl(args).await?;
        return Ok(());
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
    Ok(())
}
