//! The AMQP side: one connection, channels in confirm mode.

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use outbox::nodes::Node;

/// Opens a connection to `node` named after the instance (visible in the RabbitMQ
/// management UI and `rabbitmqctl list_connections`).
pub(crate) async fn connect(node: &Node, instance_id: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("outbox-relay {instance_id}").into());
    Connection::connect_uri(node.uri().clone(), properties).await
}

/// A new channel with publisher confirms. The broker closes a channel that a
/// message was refused on, so the relay opens another and goes on.
pub(crate) async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}
