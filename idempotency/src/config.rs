//! How a consumer reads its queue and what it does with failures, checked before
//! the consumer starts.

use std::time::Duration;

use lapin::Channel;

use crate::error::DeclareError;
use crate::queue_type::QueueType;
use crate::topology;

/// The largest [`ConsumerConfig::batch_size`]. Each handler of a batch runs in a
/// savepoint, a subtransaction; past 64 in one transaction PostgreSQL's per-backend
/// subtransaction cache overflows, and every other session's snapshots get slower.
pub const MAX_BATCH_SIZE: usize = 64;

/// The longest [`ConsumerConfig::batch_linger`]: a message that arrives while the
/// consumer is busy may wait this long for its batch to fill, and no longer.
pub const MAX_BATCH_LINGER: Duration = Duration::from_secs(1);

/// How a consumer reads its queue and what it does with failures.
///
/// The fields are public so that a service can set the few it cares about after
/// [`ConsumerConfig::new`]; [`ConsumerConfig::validate`] says which values cannot
/// work, and the consumer calls it before it connects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The durable queue to consume; declared if missing, with its dead-letter queue
    /// ([`txoutbox::wire::dead_queue`]).
    pub queue: String,
    /// `(exchange, routing pattern)` pairs to bind the queue to.
    pub bindings: Vec<(String, String)>,
    /// Unacknowledged deliveries the broker may send ahead.
    pub prefetch: u16,
    /// Batches handled at once: each runs on a database connection of its own.
    /// Two messages of one key that arrive close together may land in batches side
    /// by side and be handled in either order; 1 keeps a key's messages in order.
    pub concurrency: usize,
    /// The most deliveries one transaction takes. Deliveries already waiting when a
    /// handler slot frees up are processed together: their keys recorded in one
    /// statement, each handler in a savepoint of its own, one commit (one flush of
    /// the write-ahead log), one ack. A lone delivery never waits for others (unless
    /// `batch_linger` is set and other batches are in hand): a batch is what is
    /// there, from 1 up to this. 1 is a transaction per delivery.
    /// At most [`MAX_BATCH_SIZE`].
    pub batch_size: usize,
    /// How long a batch formed while another batch of this consumer is still being
    /// handled may wait for more deliveries, up to `batch_size` and to what
    /// `prefetch` lets in (counted when the batch forms), and no longer than the
    /// other batches take: once none is in hand it goes. Zero (the default) never
    /// waits. Under a backlog with
    /// several handlers at once, batches then fill up instead of splitting what
    /// arrives among the free slots: fewer commits and round trips per message, for
    /// up to this much latency of a message that arrives while the consumer is busy.
    /// A message that finds no other batch in hand never waits. At most
    /// [`MAX_BATCH_LINGER`].
    pub batch_linger: Duration,
    /// Handler failures before a message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// The type of every queue the consumer declares: its own, `{queue}.dead` and
    /// the retry queues. [`QueueType::Quorum`] by default (RabbitMQ 3.10 or later);
    /// [`QueueType::Classic`] keeps queues declared by earlier releases. A queue that
    /// exists with another type stops the consumer with a [`DeclareError`].
    pub queue_type: QueueType,
}

/// A [`ConsumerConfig`] value that cannot work; the message names the field and
/// what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// `queue` is empty: the broker would make up a name no producer routes to.
    #[error("consumer config: `queue` is empty; name the queue to consume")]
    EmptyQueue,
    /// A count or a delay that must be positive is zero.
    #[error("consumer config: `{0}` is zero; it must be at least 1")]
    Zero(&'static str),
    /// `batch_size` is above [`MAX_BATCH_SIZE`].
    #[error(
        "consumer config: `batch_size` is {0}; at most {MAX_BATCH_SIZE} deliveries fit one \
         transaction (one savepoint each, and PostgreSQL caches {MAX_BATCH_SIZE} per transaction)"
    )]
    BatchTooLarge(usize),
    /// `batch_linger` is above [`MAX_BATCH_LINGER`].
    #[error(
        "consumer config: `batch_linger` is {0:?}; at most {MAX_BATCH_LINGER:?}, since a \
         message that arrives while the consumer is busy may wait that long"
    )]
    LingerTooLong(Duration),
    /// The first retry would wait longer than the longest retry may.
    #[error(
        "consumer config: `retry_base` ({base:?}) is longer than `retry_max` ({max:?}); \
         raise `retry_max` or lower `retry_base`"
    )]
    RetryBaseAboveMax {
        /// The configured `retry_base`.
        base: Duration,
        /// The configured `retry_max`.
        max: Duration,
    },
}

