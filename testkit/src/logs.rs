//! The logs of what a test starts in its own process (a relay, a consumer, an
//! orchestrator), kept with the test's output: the test harness shows them when the
//! test fails and drops them when it passes. A failure that happens once in thirty
//! runs is found from these logs, or not at all.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// What is logged when `RUST_LOG` does not say: the toolkit's own crates in full (they
/// log little, and every line of theirs is a step a reader of a failure needs), the
/// rest from warnings up.
const DEFAULT_FILTER: &str = "warn,txoutbox=debug,txoutbox_relay=debug,txoutbox_inbox=debug,\
                              txoutbox_saga=debug,lapin::returned_messages=off";

/// Sends this process's `tracing` events to the test harness's captured output, once
/// per process; later calls do nothing. [`crate::CheckedMigrator`] calls it, so every
/// `#[sqlx::test]` that uses one has its logs kept. A process that installs a
/// subscriber of its own first keeps it.
///
/// Each line goes to the output of the test whose thread (or a thread that thread
/// started, such as its runtime's workers) wrote it. `RUST_LOG` chooses what is
/// logged, as for the binaries.
pub fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
        // An error means a subscriber is set already: the process chose its own.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// Passes what `child` writes to stderr (it must be piped) on to the test's captured
/// output, line by line, until the child closes it: a child's inherited stderr would
/// bypass the harness, shown for every test that passes and lost among them for the one
/// that fails. Call it from the test's runtime.
pub fn forward_stderr(child: &mut tokio::process::Child) {
    use tokio::io::AsyncBufReadExt;

    let Some(stderr) = child.stderr.take() else {
        return;
    };
    let pid = child.id().unwrap_or_default();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[child {pid}] {line}");
        }
    });
}
