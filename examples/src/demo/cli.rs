//! Flags of `exactly-once-demo`. URLs come from the environment only.

use clap::{Args, Parser, Subcommand};

use super::saga::{SagaMode, Service};

/// An order saga across four services, each with its own database, outbox, inbox and
/// relay, run under injected broker failures; a verifier then proves from the
/// databases that every effect happened exactly once.
#[derive(Debug, Parser)]
#[command(
    name = "exactly-once-demo",
    after_help = "Reads DATABASE_URL (a PostgreSQL server the demo may create databases on) and \
                  AMQP_URL (RabbitMQ) from the environment.\nExit codes: 0 every invariant held, \
                  1 one failed, 2 bad usage or setup, 130 interrupted."
)]
pub struct Cli {
    /// What to run; the demo itself when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The demo's flags.
    #[command(flatten)]
    pub demo: DemoArgs,
}

/// The demo's own processes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One service of the saga; the demo starts these itself.
    #[command(hide = true)]
    Service(ServiceArgs),
}

/// How big the run is, how hostile, and how it is seeded.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How the saga is coordinated: services reacting to each other's events
    /// (choreography), or a durable orchestrator in the order service sending commands
    /// and compensations (orchestration).
    #[arg(long, value_enum, default_value_t = SagaMode::Choreography)]
    pub saga: SagaMode,
    /// Orders to place [default: 500; 100 with --short].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub orders: Option<u32>,
    /// Orders placed per second [default: 50; 10 with --short].
    #[arg(long, value_parser = positive)]
    pub order_rate: Option<f64>,
    /// Share of payments that fail, from 0 to 1; those orders are compensated.
    #[arg(long, default_value_t = 0.2, value_parser = share)]
    pub payment_failure_rate: f64,
    /// Share of compensations that fail (once or twice, then succeed), from 0 to 1: an
    /// error in the handler, rolled back and retried.
    #[arg(long, default_value_t = 0.2, value_parser = share)]
    pub compensation_failure_rate: f64,
    /// How long the orchestrator waits for each step's reply before it compensates
    /// (or cancels) the step, in seconds (orchestration) [default: 10, longer than a
    /// broker restart takes; 3 with --short].
    #[arg(long, value_parser = positive)]
    pub step_timeout_secs: Option<f64>,
    /// Faults injected per second on average; 0 injects none [default: 0.5; 1 with --short].
    #[arg(long, value_parser = non_negative)]
    pub fault_rate: Option<f64>,
    /// Seeds the fault schedule and which payments fail: the same seed, the same schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A short run for CI: 100 orders at 10/s, a fault a second, every kind at least once.
    #[arg(long)]
    pub short: bool,
    /// Give up waiting for the saga to finish after this many seconds [default: 300; 180
    /// with --short: faults go on until the saga finishes, and each restart of the run's
    /// broker kept clients out for up to about 20 s on a loaded 2-core machine].
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Use AMQP_URL's broker even where a RabbitMQ node of the run's own could run
    /// (`rabbitmq-server` installed); the broker is then never restarted.
    #[arg(long)]
    pub shared_broker: bool,
    /// Run on a three-node RabbitMQ cluster of the run's own (needs `rabbitmq-server`),
    /// and kill its nodes with -9, one at a time, in place of restarting the broker.
    #[arg(long, conflicts_with = "shared_broker")]
    pub cluster: bool,
    /// Leave the databases in place afterwards, to inspect them.
    #[arg(long)]
    pub keep_databases: bool,
}

impl DemoArgs {
    /// Orders to place.
    pub fn orders(&self) -> u32 {
        self.orders.unwrap_or(if self.short { 100 } else { 500 })
    }

    /// Orders placed per second.
    pub fn order_rate(&self) -> f64 {
        self.order_rate
            .unwrap_or(if self.short { 10.0 } else { 50.0 })
    }

