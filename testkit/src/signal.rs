//! Stopping a child process the way an orchestrator does: SIGTERM, then a wait.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;

/// Sends SIGTERM to `child`.
pub fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the child process already exited"))?;
    // `kill(1)` rather than `libc::kill`: the workspace forbids `unsafe`.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed: {status}");
    Ok(())
}

/// Sends SIGTERM to `child` and waits for it to exit, or fails after `within`.
pub async fn stop(child: &mut Child, within: Duration) -> anyhow::Result<ExitStatus> {
    terminate(child)?;
    tokio::time::timeout(within, child.wait())
        .await
        .map_err(|_| {
            anyhow::anyhow!("the child process did not exit within {within:?} of SIGTERM")
        })?
        .map_err(Into::into)
}
