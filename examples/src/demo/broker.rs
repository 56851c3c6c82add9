//! The demo's corner of RabbitMQ: a vhost of its own (so that closing "every
//! connection of the demo" from the broker's side touches nothing else, and removing
//! it removes every queue the run made), its exchange, and each service's queues.

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox::wire::dead_queue;
use tokio::process::Command;
use url::Url;

use super::saga::{Service, consumer_config, queue_name};

/// The run's broker objects, and how to reach them.
#[derive(Debug)]
pub struct DemoBroker {
    /// The AMQP URL of the run's vhost.
    pub url: Url,
    /// The vhost made for the run, when `rabbitmqctl` could make one.
    pub vhost: Option<String>,
    prefix: String,
}

impl DemoBroker {
    /// Makes a vhost named `prefix` (through `rabbitmqctl`, where it works), then the
    /// exchange `prefix` and, for each service, its queue, bindings and dead-letter
    /// queue, so nothing a relay publishes is unroutable before a consumer starts.
    pub async fn set_up(amqp_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let mut url = Url::parse(amqp_url)?;
        let user = match url.username() {
            "" => "guest".to_owned(),
            user => user.to_owned(),
        };
        let vhost = match make_vhost(prefix, &user).await {
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
        };
        broker.declare().await?;
        Ok(broker)
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
            consumer_config(&self.prefix, service)
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
        tokio::spawn(async move {
            let closed = rabbitmqctl(&[
                "close_all_connections",
                "--vhost",
                &vhost,
                "exactly-once-demo: a fault injected from the broker's side",
            ])
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

    /// Removes what the run made: the vhost with everything in it, or, without one,
    /// the run's exchange and queues (retry queues included).
    pub async fn tear_down(&self) -> anyhow::Result<()> {
        if let Some(vhost) = &self.vhost {
            return rabbitmqctl(&["delete_vhost", vhost]).await;
        }
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        for service in Service::ALL {
            consumer_config(&self.prefix, service)
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

async fn make_vhost(vhost: &str, user: &str) -> anyhow::Result<()> {
    rabbitmqctl(&["add_vhost", vhost]).await?;
    rabbitmqctl(&["set_permissions", "--vhost", vhost, user, ".*", ".*", ".*"]).await
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
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
