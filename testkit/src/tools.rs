//! Tests that need a program besides the servers (`prometheus`, `rabbitmq-server`)
//! skip, with a note, where it is not installed, so that `cargo test` runs anywhere.
//! A run that must not skip them (CI: `scripts/test.sh` installs the tools, then sets
//! [`REQUIRE_TOOLS`]) fails instead, so that a missing tool cannot pass as green.

use std::process::{Command, Stdio};

/// The environment variable that, set to anything but the empty string, turns a
/// skip for a missing tool into a failure.
pub const REQUIRE_TOOLS: &str = "TXOUTBOX_REQUIRE_TOOLS";

/// Whether a test that needs `tool` runs: `Ok(true)` when `installed`; when not,
/// `Ok(false)` after a note saying why it skipped (`how` says how to install it),
/// or, where [`REQUIRE_TOOLS`] is set, an error saying what is missing.
///
/// ```rust,no_run
/// # fn demo() -> anyhow::Result<()> {
/// let installed = testkit::program_runs("prometheus");
/// if !testkit::installed_or_skip("prometheus", installed, "scripts/tools.sh installs it")? {
///     return Ok(());
/// }
/// # Ok(())
/// # }
/// ```
pub fn installed_or_skip(tool: &str, installed: bool, how: &str) -> anyhow::Result<bool> {
    let required = std::env::var_os(REQUIRE_TOOLS).is_some_and(|v| !v.is_empty());
    let runs = decide(tool, installed, required, how)?;
    if !runs {
        eprintln!("skipped: {tool} is not installed ({how})");
    }
    Ok(runs)
}

/// Whether `program --version` runs: the program is on the `PATH` and starts.
pub fn program_runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The rule of [`installed_or_skip`], without the environment.
fn decide(tool: &str, installed: bool, required: bool, how: &str) -> anyhow::Result<bool> {
    anyhow::ensure!(
        installed || !required,
        "{tool} is not installed, and {REQUIRE_TOOLS} is set: this run must not skip \
         the tests that need it ({how})"
    );
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_skips_unless_required_and_an_installed_one_always_runs() {
        assert!(decide("prometheus", true, false, "").unwrap());
        assert!(decide("prometheus", true, true, "").unwrap());
        assert!(!decide("prometheus", false, false, "").unwrap());
        let error = decide("prometheus", false, true, "scripts/tools.sh installs it")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("prometheus is not installed")
                && error.contains(REQUIRE_TOOLS)
                && error.contains("scripts/tools.sh installs it"),
            "{error}"
        );
    }

    #[test]
    fn a_program_that_does_not_exist_does_not_run() {
        assert!(!program_runs("txoutbox-no-such-program"));
    }
}
