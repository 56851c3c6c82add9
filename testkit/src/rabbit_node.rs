//! A RabbitMQ node of a test's or a demo's own, to stop, kill -9 and start again
//! without disturbing the machine's shared broker.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::{Connection, ConnectionProperties};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub(crate) mod host;

use host::{alive, free_ports, kill_group, read_pid, signal, sweep, vm_of};

/// How long a node may take to accept AMQP, a `rabbitmqctl` call to answer, or a
/// stopped or killed VM to go: several times what they take on a slow machine.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait between two looks at a node coming up or going away.
const POLL: Duration = Duration::from_millis(50);
/// The host of every node name: the CLI finds the node through the local epmd.
const HOST: &str = "localhost";
/// The server's pid file, relative to the node's directory.
const PID_FILE: &str = "pid";
/// The pid of the process that started the node: a node whose starter is gone is a
/// leftover (see `sweep`).
const OWNER_FILE: &str = "owner";
/// Where the server script and the VM write their stdout and stderr.
const SERVER_LOG: &str = "server.log";
/// The node's name and ports, for [`RabbitNode::open`] in another process.
const NODE_FILE: &str = "node.json";
/// What the owner file of a detached node holds instead of a pid: no process owns it,
/// and `sweep` leaves it alone.
const DETACHED: &str = "detached";
/// Where [`RabbitNode::start`] makes its nodes' directories, under the temporary
/// directory; `sweep` looks here and nowhere else.
const BASE: &str = "testkit-rabbit";

/// A RabbitMQ node of its own: its own name, ports, data, logs, cookie and (empty)
/// plugin list, in a directory under [`std::env::temp_dir`]. A test or a demo stops
/// it, kills it and starts it again to see what its clients do, while the machine's
/// shared broker (port 5672) carries on. Several nodes may run in one process; they
/// share one Erlang cookie, so they can form a cluster ([`RabbitCluster`]).
///
/// What a restart costs, measured on a 2-CPU VM (RabbitMQ 3.10.8, Erlang 25), idle
/// and (in brackets) busy with a demo: [`RabbitNode::start`] 7.5 s (8 s), [`stop`]
/// 2.5-3 s, [`start_again`] 6-7 s (9 s) after a stop and 6 s (9-11 s) after a
/// [`kill`], which itself takes under 0.1 s; [`RabbitNode::remove`] 2-3 s. Most of a
/// start is the VM booting (2.5 s) and RabbitMQ checking its schema (3 s), before the
/// node logs anything: a demo that restarts its broker should expect clients to wait
/// about 10 s.
///
/// A node whose process ends without dropping it (Ctrl-C, a test timeout) runs on in
/// its own process group; the next [`RabbitNode::start`] on the machine kills it and
/// removes its directory. The nodes of `scripts/rabbitmq-cluster.sh`, which outlive
/// the command that starts them on purpose, live in a directory of their own and are
/// marked detached: no start touches them.
///
/// ```rust,no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use testkit::RabbitNode;
///
/// if !RabbitNode::installed() {
///     eprintln!("skipped: rabbitmq-server is not installed");
///     return Ok(());
/// }
/// let mut broker = RabbitNode::start("demo").await?;
/// // ... clients connect to broker.amqp_url() ...
/// broker.kill().await?;
/// broker.start_again().await?;
/// broker.remove().await
/// # }
/// ```
///
/// [`RabbitCluster`]: crate::RabbitCluster
/// [`stop`]: RabbitNode::stop
/// [`start_again`]: RabbitNode::start_again
/// [`kill`]: RabbitNode::kill
pub struct RabbitNode {
    node: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    scripts: &'static Path,
    running: Option<Running>,
    /// Set when a start failed: its error names the logs in `dir`, so dropping the
    /// node leaves them for a reader (and `sweep` removes them later).
    keep_dir: bool,
    /// The node outlives this value and its process (a cluster of
    /// `scripts/rabbitmq-cluster.sh`): dropping it leaves the node running.
    detached: bool,
}

