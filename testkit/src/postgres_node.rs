//! A PostgreSQL server of a test's own, primary or streaming standby, to stop with no
//! warning and promote without disturbing the machine's shared server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::rabbit_node::host::{free_ports, kill_and_wait};
use crate::wait_until;

mod programs;
mod sweep;

use programs::{Programs, programs};
use sweep::{postmaster_of, sweep};

/// How long `initdb`, a start, a base backup, a stop or a promotion may take: many
/// times what they take on a slow machine.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Where nodes live, under the temporary directory; `sweep` looks here only.
const BASE: &str = "testkit-postgres";
/// The pid of the process that owns the node; a node whose owner is gone is a leftover.
const OWNER_FILE: &str = "owner";
/// The data directory, under the node's directory (which also holds its socket).
const DATA: &str = "data";
/// What the server writes (`pg_ctl -l`).
const SERVER_LOG: &str = "server.log";

/// Whether a standby's flush of each commit is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// The primary names the standby in `synchronous_standby_names` and runs with
    /// `synchronous_commit = on`: a commit returns (and its rows become visible) once
    /// the standby has the commit record on disk, so a promoted standby has every
    /// transaction anyone saw committed.
    Synchronous,
    /// PostgreSQL's default: the standby follows as fast as it can, and the last
    /// commits before a crash of the primary may be missing from it.
    Asynchronous,
}

/// A PostgreSQL server of its own: its data, socket and log in a directory under
/// [`std::env::temp_dir`], listening on 127.0.0.1 on a free port, with trust auth for
/// user `postgres`. A test makes a primary, a streaming standby of it, stops the
/// primary with no warning ([`stop_immediate`]: a crash, as far as clients and the
/// standby can tell) and promotes the standby, while the machine's shared server
/// carries on.
///
/// What it costs, measured on a 2-CPU VM (PostgreSQL 15, `testkit/tests/postgres_node.rs`,
/// three runs): [`start_primary`] 0.65-0.9 s (`initdb` is most of it), [`standby`]
/// 0.35-0.55 s (base backup, start, until it streams and is the synchronous standby),
/// [`stop_immediate`] 0.01-0.12 s, [`promote`] 0.12 s.
/// `fsync` is off: no test here survives the machine's crash, only the server's.
///
/// When this process is root, the programs run as the `postgres` user (the server
/// refuses root) and the directory is that user's. A node whose process ends without
/// dropping it (Ctrl-C, a test timeout) runs on; the next start on the machine stops
/// it and removes its directory.
///
/// ```rust,no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use testkit::{PostgresNode, Replication};
///
/// if !PostgresNode::installed() {
///     eprintln!("skipped: the PostgreSQL server programs are not installed");
///     return Ok(());
/// }
/// let mut primary = PostgresNode::start_primary("demo").await?;
/// let mut standby = primary.standby("demo-standby", Replication::Synchronous).await?;
/// primary.create_database("orders").await?;
/// // ... clients connect to primary.url("orders") ...
/// primary.stop_immediate().await?;
/// standby.promote().await?;
/// // ... clients now connect to standby.url("orders") ...
/// # Ok(())
/// # }
/// ```
///
/// [`start_primary`]: PostgresNode::start_primary
/// [`standby`]: PostgresNode::standby
/// [`stop_immediate`]: PostgresNode::stop_immediate
/// [`promote`]: PostgresNode::promote
pub struct PostgresNode {
    /// `<name>-<process id>-<n>`: the directory's name, and a standby's
    /// `application_name` (what `synchronous_standby_names` names).
    name: String,
    dir: PathBuf,
    port: u16,
    programs: &'static Programs,
    running: bool,
    /// Set when a start failed: its error names the log, which dropping leaves.
    keep_dir: bool,
}

impl PostgresNode {
    /// Whether the server programs (`initdb`, `pg_ctl`, `pg_basebackup`, `postgres`)
    /// are installed, on `PATH` or in `/usr/lib/postgresql/<version>/bin` (and, for a
    /// root process, a `postgres` user to run them as): callers skip, and say so,
    /// when they are not.
    pub fn installed() -> bool {
        programs().is_some()
    }