impl ConsumerConfig {
    /// Defaults for `queue`: quorum queues, prefetch 64, 4 batches at once of up to
    /// 16 deliveries, 5 attempts, retries after 1 s, 2 s, 4 s, ... up to a minute.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            bindings: Vec::new(),
            prefetch: 64,
            concurrency: 4,
            batch_size: 16,
            batch_linger: Duration::ZERO,
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            queue_type: QueueType::default(),
        }
    }

    /// Binds the queue to `exchange` with a routing `pattern` (declared at start).
    pub fn bind(mut self, exchange: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.bindings.push((exchange.into(), pattern.into()));
        self
    }

    /// Checks every value, so a bad one is an error the caller can print before
    /// anything connects, not a stuck or spinning consumer later.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.queue.is_empty() {
            return Err(InvalidConfig::EmptyQueue);
        }
        let zero = [
            ("prefetch", self.prefetch == 0),
            ("concurrency", self.concurrency == 0),
            ("batch_size", self.batch_size == 0),
            ("max_attempts", self.max_attempts == 0),
            ("retry_base", self.retry_base.is_zero()),
        ];
        if let Some((field, _)) = zero.into_iter().find(|(_, is_zero)| *is_zero) {
            return Err(InvalidConfig::Zero(field));
        }
        if self.batch_size > MAX_BATCH_SIZE {
            return Err(InvalidConfig::BatchTooLarge(self.batch_size));
        }
        if self.batch_linger > MAX_BATCH_LINGER {
            return Err(InvalidConfig::LingerTooLong(self.batch_linger));
        }
        if self.retry_base > self.retry_max {
            return Err(InvalidConfig::RetryBaseAboveMax {
                base: self.retry_base,
                max: self.retry_max,
            });
        }
        Ok(())
    }

    /// How long a message waits before attempt `failed + 1`, after `failed` handler
    /// failures: `retry_base`, doubled per earlier failure, at most `retry_max`.
    pub fn retry_delay(&self, failed: u32) -> Duration {
        let exponent = failed.saturating_sub(1).min(20);
        self.retry_base
            .saturating_mul(1 << exponent)
            .min(self.retry_max)
    }

    /// Every delay a retry can wait, shortest first. Each has a retry queue of its
    /// own ([`txoutbox::wire::retry_queue`]), declared with the others.
    pub fn retry_delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = (1..self.max_attempts.max(2))
            .map(|failed| self.retry_delay(failed))
            .collect();
        delays.dedup();
        delays
    }

    /// Declares the queue, its dead-letter queue, its retry queues (one per delay of
    /// [`retry_delays`](Self::retry_delays)) and the bindings, all of
    /// [`queue_type`](Self::queue_type), as the consumer does when it starts. Call
    /// it ahead of time so that nothing published before the first consumer connects
    /// is unroutable.
    ///
    /// A queue that exists with another type is refused: [`DeclareError::TypeMismatch`]
    /// names it and both types ([`DeclareError::Refused`], with the broker's words,
    /// when its other arguments differ too and the broker names one of those). The
    /// broker then closes `channel`: open another to go on.
    pub async fn declare(&self, channel: &Channel) -> Result<(), DeclareError> {
        topology::declare(channel, self).await
    }

    /// Deletes what the consumer declares and creates: the queue, `{queue}.dead` and
    /// every retry queue this config can make. For tear-downs of tests, benchmarks and
    /// demos; messages in them are gone.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        topology::delete(channel, &self.queue, &self.retry_delays()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsumerConfig {
        ConsumerConfig::new("payments")
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn an_empty_queue_name_is_refused() {
        assert_eq!(
            ConsumerConfig::new("").validate(),
            Err(InvalidConfig::EmptyQueue)
        );
    }

    #[test]
    fn each_zero_is_refused_by_name() {
        type Zeroing = fn(&mut ConsumerConfig);
        let cases: [(&str, Zeroing); 5] = [
            ("prefetch", |c| c.prefetch = 0),
            ("concurrency", |c| c.concurrency = 0),
            ("batch_size", |c| c.batch_size = 0),
            ("max_attempts", |c| c.max_attempts = 0),
            ("retry_base", |c| c.retry_base = Duration::ZERO),
        ];
        for (field, zero) in cases {
            let mut config = config();
            zero(&mut config);
            assert_eq!(config.validate(), Err(InvalidConfig::Zero(field)));
            assert!(config.validate().unwrap_err().to_string().contains(field));
        }
    }

    #[test]
    fn retry_delays_double_up_to_the_longest() {
        let mut config = config();
        config.retry_base = Duration::from_millis(500);
        config.retry_max = Duration::from_secs(3);
        config.max_attempts = 6;
        let ms = |delays: Vec<Duration>| delays.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(ms(config.retry_delays()), [500, 1000, 2000, 3000]);
        config.max_attempts = 1;
        assert_eq!(
            ms(config.retry_delays()),
            [500],
            "a database outage still retries"
        );
    }

    #[test]
    fn a_batch_past_the_subtransaction_cache_is_refused() {
        let mut config = config();
        config.batch_size = MAX_BATCH_SIZE;
        assert_eq!(config.validate(), Ok(()));
        config.batch_size = MAX_BATCH_SIZE + 1;
        assert_eq!(config.validate(), Err(InvalidConfig::BatchTooLarge(65)));
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("batch_size")
        );
    }

    #[test]
    fn a_linger_past_a_second_is_refused() {
        let mut config = config();
        config.batch_linger = MAX_BATCH_LINGER;
        assert_eq!(config.validate(), Ok(()));
        config.batch_linger = Duration::MAX;
        assert_eq!(
            config.validate(),
            Err(InvalidConfig::LingerTooLong(Duration::MAX))
        );
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("batch_linger")
        );
    }

    #[test]
    fn a_first_retry_longer_than_the_longest_is_refused() {
        let mut config = config();
        config.retry_base = Duration::from_secs(2);
        config.retry_max = Duration::from_secs(1);
        assert!(matches!(
            config.validate(),
            Err(InvalidConfig::RetryBaseAboveMax { .. })
        ));
    }
}
