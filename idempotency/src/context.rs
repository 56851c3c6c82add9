//! What a handler gets besides its payload: the message's envelope, and the inbox's
//! transaction to write its effect and its next messages through.

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::envelope::Envelope;

/// A handler's view of one message, in the transaction that records its inbox key.
///
/// Everything written through [`Context::db`] and [`Context::emit`] commits together
/// with the key, or not at all; the broker is acked only after that commit.
#[derive(Debug)]
pub struct Context<'a> {
    envelope: &'a Envelope,
    conn: &'a mut PgConnection,
}

impl<'a> Context<'a> {
    /// A context for `envelope` whose writes go through `conn`, for driving a
    /// handler by hand (in a test, or from [`Inbox::process`](crate::Inbox::process)).
    pub fn new(envelope: &'a Envelope, conn: &'a mut PgConnection) -> Self {
        Self { envelope, conn }
    }

    /// The message: its saga id, step, headers, attempt.
    ///
    /// The reference outlives the borrow of `self`, so a handler can hold it while
    /// it writes through [`Context::db`].
    pub fn envelope(&self) -> &'a Envelope {
        self.envelope
    }

    /// The inbox's transaction: write the handler's effect here, as `&mut *ctx.db()`
    /// or `ctx.db()` wherever sqlx takes an executor.
    pub fn db(&mut self) -> &mut PgConnection {
        self.conn
    }

    /// A message of the same saga, carrying the trace on, to
    /// finish with [`MessageBuilder::payload`](txoutbox::MessageBuilder::payload) and
    /// hand to [`Context::enqueue`]: for a message that needs more than
    /// [`Context::emit`] sets (an exchange, a delay, a header).
    pub fn message(
        &self,
        step: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> txoutbox::MessageBuilder {
        let builder = txoutbox::Message::builder(&self.envelope.saga_id, step, routing_key);
        match self.traceparent() {
            Some(traceparent) => builder.traceparent(traceparent),
            None => builder,
        }
    }

    /// The trace context a message sent from here carries: with the `opentelemetry`
    /// feature, the current span's (the handler's, a child of this message's span);
    /// without it, or outside a trace, this message's own `traceparent`.
    fn traceparent(&self) -> Option<String> {
        #[cfg(feature = "opentelemetry")]
        if let Some(current) = txoutbox::trace::current_traceparent() {
            return Some(current);
        }
        self.envelope.traceparent.clone()
    }

    /// Writes `message` to the outbox in the handler's transaction; the relay
    /// publishes it once the transaction commits. Returns the message's id.
    pub async fn enqueue(&mut self, message: &txoutbox::Message) -> txoutbox::Result<Uuid> {
        txoutbox::enqueue(&mut *self.conn, message).await
    }

    /// Sends the saga's next message, `step` with `payload`, published with
    /// `routing_key`: same saga id, same trace, written to the outbox in the
    /// handler's transaction. A redelivered message finds its key and sends nothing
    /// again: the first run's messages are already in the outbox.
    ///
    /// An error here is the handler's to return (`ctx.emit(..).await?`): a payload
    /// that is not JSON or a name AMQP cannot carry fails before any write.
    pub async fn emit<P: Serialize + ?Sized>(
        &mut self,
        step: impl Into<String>,
        routing_key: impl Into<String>,
        payload: &P,
    ) -> txoutbox::Result<Uuid> {
        let message = self.message(step, routing_key).payload(payload)?;
        self.enqueue(&message).await
    }
}
