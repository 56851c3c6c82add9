//! A node of the test's own keeps a durable queue's persistent messages through a
//! graceful restart and through a kill -9, cuts its clients off when killed, and
//! leaves nothing behind; the machine's shared broker notices none of it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, Event};
use testkit::RabbitNode;

const MESSAGES: u32 = 100;

#[tokio::test]
async fn a_node_keeps_persistent_messages_through_a_restart_and_a_kill() -> anyhow::Result<()> {
    if !RabbitNode::installed() {
        eprintln!(
            "skipped: rabbitmq-server is not installed (PATH, /usr/sbin, /usr/lib/rabbitmq/bin)"
        );
        return Ok(());
    }
    let shared = testkit::amqp_url();
    let shared_was_up = accepts(&shared).await;
    let mut took = Vec::new();

    let clock = Instant::now();
    let mut node = RabbitNode::start("testkit-test").await?;
    took.push(("start", clock.elapsed()));
    let queue = format!("test-q-{}", uuid::Uuid::now_v7().simple());
    publish(&node.amqp_url(), &queue).await?;
    assert_eq!(waiting(&node.amqp_url(), &queue).await?, MESSAGES);

    let clock = Instant::now();
    node.stop().await?;
    took.push(("stop", clock.elapsed()));
    let clock = Instant::now();
    node.start_again().await?;
    took.push(("start_again after stop", clock.elapsed()));
    assert_eq!(
        waiting(&node.amqp_url(), &queue).await?,
        MESSAGES,
        "after a graceful restart"
    );

    let client = Connection::connect(&node.amqp_url(), ConnectionProperties::default()).await?;
    let mut events = client.events_listener();
    let clock = Instant::now();
    node.kill().await?;
    took.push(("kill", clock.elapsed()));
    let error = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let Event::Error(error) = event {
                return Some(error);
            }
        }
        None
    })
    .await;
    assert!(
        matches!(error, Ok(Some(_))),
        "a client of the killed node saw no error: {error:?}"
    );
    assert!(
        client.create_channel().await.is_err(),
        "a client of the killed node still opens channels"
    );

    let clock = Instant::now();
    node.start_again().await?;
    took.push(("start_again after kill", clock.elapsed()));
    assert_eq!(
        waiting(&node.amqp_url(), &queue).await?,
        MESSAGES,
        "after a kill -9"
    );

    let (dir, name) = (node.dir().to_owned(), node.node_name().to_owned());
    let clock = Instant::now();
    node.remove().await?;
    took.push(("remove", clock.elapsed()));
    assert!(!dir.exists(), "{} is still there", dir.display());
    let pgrep = std::process::Command::new("pgrep")
        .args(["-a", "-f", &name])
        .output()?;
    assert!(
        !pgrep.status.success(),
        "{name} still runs: {}",
        String::from_utf8_lossy(&pgrep.stdout)
    );

    if shared_was_up {
        assert!(
            accepts(&shared).await,
            "the shared broker ({shared}) no longer accepts connections"
        );
    } else {
        eprintln!("note: no shared broker at {shared} to check");
    }
    for (step, time) in took {
        eprintln!("{step}: {time:.1?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_name_that_is_no_erlang_short_name_is_refused() {
    let refused = RabbitNode::start("two words").await;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("\"two words\""), "{error}");
}

/// Declares `queue` (durable) and publishes `MESSAGES` persistent messages to it,
/// each confirmed.
async fn publish(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    for n in 0..MESSAGES {
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        assert!(
            matches!(confirmation, Confirmation::Ack(_)),
            "{confirmation:?}"
        );
    }
    connection.close(200, "OK".into()).await?;
    Ok(())
}

/// How many messages wait in `queue`.
async fn waiting(url: &str, queue: &str) -> anyhow::Result<u32> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?
        .message_count();
    connection.close(200, "OK".into()).await?;
    Ok(count)
}

async fn accepts(url: &str) -> bool {
    match Connection::connect(url, ConnectionProperties::default()).await {
        Ok(connection) => connection.close(200, "OK".into()).await.is_ok(),
        Err(_) => false,
    }
}
