//! `txoutbox::BrokerConnection`: a consumer whose task is aborted while it opens
//! leaves its queue's messages to others. Talks to the RabbitMQ of `AMQP_URL`.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use testkit::{amqp_url, wait_until};
use txoutbox::BrokerConnection;

const MESSAGES: u32 = 3;

/// A queue of the test's own holding [`MESSAGES`] messages.
async fn queue_with_messages(channel: &Channel, name: &str) -> anyhow::Result<()> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..MESSAGES {
        channel
            .basic_publish(
                "".into(),
                name.into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await?
            .await?;
    }
    Ok(())
}

/// Messages ready in `queue`, and its consumers.
async fn ready_and_consumers(channel: &Channel, queue: &str) -> anyhow::Result<(u32, u32)> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?;
    Ok((declared.message_count(), declared.consumer_count()))
}

// Aborted at every point from the moment `basic.consume` is sent until well after it
// is answered: lapin registers a consumer whose `basic_consume` future was dropped, and
// the connection, with the deliveries pushed to that consumer, stayed open until the
// process ended (19 of these 24 with a plain `lapin::Connection`).
#[tokio::test]
async fn a_consumer_aborted_while_it_opens_leaves_its_messages_to_others() -> anyhow::Result<()> {
    testkit::require_servers();
    let admin = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = admin.create_channel().await?;
    for attempt in 0..24u32 {
        let queue = format!("test-aborted-{}", uuid::Uuid::now_v7());
        queue_with_messages(&channel, &queue).await?;
        let (consuming, consume_sent) = tokio::sync::oneshot::channel::<()>();
        let name = queue.clone();
        let task = tokio::spawn(async move {
            let url = amqp_url();
            let connecting = Connection::connect(&url, ConnectionProperties::default());
            let connection = BrokerConnection::new(connecting.await?);
            let channel = connection.create_channel().await?;
            channel.basic_qos(10, BasicQosOptions::default()).await?;
            let _ = consuming.send(());
            let _deliveries = channel
                .basic_consume(
                    name.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            std::future::pending::<()>().await;
            anyhow::Ok(())
        });
        consume_sent.await?;
        for _ in 0..attempt % 4 {
            tokio::task::yield_now().await;
        }
        if attempt % 8 >= 4 {
            tokio::time::sleep(Duration::from_micros(u64::from(attempt % 8) * 200)).await;
        }
        task.abort();
        let _ = task.await;
        let what = format!("attempt {attempt}: every message back in {queue}, no consumer");
        wait_until(Duration::from_secs(10), &what, async || {
            Ok(ready_and_consumers(&channel, &queue).await? == (MESSAGES, 0))
        })
        .await?;
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = admin.close(200, "test done".into()).await;
    Ok(())
}
