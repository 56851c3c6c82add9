use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::error::Error;

/// The idempotency key of a message: `saga_id:step`, and the message id for the record.
#[derive(Debug, Clone, Copy)]
pub struct InboxKey<'a> {
    /// The business transaction.
    pub saga_id: &'a str,
    /// The saga step or event name.
    pub step: &'a str,
    /// The AMQP message_id of this delivery, if it has one.
    pub message_id: Option<&'a str>,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T> {
    /// The handler ran and its effect committed, together with the key.
    Processed(T),
    /// The key was already recorded: the handler did not run. `result` is what the
    /// handler returned the first time, as JSON.
    Duplicate {
        /// The first run's result.
        result: Option<serde_json::Value>,
    },
}

/// The inbox of one consumer: a service, or one handler of a service.
#[derive(Debug, Clone)]
pub struct Inbox {
    consumer: String,
}

impl Inbox {
    /// The inbox of `consumer`. Two consumers receiving the same message each
    /// process it once.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
        }
    }

    /// The consumer's name: the first part of each of its keys.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Runs `handler` in a transaction that also records `key`, and commits both, or
    /// neither. If the key is already recorded, the handler does not run and the
    /// outcome is [`Outcome::Duplicate`].
    ///
    /// The handler gets the transaction's connection: write your effect and enqueue
    /// your replies through it (`txoutbox::enqueue(&mut *conn, ...)`), so the effect,
    /// the replies and the key commit together. On a duplicate nothing is sent again:
    /// the first run's replies are already in the outbox.
    ///
    /// The same message processed twice at the same moment takes effect once: the
    /// second transaction waits on the first's uncommitted key, then finds it.
    pub async fn process<T, E, F>(
        &self,
        pool: &PgPool,
        key: InboxKey<'_>,
        handler: F,
    ) -> Result<Outcome<T>, Error<E>>
    where
        T: Serialize,
        F: AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    {
        require("consumer", &self.consumer)?;
        require("saga_id", key.saga_id)?;
        require("step", key.step)?;

        let mut tx = pool.begin().await?;
        let claimed = sqlx::query(
            "INSERT INTO inbox (consumer, saga_id, step, message_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (consumer, saga_id, step) DO NOTHING",
        )
        .bind(&self.consumer)
        .bind(key.saga_id)
        .bind(key.step)
        .bind(key.message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            // Count the duplicate on the key itself, so support can see it came back.
            let result: Option<Option<serde_json::Value>> = sqlx::query_scalar(
                "UPDATE inbox SET duplicates = duplicates + 1, last_duplicate_at = now()
                 WHERE consumer = $1 AND saga_id = $2 AND step = $3 RETURNING result",
            )
            .bind(&self.consumer)
            .bind(key.saga_id)
            .bind(key.step)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Outcome::Duplicate {
                result: result.flatten(),
            });
        }

        let value = handler(&mut tx).await.map_err(Error::Handler)?;
        let stored = serde_json::to_value(&value).map_err(Error::Result)?;
        // A null result needs no second statement: the column is NULL already.
        if !stored.is_null() {
            sqlx::query(
                "UPDATE inbox SET result = $4 WHERE consumer = $1 AND saga_id = $2 AND step = $3",
            )
            .bind(&self.consumer)
            .bind(key.saga_id)
            .bind(key.step)
            .bind(stored)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Outcome::Processed(value))
    }
}

fn require<E>(field: &'static str, value: &str) -> Result<(), Error<E>> {
    if value.is_empty() {
        return Err(Error::InvalidKey(field));
    }
    Ok(())
}
