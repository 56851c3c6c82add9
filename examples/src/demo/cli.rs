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
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000), conflicts_with = "soak")]
    pub orders: Option<u32>,
    /// A soak run: place orders steadily for this long (`30s`, `10m`, `2h`; a bare number
    /// is seconds; 10 s to 24 h), with faults throughout, sampling every process's memory
    /// and file descriptors, PostgreSQL connections and broker connections and channels
    /// every 10 s; then verify, and fail if any of them grew after the first minute.
    #[arg(long, value_parser = super::soak::parse_duration, conflicts_with = "short")]
    pub soak: Option<std::time::Duration>,
    /// Orders placed per second [default: 50; 20 with --soak; 10 with --short].
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
    /// Orders to place: with `--soak`, as many as the rate places in its duration.
    pub fn orders(&self) -> u32 {
        if let Some(soak) = self.soak {
            let orders = (soak.as_secs_f64() * self.order_rate()).ceil();
            return orders.clamp(1.0, f64::from(MAX_ORDERS)) as u32;
        }
        self.orders.unwrap_or(if self.short { 100 } else { 500 })
    }

    /// Orders placed per second.
    pub fn order_rate(&self) -> f64 {
        let default = match (self.short, self.soak.is_some()) {
            (true, _) => 10.0,
            (false, true) => 20.0,
            (false, false) => 50.0,
        };
        self.order_rate.unwrap_or(default)
    }

    /// Why the flags cannot run together, if they cannot: a soak whose rate and
    /// duration would place more orders than a run may.
    pub fn refusal(&self) -> Option<String> {
        let soak = self.soak?;
        let orders = soak.as_secs_f64() * self.order_rate();
        (orders > f64::from(MAX_ORDERS)).then(|| {
            format!(
                "--soak {} s at {}/s would place {orders:.0} orders, more than {MAX_ORDERS}; \
                 lower --order-rate or the duration",
                soak.as_secs(),
                self.order_rate()
            )
        })
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

    /// How long the saga may take: with `--soak`, its duration and then 300 s more
    /// (or `--timeout-secs`) for the last sagas to finish.
    pub fn timeout(&self) -> std::time::Duration {
        let seconds = self
            .timeout_secs
            .unwrap_or(if self.short { 180 } else { 300 });
        let soak = self.soak.unwrap_or_default();
        soak + std::time::Duration::from_secs(seconds)
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

/// The most orders one run places.
const MAX_ORDERS: u32 = 1_000_000;

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
            ["--soak", "0"],
            ["--soak", "0m"],
            ["--soak", "25h"],
            ["--soak", "5"],
            ["--soak", "ten"],
            ["--soak", "3x"],
        ] {
            let parsed = Cli::try_parse_from(["exactly-once-demo", bad[0], bad[1]]);
            assert!(parsed.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_soak_places_orders_for_its_duration() {
        let cli = Cli::try_parse_from(["exactly-once-demo", "--soak", "10m"]).unwrap();
        assert_eq!(cli.demo.soak, Some(std::time::Duration::from_secs(600)));
        assert_eq!(cli.demo.order_rate(), 20.0);
        assert_eq!(cli.demo.orders(), 12_000);
        assert_eq!(cli.demo.timeout().as_secs(), 900);
        assert!(cli.demo.refusal().is_none());
        let cli = Cli::try_parse_from(["exactly-once-demo", "--soak", "30", "--order-rate", "3"])
            .unwrap();
        assert_eq!(cli.demo.orders(), 90);
        let cli = Cli::try_parse_from(["exactly-once-demo", "--soak", "24h", "--order-rate", "50"])
            .unwrap();
        assert!(cli.demo.refusal().is_some());
        for clash in [
            &["--soak", "1m", "--short"][..],
            &["--soak", "1m", "--orders", "5"][..],
        ] {
            let argv = std::iter::once("exactly-once-demo").chain(clash.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{clash:?} was accepted");
        }
    }
}
