//! Flags and environment variables of `outbox-relay`.
//!
//! Secrets never come from the command line: `DATABASE_URL` and `AMQP_URL` are read
//! from the environment, or from the files named by `--database-url-file` and
//! `--amqp-url-file`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use txoutbox_relay::RelayConfig;
use txoutbox_saga::SagaState;

mod units;

use units::{Bytes, Human, parse_bytes, parse_duration};

#[derive(Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Publishes the transactional outbox to RabbitMQ with publisher confirms, in order per key.",
    args_conflicts_with_subcommands = true,
    after_help = "Secrets come from the environment or a file, never from flags:\n  \
                  DATABASE_URL   PostgreSQL URL (or --database-url-file / DATABASE_URL_FILE)\n  \
                  AMQP_URL       RabbitMQ URL, amqp:// or amqps://, or a cluster's node URLs separated\n                 \
                  by commas (or --amqp-url-file / AMQP_URL_FILE)\n\
                  Exit codes: 0 done, 1 failed while running, 2 bad configuration."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// `run` is the default command; its flags work without naming it.
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Args)]
pub(crate) struct GlobalArgs {
    /// Read the PostgreSQL URL from this file instead of DATABASE_URL.
    #[arg(long, env = "DATABASE_URL_FILE", global = true)]
    pub(crate) database_url_file: Option<PathBuf>,
    /// Read the RabbitMQ URL (or comma-separated node URLs) from this file instead of AMQP_URL.
    #[arg(long, env = "AMQP_URL_FILE", global = true)]
    pub(crate) amqp_url_file: Option<PathBuf>,
    /// Log lines as text or as JSON objects.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Publish the outbox until SIGTERM or Ctrl-C (the default).
    Run(Box<RunArgs>),
    /// Create or update the outbox tables.
    Migrate,
    /// Backlog, oldest pending age, dead rows, and which instance holds what.
    Status(OutputArgs),
    /// Every message of one business transaction: state, attempts, last error, times.
    Inspect {
        /// The saga id (correlation id) to look up.
        saga_id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Rows parked after their last attempt.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Sagas: list them, show one whole, ask the orchestrators to retry or abort one.
    Saga {
        #[command(subcommand)]
        command: SagaCommand,
    },
    /// Consumers' dead letters, as their database records them: list them, show
    /// one, send them back to their queue.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Serve the console: one business transaction across every service's database, in a browser.
    Console(Box<ConsoleArgs>),
    /// Delete sent rows older than the retention, in bounded batches.
    Cleanup {
        /// Keep sent rows this long (e.g. 7d, 12h, 30m).
        #[arg(long, env = "OUTBOX_RETENTION", value_parser = parse_duration)]
        retention: Human,
        /// Rows deleted per statement.
        #[arg(long, env = "OUTBOX_CLEANUP_BATCH_SIZE", default_value_t = defaults().cleanup_batch_size,
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
    },
}

#[derive(Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead rows, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Give dead rows a fresh set of attempts.
    Retry {
        /// The message id of the row to retry.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<uuid::Uuid>,
        /// Retry every dead row.
        #[arg(long)]
        all: bool,
        /// Why, for the audit (`txoutbox_audit`).
        #[arg(long, default_value = "no reason given")]
        reason: String,
    },
}