/// A started node: the Erlang VM, and the `rabbitmq-server` script that runs it (the
/// leader of the node's process group) when this process started it.
struct Running {
    server: Option<Child>,
    vm: u32,
    /// Stopped by [`RabbitNode::freeze`]: it cannot answer a graceful stop.
    frozen: bool,
}

/// A start under way: dropped before it is defused (by an error, or with the future of
/// a start that a caller's timeout or a sibling's failure dropped), it kills the
/// node's processes, so that no VM runs on unknown to its `RabbitNode`.
struct Starting {
    /// The node's process group; `None` once the node runs.
    group: Option<u32>,
    pid_file: PathBuf,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            kill_group(Some(group), read_pid(&self.pid_file));
        }
    }
}

/// Where a node lives before it starts: its short name (`<name>@localhost` is the node),
/// its directory and its two ports.
pub(crate) struct Place {
    pub(crate) short: String,
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
    pub(crate) dist_port: u16,
}

impl RabbitNode {
    /// Whether `rabbitmq-server` is installed (on `PATH`, in `/usr/sbin` or in
    /// `/usr/lib/rabbitmq/bin`): callers that need a node of their own skip, and say
    /// so, when it is not.
    pub fn installed() -> bool {
        scripts().is_some()
    }

    /// Starts a fresh node named `<name>-<process id>-<n>@localhost` (a name unique on
    /// the machine; `name` is letters, digits, `-` and `_`), on two free ports of its
    /// own (AMQP on 127.0.0.1, and Erlang distribution) and with no plugins. Returns
    /// once it accepts AMQP connections as guest/guest; the error of a node that does
    /// not names its logs.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let mut nodes = Self::start_many(name, 1).await?;
        nodes.pop().context("started no node")
    }

    /// Starts `count` fresh nodes as [`RabbitNode::start`] does, all at once, on ports
    /// picked together (so no two of them pick the same). Either all start, or the
    /// error says why one did not and the others are killed.
    pub(crate) async fn start_many(name: &str, count: usize) -> anyhow::Result<Vec<Self>> {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "a RabbitNode name is letters, digits, '-' and '_', not {name:?}"
        );
        let base = std::env::temp_dir().join(BASE);
        sweep(&base);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let ports = free_ports(2 * count)?;
        let places = ports.chunks(2).map(|pair| {
            let short = format!(
                "{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            // A leftover of a dead process that had our pid.
            let _ = std::fs::remove_dir_all(base.join(&short));
            Place {
                dir: base.join(&short),
                short,
                port: pair[0],
                dist_port: pair[1],
            }
        });
        Self::start_at(places.collect()).await
    }

    /// Starts a fresh node in each of `places` (directories that must not exist yet),
    /// all at once; owned by this process, like [`RabbitNode::start`]'s, until
    /// [`RabbitNode::detach`]. Either all start, or the others are killed.
    pub(crate) async fn start_at(places: Vec<Place>) -> anyhow::Result<Vec<Self>> {
        let scripts = scripts().context(
            "rabbitmq-server is not installed (looked on PATH, in /usr/sbin and /usr/lib/rabbitmq/bin)",
        )?;
        let mut nodes = Vec::with_capacity(places.len());
        for place in places {
            prepare(&place).with_context(|| format!("preparing {}", place.dir.display()))?;
            nodes.push(Self {
                node: format!("{}@{HOST}", place.short),
                port: place.port,
                dist_port: place.dist_port,
                dir: place.dir,
                scripts,
                running: None,
                keep_dir: false,
                detached: false,
            });
        }
        // On an error, dropping the others kills them.
        futures_util::future::try_join_all(nodes.iter_mut().map(Self::start_again)).await?;
        Ok(nodes)
    }

    /// The node whose directory is `dir` (one that [`RabbitNode::start_at`] made, in
    /// this process or another), running or not; a detached node, which dropping leaves
    /// as it is.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Self> {
        let scripts = scripts().context("rabbitmq-server is not installed")?;
        let file = dir.join(NODE_FILE);
        let read = || -> anyhow::Result<(String, u16, u16)> {
            let text = std::fs::read_to_string(&file)?;
            let json: serde_json::Value = serde_json::from_str(&text)?;
            let port = |key: &str| {
                json[key]
                    .as_u64()
                    .and_then(|port| u16::try_from(port).ok())
                    .with_context(|| format!("no {key}"))
            };
            let node = json["node"].as_str().context("no node")?.to_owned();
            Ok((node, port("port")?, port("dist_port")?))
        };
        let (node, port, dist_port) =
            read().with_context(|| format!("reading {}", file.display()))?;
        let running = vm_of(dir, &node).map(|vm| Running {
            server: None,
            vm,
            frozen: false,
        });
        Ok(Self {
            node,
            port,
            dist_port,
            dir: dir.to_owned(),
            scripts,
            running,
            keep_dir: false,
            detached: true,
        })
    }

    /// Lets the node outlive this value and this process: dropping it leaves it
    /// running, and no `sweep` kills it. Its directory must be outside the one
    /// [`RabbitNode::start`] uses, which `sweep` empties of what it does not know.
    pub(crate) fn detach(&mut self) -> std::io::Result<()> {
        std::fs::write(self.dir.join(OWNER_FILE), DETACHED)?;
        self.detached = true;
        Ok(())
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP port, the same after every [`RabbitNode::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name, `<name>-<process id>-<n>@localhost`: for `rabbitmqctl -n`,
    /// for clustering, and to find the node's processes (`pgrep -f`).
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The node's directory: its data (`mnesia/`), its logs (`log/`, and `server.log`
    /// for what the VM printed) and its cookie.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the node runs: started, and neither stopped nor killed since.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the node gracefully (`rabbitmqctl stop`), and returns once its VM is gone.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running.is_some(), "{} is not running", self.node);
        let pid_file = self.dir.join(PID_FILE);
        // With the pid file, `stop` returns once the VM has exited.
        self.rabbitmqctl(&["stop", &pid_file.to_string_lossy()])
            .await?;
        if let Some(server) = self.running.as_mut().and_then(|r| r.server.as_mut()) {
            tokio::time::timeout(TIMEOUT, server.wait())
                .await
                .with_context(|| format!("{}: rabbitmq-server did not exit", self.node))??;
        }
        self.running = None;
        Ok(())
    }

    /// Kills the node's Erlang VM with SIGKILL, as a crash or an OOM killer would (no
    /// goodbye to its clients: their sockets simply close), and returns once it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut running) = self.running.take() else {
            anyhow::bail!("{} is not running", self.node);
        };
        signal(&running.vm.to_string(), "-KILL");
        // The script reaps the VM, then exits.
        if let Some(server) = running.server.as_mut() {
            tokio::time::timeout(TIMEOUT, server.wait())
                .await
                .with_context(|| format!("{}: rabbitmq-server did not exit", self.node))??;
        }
        let deadline = Instant::now() + TIMEOUT;
        while alive(running.vm) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{}: VM {} is still alive {TIMEOUT:?} after SIGKILL",
                self.node,
                running.vm
            );
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Freezes the node's Erlang VM with SIGSTOP, as a long garbage-collection pause, a
    /// frozen VM or a disk that stops answering would: its sockets stay open and its
    /// clients' writes are taken by the kernel, but nothing answers, and nothing
    /// closes. Only heartbeats (and timeouts of the clients' own) notice. Undo with
    /// [`RabbitNode::thaw`]; a frozen node is still killed when dropped.
    pub fn freeze(&mut self) -> anyhow::Result<()> {
        let Some(running) = &mut self.running else {
            anyhow::bail!("{} is not running", self.node);
        };
        anyhow::ensure!(
            signal(&running.vm.to_string(), "-STOP"),
            "{}: SIGSTOP to VM {} failed",
            self.node,
            running.vm
        );
        running.frozen = true;
        Ok(())
    }

    /// Lets a node frozen by [`RabbitNode::freeze`] run on (SIGCONT): it finds its
    /// peers and its clients' sockets as the time in between left them.
    pub fn thaw(&mut self) -> anyhow::Result<()> {
        let Some(running) = &mut self.running else {
            anyhow::bail!("{} is not running", self.node);
        };
        anyhow::ensure!(
            signal(&running.vm.to_string(), "-CONT"),
            "{}: SIGCONT to VM {} failed",
            self.node,
            running.vm
        );
        running.frozen = false;
        Ok(())
    }

    /// Starts the stopped or killed node again, on the same ports and data: durable
    /// queues and persistent messages are back. Returns once it accepts AMQP.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.running.is_none(),
            "{} is running: stop or kill it first",
            self.node
        );
        // A pid from the last run names a VM that is gone.
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        let mut server = self.spawn()?;
        let mut starting = Starting {
            group: server.id(),
            pid_file: self.dir.join(PID_FILE),
        };
        let vm = self.until_ready(&mut server).await.inspect_err(|_| {
            self.keep_dir = true;
        })?;
        starting.group = None;
        self.keep_dir = false;
        self.running = Some(Running {
            server: Some(server),
            vm,
            frozen: false,
        });
        Ok(())
    }

    /// Runs `rabbitmqctl -n <node> <args>` (`add_vhost`, `close_all_connections`, ...)
    /// and returns its stdout; its error carries the tool's stderr.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let what = format!("rabbitmqctl -n {} {}", self.node, args.join(" "));
        let mut command = self.command("rabbitmqctl");
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .kill_on_drop(true);
        let output = tokio::time::timeout(TIMEOUT, command.output())
            .await
            .with_context(|| format!("{what}: no answer within {TIMEOUT:?}"))?
            .with_context(|| format!("{what}: could not run it"))?;
        if !output.status.success() {
            // The tool writes most of its errors to stderr, a few to stdout.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = match stderr.trim() {
                "" => String::from_utf8_lossy(&output.stdout),
                _ => stderr,
            };
            anyhow::bail!("{what}: {}: {}", output.status, said.trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the node (kills it if it does not stop, or at once if it is frozen) and
    /// removes its directory.
    pub async fn remove(mut self) -> anyhow::Result<()> {
        let frozen = self.running.as_ref().is_some_and(|running| running.frozen);
        // `||` short-circuits: a frozen node is not asked to stop.
        if self.running.is_some() && (frozen || self.stop().await.is_err()) {
            self.kill().await?;
        }
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))
    }

    /// `rabbitmq-server` in the node's process group of its own, so that a Ctrl-C or
    /// a signal meant for the caller's group leaves it alone.
    fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(SERVER_LOG))?;
        let mut command = self.command("rabbitmq-server");
        command
            .process_group(0)
            .stdout(log.try_clone()?)
            .stderr(log);
        command
            .spawn()
            .with_context(|| format!("{}: starting rabbitmq-server", self.node))
    }

    /// Waits until the node accepts an AMQP connection; returns its VM's pid. A node
    /// accepts TCP a little before it accepts AMQP, so only a real connection counts.
    async fn until_ready(&self, server: &mut Child) -> anyhow::Result<u32> {
        let logs = format!(
            "see {} and {}",
            self.dir
                .join("log")
                .join(format!("{}.log", self.node))
                .display(),
            self.dir.join(SERVER_LOG).display()
        );
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = server.try_wait()? {
                anyhow::bail!(
                    "{}: rabbitmq-server exited ({status}) before it accepted AMQP; {logs}",
                    self.node
                );
            }
            if self.accepts_amqp().await {
                return read_pid(&self.dir.join(PID_FILE))
                    .with_context(|| format!("{}: no pid in its pid file; {logs}", self.node));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not accept AMQP within {TIMEOUT:?}; {logs}",
                self.node
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn accepts_amqp(&self) -> bool {
        let second = Duration::from_secs(1);
        let tcp = tokio::time::timeout(second, TcpStream::connect(("127.0.0.1", self.port)));
        if !matches!(tcp.await, Ok(Ok(_))) {
            return false;
        }
        let url = self.amqp_url();
        let amqp = Connection::connect(&url, ConnectionProperties::default());
        match tokio::time::timeout(5 * second, amqp).await {
            Ok(Ok(connection)) => {
                let _ = connection.close(200, "OK".into()).await;
                true
            }
            _ => false,
        }
    }

    /// A RabbitMQ script with the node's environment and nothing inherited that could
    /// point it elsewhere (`RABBITMQ_*`, `ERL_FLAGS`, the machine's config files).
    /// The server and `rabbitmqctl` get the same `HOME`, hence the same cookie.
    fn command(&self, script: &str) -> Command {
        let path = |file: &str| self.dir.join(file);
        let mut command = Command::new(self.scripts.join(script));
        command.env_clear();
        for inherited in ["PATH", "LANG", "LC_ALL", "LC_CTYPE"] {
            if let Some(value) = std::env::var_os(inherited) {
                command.env(inherited, value);
            }
        }
        command
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_CONFIG_FILES", path("conf.d"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path(PID_FILE))
            // Distribution on loopback only; `-testkit_node` does nothing but put the
            // node name on the VM's command line, for `pgrep -f` and for `sweep`.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                format!(
                    "-kernel inet_dist_use_interface {{127,0,0,1}} -testkit_node {}",
                    self.node
                ),
            )
            // `rabbitmqctl` is a distributed node too, by default on 35672-35682: any
            // free port instead, so parallel calls never run out of them.
            .env("RABBITMQ_CTL_DIST_PORT_MIN", "0")
            .env("RABBITMQ_CTL_DIST_PORT_MAX", "0")
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        command
    }
}

impl Drop for RabbitNode {
    /// Best effort, and synchronous: kills the VM if it still runs, and removes the
    /// directory unless a start failed or the thread panics (the logs explain why).
    /// A detached node is left as it is.
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(running) = self.running.take() {
            kill_group(
                running.server.as_ref().and_then(Child::id),
                Some(running.vm),
            );
        }
        if !self.keep_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The directory of the `rabbitmq-server` and `rabbitmqctl` scripts, found once.
fn scripts() -> Option<&'static Path> {
    static SCRIPTS: OnceLock<Option<PathBuf>> = OnceLock::new();
    SCRIPTS
        .get_or_init(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin", "/usr/lib/rabbitmq/bin"].map(PathBuf::from))
                .find(|dir| {
                    dir.join("rabbitmqctl").is_file() && is_server(&dir.join("rabbitmq-server"))
                })
        })
        .as_deref()
}

/// Whether `path` is the server script itself, not the wrapper of a Debian or RPM
/// package (`/usr/sbin/rabbitmq-server`), which switches from root to the `rabbitmq`
/// user, moves to `/var/lib/rabbitmq` and uses that user's cookie.
fn is_server(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .is_ok_and(|script| !script.contains("su rabbitmq") && !script.contains("runuser"))
}

/// The Erlang cookie of every node this process starts (so they can cluster) and of
/// its `rabbitmqctl` calls; random, so no other node on the machine reaches them.
fn cookie() -> &'static str {
    static COOKIE: OnceLock<String> = OnceLock::new();
    COOKIE.get_or_init(|| uuid::Uuid::now_v7().simple().to_string().to_uppercase())
}

/// Every node's `rabbitmq.conf`. A node that was frozen past the cluster's
/// `net_ticktime` (60 s: its peers give it up after 45-75 s) comes back to find itself
/// partitioned from them; with the default handling (`ignore`) it stays apart until
/// restarted by hand. `autoheal` restarts the losing side once the nodes see each other
/// again, so the node rejoins by itself, as in production clusters that set it.
const CONFIG: &str = "cluster_partition_handling = autoheal\n";

/// The node's directory: its owner, its name and ports, its cookie (in `HOME`,
/// readable by its owner alone, as Erlang requires), and configuration of its own that
/// overrides the machine's (whose `rabbitmq.conf` here binds 5672, and whose env file
/// names a node).
fn prepare(place: &Place) -> anyhow::Result<()> {
    let dir = &place.dir;
    std::fs::create_dir_all(dir.join("conf.d"))?;
    std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
    let node = serde_json::json!({
        "node": format!("{}@{HOST}", place.short),
        "port": place.port,
        "dist_port": place.dist_port,
    });
    std::fs::write(dir.join(NODE_FILE), node.to_string())?;
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o400)
        .open(dir.join(".erlang.cookie"))?
        .write_all(cookie().as_bytes())?;
    std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
    std::fs::write(dir.join("rabbitmq.conf"), CONFIG)?;
    std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
    Ok(())
}
