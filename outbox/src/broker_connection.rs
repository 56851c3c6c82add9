//! A broker connection that closes when its owner goes away, however it goes:
//! returned, cancelled by a timeout, or aborted with its task.
//!
//! lapin closes a dropped connection only once every channel and consumer on it is
//! gone, and one whose opening was cancelled half-way (the task aborted while
//! `create_channel` or `basic_consume` waited for the broker's reply) stays
//! registered inside lapin for good. The connection then lives as long as the
//! process, and such a consumer keeps what the broker pushed to it unacknowledged:
//! those messages wait for a consumer that will never take them. With lapin 4.12,
//! 19 of 24 consumers aborted right after `basic.consume` went out kept their queue's
//! messages this way (`outbox/tests/broker_connection.rs`). An aborted orchestrator
//! once held a saga's reply so for 30 s, until the step's timeout.

use std::ops::Deref;
use std::time::Duration;

use lapin::Connection;

/// How long a connection closed on drop may wait for the broker's goodbye.
const CLOSE_ON_DROP_WITHIN: Duration = Duration::from_secs(2);

/// A [`lapin::Connection`] that is closed when dropped (from a task on the current
/// runtime), with its channels and consumers: the broker requeues whatever they had
/// in hand, as it does for a process that dies.
#[derive(Debug)]
pub struct BrokerConnection {
    /// `None` once closed.
    connection: Option<Connection>,
}

impl BrokerConnection {
    /// Takes ownership of `connection`.
    pub fn new(connection: Connection) -> Self {
        Self {
            connection: Some(connection),
        }
    }

    /// Says goodbye with `reason`, waiting at most `within` for the broker's reply.
    pub async fn close(mut self, reason: &str, within: Duration) {
        if let Some(connection) = self.connection.take() {
            close(connection, reason, within).await;
        }
    }
}

impl Deref for BrokerConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.connection
            .as_ref()
            .expect("only `close` takes the connection, and it consumes the owner")
    }
}

impl Drop for BrokerConnection {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        // No runtime (or one shutting down): the process is going away, and its
        // sockets with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close(
                connection,
                "its owner went away",
                CLOSE_ON_DROP_WITHIN,
            ));
        }
    }
}

async fn close(connection: Connection, reason: &str, within: Duration) {
    let goodbye = connection.close(200, reason.into());
    let _ = tokio::time::timeout(within, goodbye).await;
}