/// Operators' commands for sagas. A retry or an abort is a request: the next
/// orchestrator sweep carries it out, since only orchestrators know the definitions.
#[derive(Subcommand)]
pub(crate) enum SagaCommand {
    /// Sagas, most recently changed first.
    List {
        /// Only sagas in this state.
        #[arg(long, value_parser = saga_state())]
        state: Option<SagaState>,
        /// Only unfinished sagas whose deadline has passed.
        #[arg(long)]
        overdue: bool,
        /// Only sagas at a wait step, waiting for an event.
        #[arg(long)]
        waiting: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// One saga whole: its state, its history, its outbox rows and inbox records.
    Show {
        /// The saga's id.
        saga_id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Ask the orchestrators to resume compensating a failed saga.
    Retry {
        /// The saga's id.
        saga_id: String,
        /// Why, for the audit (`txoutbox_audit`).
        #[arg(long, default_value = "no reason given")]
        reason: String,
    },
    /// Ask the orchestrators to abort a pending or running saga: its steps are
    /// compensated, last first.
    Abort {
        /// The saga's id.
        saga_id: String,
        /// Why, for the saga's history and the audit (`txoutbox_audit`).
        #[arg(long, default_value = "no reason given")]
        reason: String,
    },
}

/// A saga state by its stored name; `--help` and errors list the names.
fn saga_state() -> impl TypedValueParser<Value = SagaState> {
    PossibleValuesParser::new(SagaState::ALL.map(SagaState::as_str))
        .try_map(|name| SagaState::parse(&name).ok_or("not a saga state"))
}

#[derive(Args)]
pub(crate) struct OutputArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    /// Exchange for rows whose `exchange` is NULL ("" is the default exchange).
    #[arg(long, env = "OUTBOX_EXCHANGE", default_value_t = defaults().exchange)]
    pub(crate) exchange: String,
    /// Rows claimed and published together.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = defaults().batch_size,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) batch_size: u32,
    /// Bytes of payload and headers claimed and published together (e.g. 4MiB,
    /// 512KiB); a single larger row is published alone.
    #[arg(long, env = "OUTBOX_BATCH_MAX_BYTES", default_value_t = Bytes(defaults().batch_max_bytes),
          value_parser = parse_bytes)]
    pub(crate) batch_max_bytes: Bytes,
    /// Batches published but not yet confirmed, at most.
    #[arg(long, env = "OUTBOX_MAX_IN_FLIGHT_BATCHES",
          default_value_t = u16::try_from(defaults().max_in_flight_batches).unwrap_or(u16::MAX),
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) max_in_flight_batches: u16,
    /// Refusals (nack, return, a channel closed on the row) before a row is parked as dead.
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS", default_value_t = defaults().max_attempts,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) max_attempts: u32,
    /// First retry delay (doubles per attempt, with jitter).
    #[arg(long, env = "OUTBOX_RETRY_BASE", default_value_t = Human(defaults().retry_base),
          value_parser = parse_duration)]
    pub(crate) retry_base: Human,
    /// Longest retry delay.
    #[arg(long, env = "OUTBOX_RETRY_MAX", default_value_t = Human(defaults().retry_max),
          value_parser = parse_duration)]
    pub(crate) retry_max: Human,
    /// An idle relay looks for work at least this often.
    #[arg(long, env = "OUTBOX_POLL_INTERVAL", default_value_t = Human(defaults().poll_interval),
          value_parser = parse_duration)]
    pub(crate) poll_interval: Human,
    /// A busy relay starts its scan over from the oldest row at least this often.
    #[arg(long, env = "OUTBOX_RESCAN_INTERVAL", default_value_t = Human(defaults().rescan_interval),
          value_parser = parse_duration)]
    pub(crate) rescan_interval: Human,
    /// Partition lease lifetime; a dead instance is replaced within about this time.
    #[arg(long, env = "OUTBOX_LEASE_TTL", default_value_t = Human(defaults().lease_ttl),
          value_parser = parse_duration)]
    pub(crate) lease_ttl: Human,
    /// How often leases are renewed and rebalanced.
    #[arg(long, env = "OUTBOX_HEARTBEAT_INTERVAL", default_value_t = Human(defaults().heartbeat_interval),
          value_parser = parse_duration)]
    pub(crate) heartbeat_interval: Human,
    /// Give up on a batch's confirms after this long (its rows are published again).
    #[arg(long, env = "OUTBOX_CONFIRM_TIMEOUT", default_value_t = Human(defaults().confirm_timeout),
          value_parser = parse_duration)]
    pub(crate) confirm_timeout: Human,
    /// Keep sent rows this long instead of deleting them (e.g. 7d). Off by default.
    #[arg(long, env = "OUTBOX_RETENTION", value_parser = parse_duration)]
    pub(crate) retention: Option<Human>,
    /// Rows deleted per statement by the retention cleanup.
    #[arg(long, env = "OUTBOX_CLEANUP_BATCH_SIZE", default_value_t = defaults().cleanup_batch_size,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) cleanup_batch_size: u32,
    /// On SIGTERM, wait this long for outstanding confirms.
    #[arg(long, env = "OUTBOX_SHUTDOWN_TIMEOUT", default_value_t = Human(defaults().shutdown_timeout),
          value_parser = parse_duration)]
    pub(crate) shutdown_timeout: Human,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "OUTBOX_HTTP_ADDR", default_value = "127.0.0.1:9187")]
    pub(crate) http_addr: SocketAddr,
    /// Name of this instance in the lease table (default: host-pid-random).
    #[arg(long, env = "OUTBOX_INSTANCE_ID")]
    pub(crate) instance_id: Option<String>,
    /// Apply the migrations before starting.
    #[arg(long, env = "OUTBOX_MIGRATE")]
    pub(crate) migrate: bool,
}

impl RunArgs {
    /// The library's configuration, every field from its flag (whose default is the
    /// library's own).
    pub(crate) fn relay_config(self) -> RelayConfig {
        let mut config = RelayConfig::default();
        config.exchange = self.exchange;
        config.batch_size = self.batch_size;
        config.batch_max_bytes = self.batch_max_bytes.0;
        config.max_in_flight_batches = usize::from(self.max_in_flight_batches);
        config.max_attempts = self.max_attempts;
        config.retry_base = self.retry_base.0;
        config.retry_max = self.retry_max.0;
        config.poll_interval = self.poll_interval.0;
        config.rescan_interval = self.rescan_interval.0;
        config.lease_ttl = self.lease_ttl.0;
        config.heartbeat_interval = self.heartbeat_interval.0;
        config.confirm_timeout = self.confirm_timeout.0;
        config.retention = self.retention.map(|r| r.0);
        config.cleanup_batch_size = self.cleanup_batch_size;
        config.shutdown_timeout = self.shutdown_timeout.0;
        if let Some(instance_id) = self.instance_id {
            config.instance_id = instance_id;
        }
        config
    }
}