    /// `initdb`, then starts the server: a primary that streams its WAL to standbys
    /// (`wal_level = replica`) and lets them serve reads (`hot_standby`). Returns once
    /// it accepts connections; the error of one that does not names its log.
    pub async fn start_primary(name: &str) -> anyhow::Result<Self> {
        let mut node = Self::place(name)?;
        let data = node.dir.join(DATA);
        node.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        .await?;
        let settings = format!(
            "{}wal_level = replica\nmax_wal_senders = 10\nwal_keep_size = '256MB'\n\
             hot_standby = on\nmax_connections = 200\nfsync = off\n",
            node.own_settings()
        );
        append(&data.join("postgresql.conf"), &settings)?;
        append(
            &data.join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 trust\n",
        )?;
        node.start().await?;
        Ok(node)
    }

    /// A streaming standby of this primary: `pg_basebackup -R` (a copy that knows its
    /// primary), started on a port of its own. Returns once the primary sees it
    /// streaming and, with [`Replication::Synchronous`], once it is the primary's
    /// synchronous standby (so the next commit on the primary waits for it).
    pub async fn standby(&self, name: &str, replication: Replication) -> anyhow::Result<Self> {
        anyhow::ensure!(self.running, "{} is not running", self.name);
        let mut standby = Self::place(name)?;
        let data = standby.dir.join(DATA);
        let primary = format!(
            "host=127.0.0.1 port={} user=postgres application_name={}",
            self.port, standby.name
        );
        standby
            .run(
                "pg_basebackup",
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "-d",
                    &primary,
                ],
            )
            .await?;
        // The copy has the primary's settings; the later lines win.
        append(&data.join("postgresql.conf"), &standby.own_settings())?;
        standby.start().await?;
        let primary = self.connect("postgres").await?;
        let state = async || -> anyhow::Result<Option<String>> {
            Ok(sqlx::query_scalar(
                "SELECT sync_state FROM pg_stat_replication \
                 WHERE application_name = $1 AND state = 'streaming'",
            )
            .bind(&standby.name)
            .fetch_optional(&primary)
            .await?)
        };
        let streaming = format!("{} streams from {}", standby.name, self.name);
        let waited = wait_until(TIMEOUT, &streaming, async || Ok(state().await?.is_some())).await;
        if waited.is_err() {
            // Its log says why: dropping it leaves it.
            standby.keep_dir = true;
        }
        let log = standby.dir.join(SERVER_LOG);
        waited.with_context(|| format!("see {}", log.display()))?;
        if replication == Replication::Synchronous {
            let names = format!(
                "ALTER SYSTEM SET synchronous_standby_names = '\"{}\"'",
                standby.name
            );
            sqlx::query(sqlx::AssertSqlSafe(names))
                .execute(&primary)
                .await?;
            for statement in [
                "ALTER SYSTEM SET synchronous_commit = 'on'",
                "SELECT pg_reload_conf()",
            ] {
                sqlx::query(statement).execute(&primary).await?;
            }
            let synchronous = format!("{} is {}'s synchronous standby", standby.name, self.name);
            wait_until(TIMEOUT, &synchronous, async || {
                Ok(state().await?.as_deref() == Some("sync"))
            })
            .await?;
        }
        primary.close().await;
        Ok(standby)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Where the server listens: for a proxy in front of it.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The port, the same for the node's life.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's directory: the data (`data/`), the server's log (`server.log`) and
    /// its Unix socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server runs: started, and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Creates the database `name` (letters, digits and `_`): on a primary, the
    /// standbys get it too.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a database name here is letters, digits and '_', not {name:?}"
        );
        let pool = self.connect("postgres").await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&pool)
            .await
            .with_context(|| format!("creating database {name} on {}", self.name))?;
        pool.close().await;
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, with no
    /// checkpoint and no goodbye to clients or standbys, as a crash would look to them.
    pub async fn stop_immediate(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running, "{} is not running", self.name);
        let data = self.dir.join(DATA);
        self.run("pg_ctl", &stop_immediately(&data.to_string_lossy()))
            .await?;
        self.running = false;
        Ok(())
    }

    /// `pg_ctl promote` on a standby, then waits until it says it is out of recovery
    /// (`pg_is_in_recovery()` is false): from then on it takes writes.
    pub async fn promote(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running, "{} is not running", self.name);
        let data = self.dir.join(DATA);
        let timeout = TIMEOUT.as_secs().to_string();
        self.run(
            "pg_ctl",
            &[
                "promote",
                "-D",
                &data.to_string_lossy(),
                "-w",
                "-t",
                &timeout,
            ],
        )
        .await?;
        let pool = self.connect("postgres").await?;
        let promoted = format!("{} is out of recovery", self.name);
        let waited = wait_until(TIMEOUT, &promoted, async || {
            let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&pool)
                .await?;
            Ok(!recovering)
        })
        .await;
        pool.close().await;
        waited
    }

    /// Stops the server if it runs and removes the node's directory.
    pub async fn remove(mut self) -> anyhow::Result<()> {
        if self.running {
            self.stop_immediate().await?;
        }
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))
    }

    /// A fresh directory for a node named `<name>-<process id>-<n>`, owned by this
    /// process (the owner file) and by the user the server runs as, and a free port;
    /// first sweeps what dead processes left.
    fn place(name: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "a PostgresNode name is letters, digits, '-' and '_', not {name:?}"
        );
        let programs = programs().context(
            "the PostgreSQL server programs are not installed (looked on PATH and in \
             /usr/lib/postgresql/<version>/bin; a root process also needs a postgres user)",
        )?;
        let base = std::env::temp_dir().join(BASE);
        sweep(&base);
        std::fs::create_dir_all(&base)?;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = base.join(&name);
        // A leftover of a dead process that had our pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
        programs.hand_over(&dir)?;
        let port = free_ports(1)?[0];
        Ok(Self {
            name,
            dir,
            port,
            programs,
            running: false,
            keep_dir: false,
        })
    }

    /// The settings no two nodes share: the port, and the socket in the node's own
    /// directory (not `/var/run/postgresql`, which the shared server uses).
    fn own_settings(&self) -> String {
        format!(
            "\n# testkit::PostgresNode\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\ncluster_name = '{}'\n",
            self.port,
            self.dir.display(),
            self.name
        )
    }

    /// `pg_ctl start -w`: returns once the server accepts connections.
    async fn start(&mut self) -> anyhow::Result<()> {
        let data = self.dir.join(DATA);
        let log = self.dir.join(SERVER_LOG);
        let timeout = TIMEOUT.as_secs().to_string();
        let started = self
            .run(
                "pg_ctl",
                &[
                    "start",
                    "-D",
                    &data.to_string_lossy(),
                    "-l",
                    &log.to_string_lossy(),
                    "-w",
                    "-t",
                    &timeout,
                ],
            )
            .await;
        // Started, or half started: dropping the node stops what runs.
        self.running = true;
        if started.is_err() {
            self.keep_dir = true;
        }
        started.map(drop)
    }

    async fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let see = format!("see {}", self.dir.join(SERVER_LOG).display());
        let output = self
            .programs
            .run(&self.dir, program, args, TIMEOUT, &see)
            .await;
        output.with_context(|| format!("PostgreSQL node {}", self.name))
    }

    /// One connection, as a pool: a wait's check may use it again and again.
    async fn connect(&self, database: &str) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url(database))
            .await
            .with_context(|| format!("connecting to {}", self.name))
    }
}

impl Drop for PostgresNode {
    /// Best effort, and synchronous: stops the server at once if it still runs (or
    /// kills it), and removes the directory unless a start failed or the thread panics
    /// (the log explains why; the next start's sweep removes it).
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.join(DATA);
            let data_text = data.to_string_lossy();
            let args = stop_immediately(&data_text);
            if !self.programs.run_blocking(&self.dir, "pg_ctl", &args)
                && let Some(postmaster) = postmaster_of(&data)
            {
                kill_and_wait(postmaster);
            }
        }
        if !self.keep_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `pg_ctl`'s arguments to stop the server of `data` at once and wait until it has.
fn stop_immediately(data: &str) -> [&str; 6] {
    ["stop", "-D", data, "-m", "immediate", "-w"]
}

/// Appends `text` to the file at `path` (the server's configuration).
fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