    /// Faults per second.
    pub fn fault_rate(&self) -> f64 {
        self.fault_rate
            .unwrap_or(if self.short { 1.0 } else { 0.5 })
    }

    /// Each step's timeout (orchestration).
    pub fn step_timeout(&self) -> std::time::Duration {
        let seconds = self
            .step_timeout_secs
            .unwrap_or(if self.short { 3.0 } else { 10.0 });
        std::time::Duration::from_secs_f64(seconds.min(3_600.0))
    }

    /// How long the saga may take.
    pub fn timeout(&self) -> std::time::Duration {
        let seconds = self
            .timeout_secs
            .unwrap_or(if self.short { 180 } else { 300 });
        std::time::Duration::from_secs(seconds)
    }
}

/// One service process.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Which service.
    #[arg(long, value_enum)]
    pub service: Service,
    /// How the saga is coordinated.
    #[arg(long, value_enum, default_value_t = SagaMode::Choreography)]
    pub saga: SagaMode,
    /// The run's exchange, and the prefix of its queues.
    #[arg(long)]
    pub prefix: String,
    /// Orders to place (order service).
    #[arg(long, default_value_t = 0)]
    pub orders: u32,
    /// Orders per second (order service).
    #[arg(long, default_value_t = 10.0)]
    pub order_rate: f64,
    /// The run's seed (payment service).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of payments declined (payment service).
    #[arg(long, default_value_t = 0.0)]
    pub payment_failure_rate: f64,
    /// Share of compensations that fail before they succeed (inventory, payment).
    #[arg(long, default_value_t = 0.0)]
    pub compensation_failure_rate: f64,
    /// Each step's timeout in milliseconds (orchestrator).
    #[arg(long, default_value_t = 5_000)]
    pub step_timeout_ms: u64,
}

fn number(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("`{text}` is not a number"))
}

fn share(text: &str) -> Result<f64, String> {
    number(text).and_then(|n| {
        (0.0..=1.0)
            .contains(&n)
            .then_some(n)
            .ok_or_else(|| format!("{n} is not between 0 and 1"))
    })
}

fn non_negative(text: &str) -> Result<f64, String> {
    number(text).and_then(|n| {
        (n >= 0.0)
            .then_some(n)
            .ok_or_else(|| format!("{n} is negative"))
    })
}

fn positive(text: &str) -> Result<f64, String> {
    number(text).and_then(|n| {
        (n > 0.0)
            .then_some(n)
            .ok_or_else(|| format!("{n} is not above 0"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_mode_fills_in_what_was_not_given() {
        let cli = Cli::try_parse_from(["exactly-once-demo", "--short", "--orders", "30"]).unwrap();
        assert_eq!(cli.demo.orders(), 30);
        assert_eq!(cli.demo.order_rate(), 10.0);
        assert_eq!(cli.demo.fault_rate(), 1.0);
        assert_eq!(cli.demo.step_timeout().as_secs(), 3);
        assert_eq!(cli.demo.timeout().as_secs(), 180);
        assert_eq!(cli.demo.saga, SagaMode::Choreography);
        let cli = Cli::try_parse_from(["exactly-once-demo", "--saga", "orchestration"]).unwrap();
        assert_eq!(cli.demo.saga, SagaMode::Orchestration);
        assert_eq!(cli.demo.step_timeout().as_secs(), 10);
    }

    #[test]
    fn rates_out_of_range_are_refused() {
        for bad in [
            ["--payment-failure-rate", "1.5"],
            ["--fault-rate", "-1"],
            ["--orders", "0"],
            ["--order-rate", "0"],
            ["--compensation-failure-rate", "2"],
            ["--step-timeout-secs", "0"],
            ["--saga", "sideways"],
            ["--cluster", "--shared-broker"],
        ] {
            let parsed = Cli::try_parse_from(["exactly-once-demo", bad[0], bad[1]]);
            assert!(parsed.is_err(), "{bad:?} was accepted");
        }
    }
}
