//! `outbox-relay`: publishes a service's outbox to RabbitMQ. Run it as a sidecar.
//!
//! Parses the configuration (exit code 2 when it is bad), installs logging and the
//! shutdown signals, and hands over to the `txoutbox_relay` library.

mod cli;
mod commands;
mod console;
mod report;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, LogFormat};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use txoutbox_relay::redact_url;

/// A command waits this long for a database connection before it reports one failure.
const POOL_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Exit code for bad configuration, as clap uses for bad flags.
const BAD_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.log_format);
    match start(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("outbox-relay: configuration error: {message}");
            ExitCode::from(BAD_CONFIG)
        }
        Err(Failure::Run(error)) => {
            eprintln!("outbox-relay: {}", report::describe(&error));
            if let Some(advice) = report::advice(&error) {
                eprintln!("outbox-relay: {advice}");
            }
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(String),
    Run(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Run(error)
    }
}

async fn start(cli: Cli) -> Result<(), Failure> {
    if let Some(Command::Console(args)) = &cli.command {
        let settings = console_settings(args, &cli)?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| {
                Failure::Config(format!(
                    "cannot listen on --listen {}: {e}",
                    settings.listen
                ))
            })?;
        return Ok(console::serve(settings, listener).await?);
    }
    let database = secret("DATABASE_URL", cli.global.database_url_file.as_deref())?;
    let not_postgres = || {
        Failure::Config(format!(
            "DATABASE_URL is not a PostgreSQL URL: {}",
            redact_url(&database)
        ))
    };
    // sqlx reads any URL it can; only these schemes mean PostgreSQL.
    if !(database.starts_with("postgres://") || database.starts_with("postgresql://")) {
        return Err(not_postgres());
    }
    let options: PgConnectOptions = database.parse().map_err(|_| not_postgres())?;
    let options_for_pool = options.clone();
    let pool = PgPoolOptions::new()
        .max_connections(5)
        // Kept open while idle: a new TLS connection costs ~90 ms (see
        // `txoutbox::postgres::open_ahead`).
        .min_connections(5)
        .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
        .connect_lazy_with(options_for_pool);

    let command = cli.command.unwrap_or(Command::Run(Box::new(cli.run)));
    let writes = writes(&command);
    // The relay checks its whole configuration first (exit code 2), then the database.
    if !matches!(command, Command::Run(_)) {
        check_reachable(&options, writes, false).await?;
    }
    match command {
        Command::Run(args) => {
            let amqp = secret("AMQP_URL", cli.global.amqp_url_file.as_deref())?;
            // One URL, or the nodes of one cluster separated by commas.
            if let Err(problem) = txoutbox::nodes::Nodes::parse(&amqp) {
                return Err(Failure::Config(format!("AMQP_URL: {problem}")));
            }
            let migrate = args.migrate;
            let http_addr = args.http_addr;
            let config = args.relay_config();
            if let Err(problem) = config.validate() {
                return Err(Failure::Config(format!(
                    "{problem} (flag --{})",
                    problem.field.replace('_', "-")
                )));
            }
            let listener = tokio::net::TcpListener::bind(http_addr)
                .await
                .map_err(|e| {
                    Failure::Config(format!("cannot listen on --http-addr {}: {e}", http_addr))
                })?;
            check_reachable(&options, writes, true).await?;
            commands::run(pool, amqp, config, migrate, listener).await?
        }
        Command::Migrate => commands::migrate(pool).await?,
        Command::Status(output) => commands::status(pool, output.json).await?,
        Command::Inspect { saga_id, output } => {
            commands::inspect(pool, &saga_id, output.json).await?
        }
        Command::Dead { command } => commands::dead(pool, command).await?,
        Command::Console(_) => unreachable!("served above, without DATABASE_URL"),
        Command::Saga { command } => commands::saga(pool, command).await?,

        Command::DeadLetters { command } => {
            // Only `send-back` talks to the broker; the others need no AMQP_URL.
            let amqp = command
                .needs_broker()
                .then(|| secret("AMQP_URL", cli.global.amqp_url_file.as_deref()))
                .transpose()?;
            commands::dead_letters(pool, amqp, command).await?
        }
        Command::Cleanup {
            retention,
            batch_size,
        } => commands::cleanup(pool, retention.0, batch_size).await?,
    }
    Ok(())
}

