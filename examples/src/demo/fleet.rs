//! The demo's child processes: the services and their relays, each started, killed,
//! frozen and restarted by name, logging to a file of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How to start one process.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments (never a secret).
    pub args: Vec<String>,
    /// Its environment, where the URLs go.
    pub env: Vec<(String, String)>,
    /// Where its stdout and stderr go, appended across restarts.
    pub log: PathBuf,
}

#[derive(Debug)]
struct Managed {
    spec: ProcessSpec,
    child: Option<Child>,
}

/// The running processes, by name.
#[derive(Debug, Default)]
pub struct Fleet {
    processes: BTreeMap<String, Managed>,
    frozen: BTreeSet<String>,
}

impl Fleet {
    /// Starts (or restarts) `name`.
    pub fn start(&mut self, name: &str, spec: ProcessSpec) -> anyhow::Result<()> {
        let child = spawn(&spec)?;
        self.processes.insert(
            name.to_owned(),
            Managed {
                spec,
                child: Some(child),
            },
        );
        Ok(())
    }

    /// Starts `name` again as it was started before.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let managed = self
            .processes
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no process named {name}"))?;
        managed.child = Some(spawn(&managed.spec)?);
        Ok(())
    }

    /// `kill -9`: no chance to finish anything.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        self.frozen.remove(name);
        if let Some(mut child) = self.processes.get_mut(name).and_then(|m| m.child.take()) {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// `kill -STOP`: the process stays, holding its connections and whatever it had in
    /// hand, and does nothing until [`Fleet::thaw`].
    pub async fn freeze(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal(name, "-STOP").await?;
        self.frozen.insert(name.to_owned());
        Ok(())
    }

    /// `kill -CONT` of a frozen process.
    pub async fn thaw(&mut self, name: &str) -> anyhow::Result<()> {
        if self.frozen.remove(name) {
            self.signal(name, "-CONT").await?;
        }
        Ok(())
    }

    async fn signal(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        if let Some(pid) = self
            .processes
            .get(name)
            .and_then(|m| m.child.as_ref())
            .and_then(Child::id)
        {
            Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .await?;
        }
        Ok(())
    }

    /// Each process's name and pid; `None` while it is down.
    pub fn pids(&self) -> Vec<(String, Option<u32>)> {
        self.processes
            .iter()
            .map(|(name, m)| (name.clone(), m.child.as_ref().and_then(Child::id)))
            .collect()
    }

    /// Names of processes that exited without being asked to (they are left down;
    /// the caller decides).
    pub fn exited(&mut self) -> Vec<(String, String)> {
        let mut exited = Vec::new();
        for (name, managed) in &mut self.processes {
            if let Some(child) = &mut managed.child
                && let Ok(Some(status)) = child.try_wait()
            {
                exited.push((name.clone(), status.to_string()));
                managed.child = None;
            }
        }
        exited
    }

    /// SIGTERM to every process (a frozen one is thawed first), then SIGKILL to any
    /// still running after `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        for name in self.frozen.clone() {
            let _ = self.thaw(&name).await;
        }
        for managed in self.processes.values() {
            if let Some(pid) = managed.child.as_ref().and_then(Child::id) {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for managed in self.processes.values_mut() {
            if let Some(mut child) = managed.child.take()
                && tokio::time::timeout(grace, child.wait()).await.is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

fn spawn(spec: &ProcessSpec) -> anyhow::Result<Child> {
    let log = log_file(spec)?;
    let child = Command::new(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // Its own process group: a Ctrl-C at the terminal reaches the demo, which
        // stops the children in order, rather than every process at once.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", spec.program.display()))?;
    Ok(child)
}

fn log_file(spec: &ProcessSpec) -> anyhow::Result<File> {
    Ok(OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?)
}