/// The library's defaults, which the flags show and fall back to.
fn defaults() -> RelayConfig {
    RelayConfig::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_defaults_to_the_library_default() {
        let cli = Cli::try_parse_from(["outbox-relay"]).expect("no flags needed");
        let mut from_flags = cli.run.relay_config();
        let mut library = RelayConfig::default();
        // The one default that differs per call: a fresh instance id.
        from_flags.instance_id.clear();
        library.instance_id.clear();
        assert_eq!(format!("{from_flags:?}"), format!("{library:?}"));
    }

    #[test]
    fn a_saga_state_is_given_by_its_stored_name() {
        for state in SagaState::ALL {
            let cli =
                Cli::try_parse_from(["outbox-relay", "saga", "list", "--state", state.as_str()])
                    .expect("a known state");
            assert!(matches!(
                cli.command,
                Some(Command::Saga { command: SagaCommand::List { state: Some(s), .. } }) if s == state
            ));
        }
        assert!(
            Cli::try_parse_from(["outbox-relay", "saga", "list", "--state", "started"]).is_err()
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// `outbox-relay console`. The databases' URLs hold passwords: they come from a file
/// or the environment, never from these flags.
#[derive(Args, Clone)]
#[command(
    after_help = "Databases, each named: CONSOLE_DATABASES or the file of --databases-file holds\n  \
                  entries `name=postgres://...`, separated by spaces or new lines (# starts a comment).\n  \
                  With neither, DATABASE_URL is the one service, named `default`.\n\
                  Actions (abort, retry, send back) are off unless a token is set: CONSOLE_TOKEN or\n  \
                  the file of --token-file. Sending a dead letter back also needs AMQP_URL."
)]
pub(crate) struct ConsoleArgs {
    /// Where the console listens. Any address but loopback needs a token.
    #[arg(long, env = "CONSOLE_LISTEN", default_value = "127.0.0.1:8480")]
    pub(crate) listen: SocketAddr,
    /// A file of `name=postgres://...` entries, one per service database.
    #[arg(long, env = "CONSOLE_DATABASES_FILE")]
    pub(crate) databases_file: Option<PathBuf>,
    /// A file holding the token that unlocks actions (instead of CONSOLE_TOKEN).
    #[arg(long, env = "CONSOLE_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// A choreographed saga quiet for this long, whose last step is not final, is stuck.
    #[arg(long, env = "CONSOLE_STUCK_AFTER", default_value = "15m", value_parser = parse_duration)]
    pub(crate) stuck_after: Human,
    /// How far back the home page looks for stuck sagas.
    #[arg(long, env = "CONSOLE_LOOKBACK", default_value = "1d", value_parser = parse_duration)]
    pub(crate) lookback: Human,
    /// A step that ends a choreographed saga (repeat it, or separate with commas).
    #[arg(
        long = "final-step",
        env = "CONSOLE_FINAL_STEPS",
        value_delimiter = ','
    )]
    pub(crate) final_steps: Vec<String>,
}

/// Operators' commands for the dead letters an inbox consumer records in its
/// database (`DATABASE_URL`, the consumer's); `send-back` also moves messages
/// through the broker (`AMQP_URL`).
#[derive(Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Dead letters waiting in their queue's `.dead`, newest first.
    List {
        /// Only those of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only those of this saga.
        #[arg(long)]
        saga_id: Option<String>,
        /// Only those of this consumer (its inbox name).
        #[arg(long)]
        consumer: Option<String>,
        /// Those already sent back too.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// One dead letter whole: every field, its headers and its payload.
    Show {
        /// The dead letter's id (the first column of `list`).
        id: i64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Move dead letters back to their queue with a fresh set of attempts; each move
    /// is recorded with the reason.
    SendBack {
        /// The dead letter's id.
        #[arg(required_unless_present = "all_of", conflicts_with = "all_of")]
        id: Option<i64>,
        /// Every message in QUEUE.dead instead, with a record or not.
        #[arg(long, value_name = "QUEUE")]
        all_of: Option<String>,
        /// Why, for the audit (required, not empty).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

impl DeadLettersCommand {
    /// Whether it moves messages, and so needs `AMQP_URL`.
    pub(crate) fn needs_broker(&self) -> bool {
        matches!(self, DeadLettersCommand::SendBack { .. })
    }
}