/// The console's databases (CONSOLE_DATABASES, its file, or DATABASE_URL alone), its
/// token and the broker, each from the environment or a file; checked before it listens.
fn console_settings(
    args: &cli::ConsoleArgs,
    cli: &Cli,
) -> Result<console::settings::Settings, Failure> {
    let configured =
        args.databases_file.is_some() || std::env::var_os("CONSOLE_DATABASES").is_some();
    let databases = if configured {
        let text = secret("CONSOLE_DATABASES", args.databases_file.as_deref())?;
        console::settings::parse_databases(&text).map_err(Failure::Config)?
    } else {
        let url = secret("DATABASE_URL", cli.global.database_url_file.as_deref())?;
        let options = console::settings::parse_url(&url)
            .map_err(|why| Failure::Config(format!("DATABASE_URL: {why}")))?;
        vec![console::settings::ServiceDatabase {
            name: "default".to_owned(),
            options,
        }]
    };
    let token_given = args.token_file.is_some() || std::env::var_os("CONSOLE_TOKEN").is_some();
    let token = token_given
        .then(|| secret("CONSOLE_TOKEN", args.token_file.as_deref()))
        .transpose()?;
    let amqp_given = cli.global.amqp_url_file.is_some() || std::env::var_os("AMQP_URL").is_some();
    let amqp_url = amqp_given
        .then(|| secret("AMQP_URL", cli.global.amqp_url_file.as_deref()))
        .transpose()?;
    let settings = console::settings::Settings {
        listen: args.listen,
        databases,
        token,
        amqp_url,
        stuck_after: args.stuck_after.0,
        lookback: args.lookback.0,
        final_steps: args.final_steps.clone(),
    };
    settings.check().map_err(Failure::Config)?;
    Ok(settings)
}

/// How long the first connection may take before a command says the server does not
/// answer.
const REACH_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens one connection first, so that a command that cannot work says at once which
/// server and why (refused, unknown host, authentication, no such database,
/// read-only), not "pool timed out" ten seconds later. The relay stops only where
/// its configuration is wrong (authentication, no such database); for the rest it
/// says so and keeps trying, as it does whenever the database goes away.
async fn check_reachable(
    options: &PgConnectOptions,
    writes: bool,
    relay: bool,
) -> Result<(), Failure> {
    let Err(unreachable) = txoutbox::reach::reach(options, writes, REACH_WITHIN).await else {
        return Ok(());
    };
    if relay && !unreachable.cause.is_final() {
        tracing::warn!(%unreachable, "the relay starts and keeps trying");
        return Ok(());
    }
    Err(Failure::Run(anyhow::Error::new(unreachable)))
}

/// Whether `command` writes to the database, so that a read-only one cannot serve it.
fn writes(command: &Command) -> bool {
    match command {
        Command::Run(_) | Command::Migrate | Command::Cleanup { .. } => true,
        Command::Dead { command } => matches!(command, cli::DeadCommand::Retry { .. }),
        Command::Saga { command } => {
            matches!(
                command,
                cli::SagaCommand::Retry { .. } | cli::SagaCommand::Abort { .. }
            )
        }
        Command::DeadLetters { command } => command.needs_broker(),
        Command::Status(_) | Command::Inspect { .. } | Command::Console(_) => false,
    }
}

/// The most a secret file may hold: a URL, or the nodes of a cluster, fit easily.
const SECRET_FILE_LIMIT: u64 = 64 * 1024;

/// A secret from `NAME`, or from the file `NAME_FILE` / `--name-file` points at.
fn secret(name: &str, file: Option<&Path>) -> Result<String, Failure> {
    if let Some(path) = file {
        let cannot = |why: String| {
            Failure::Config(format!("cannot read {name} from {}: {why}", path.display()))
        };
        // A URL is short: a wrong path (a log, a device) is refused, not read whole.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(SECRET_FILE_LIMIT + 1).read_to_string(&mut text))
            .map_err(|e| cannot(e.to_string()))?;
        if text.len() as u64 > SECRET_FILE_LIMIT {
            return Err(cannot(format!(
                "it is over {SECRET_FILE_LIMIT} bytes, too long for a URL"
            )));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(cannot("the file is empty".to_owned()));
        }
        return Ok(text.to_owned());
    }
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(Failure::Config(format!(
            "{name} is not set; put the URL in the environment variable {name} or in a file named by {name}_FILE"
        ))),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // lapin logs each returned message whole, payload included; the relay logs
        // its own line per refusal, without the payload.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,lapin::returned_messages=off")
        });
    // Colours only for a person at a terminal: a log collector or a file would keep
    // the escape codes as text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
