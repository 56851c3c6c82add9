//! The AMQP side: one connection, one channel in confirm mode.

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};

/// Opens a connection named after the instance (visible in the RabbitMQ management
/// UI and `rabbitmqctl list_connections`) and a channel with publisher confirms.
pub(crate) async fn connect(url: &str, instance_id: &str) -> lapin::Result<(Connection, Channel)> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("outbox-relay {instance_id}").into());
    let connection = Connection::connect(url, properties).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}
