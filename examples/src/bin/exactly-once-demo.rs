//! An order saga across four services under injected broker failures, verified
//! exactly-once from the databases.
//!
//! Run with: `scripts/demo.sh` (builds this and `outbox-relay`, then runs this).

use std::process::ExitCode;

use clap::Parser;
use examples::demo::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Service(args)) => {
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            match examples::demo::services::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("service failed: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        None => ExitCode::from(examples::demo::run(cli.demo).await),
    }
}
