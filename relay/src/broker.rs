//! The AMQP side: one connection, channels in confirm mode.

use std::sync::Arc;

use futures_util::future::Fuse;
use futures_util::{FutureExt, StreamExt};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties, ConnectionState, ErrorKind, Event};
use tokio::sync::oneshot;
use txoutbox::nodes::Node;

use crate::metrics::Metrics;

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

/// The error that ends `connection`, once it does, from a watcher task that stops
/// when the receiver is dropped. Meanwhile the watcher keeps `metrics` told whether
/// the broker blocks the connection's publishes.
///
/// A relay with nothing to publish sends the broker nothing, so without this it
/// learned of a lost connection only at its next publish: `/readyz` said ready all
/// that while, and the first row after the loss paid for the reconnect. Watched
/// while it sleeps, the loss ends the session at once, like any other broker error.
///
/// A resource alarm (memory, disk) does not end the connection: RabbitMQ stops
/// reading what its publishers send and says so with `connection.blocked`. The
/// relay's publishes then wait and their confirms time out, which says nothing of
/// why; the reason goes to the log and `/readyz`, and `outbox_relay_broker_blocked`
/// is 1 meanwhile.
pub(crate) fn watch_loss(
    connection: &Connection,
    metrics: Arc<Metrics>,
) -> Fuse<oneshot::Receiver<lapin::Error>> {
    let (mut tell, told) = oneshot::channel();
    let watch = metrics.broker_watch_began();
    // Listening before looking at the status: an error between the two is then
    // either seen by the status or sent to the listener.
    let mut events = connection.events_listener();
    let status = connection.status().clone();
    tokio::spawn(async move {
        let first_error = async {
            if !status.connected() {
                return ErrorKind::InvalidConnectionState(ConnectionState::Error).into();
            }
            while let Some(event) = events.next().await {
                match event {
                    // A channel the broker closed (a refused publish) sends its error
                    // here too, with the connection still up: the session handles those.
                    Event::Error(error) if !status.connected() => return error,
                    Event::ConnectionBlocked(reason) => {
                        tracing::warn!(%reason, "the broker blocks publishing (a resource alarm); rows wait until it clears");
                        metrics.set_broker_blocked(watch, Some(reason));
                    }
                    Event::ConnectionUnblocked => {
                        tracing::info!("the broker unblocked publishing");
                        metrics.set_broker_blocked(watch, None);
                    }
                    _ => {}
                }
            }
            // The events end only with the connection itself.
            ErrorKind::InvalidConnectionState(ConnectionState::Closed).into()
        };
        let error = tokio::select! {
            error = first_error => error,
            () = tell.closed() => return,
        };
        let _ = tell.send(error);
    });
    told.fuse()
}
