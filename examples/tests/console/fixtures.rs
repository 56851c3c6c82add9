//! What the browser looks at: a short choreographed demo run kept on its four
//! databases, an orchestrated order process still running in a database of the
//! test's own, a dead letter, and the console serving them all.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;
use tokio::process::{Child, Command};

/// The four databases a demo run kept, by service name.
pub(crate) struct KeptDemo {
    pub(crate) databases: Vec<(String, String)>,
}

impl KeptDemo {
    /// Runs the exactly-once demo, choreographed, short and without faults, keeping
    /// its databases.
    pub(crate) async fn run() -> anyhow::Result<Self> {
        let demo = env!("CARGO_BIN_EXE_exactly-once-demo");
        let output = tokio::time::timeout(
            Duration::from_secs(300),
            Command::new(demo)
                .args([
                    "--short",
                    "--orders",
                    "6",
                    "--order-rate",
                    "6",
                    "--fault-rate",
                    "0",
                ])
                .args([
                    "--payment-failure-rate",
                    "0.5",
                    "--seed",
                    "7",
                    "--keep-databases",
                ])
                .env("OUTBOX_RELAY_BIN", relay_program()?)
                .stdin(Stdio::null())
                .output(),
        )
        .await??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "the demo failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let kept = stdout
            .lines()
            .find_map(|line| line.strip_prefix("kept the databases: "))
            .ok_or_else(|| {
                anyhow::anyhow!("the demo did not say which databases it kept:\n{stdout}")
            })?;
        let databases = kept
            .split(", ")
            .map(|name| {
                let service = name.rsplit('_').next().unwrap_or(name).to_owned();
                (service, name.to_owned())
            })
            .collect();
        Ok(Self { databases })
    }

    /// Drops the kept databases.
    pub(crate) async fn drop_all(&self, admin: &PgPool) -> anyhow::Result<()> {
        for (_, name) in &self.databases {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(admin)
            .await?;
        }
        Ok(())
    }
}

/// The URL of database `name` on the test's server.
pub(crate) fn url_of(name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(&testkit::database_url())?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// The `outbox-relay` binary `cargo test --workspace` built beside this test's.
pub(crate) fn relay_program() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let built = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("outbox-relay"))
        .filter(|path| path.is_file());
    built.ok_or_else(|| {
        anyhow::anyhow!(
            "no outbox-relay binary beside this test: run `cargo build -p txoutbox-relay` first"
        )
    })
}

/// `outbox-relay console` on a free port, reading `databases`.
pub(crate) struct RunningConsole {
    pub(crate) port: u16,
    child: Child,
    pub(crate) log: PathBuf,
}

impl RunningConsole {
    pub(crate) async fn start(
        databases: &[(String, String)],
        token: &str,
        final_steps: &str,
    ) -> anyhow::Result<Self> {
        let port = super::browser::free_port()?;
        let entries: Vec<String> = databases
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect();
        let log = std::env::temp_dir().join(format!("console-test-{port}.log"));
        let child = Command::new(relay_program()?)
            .args([
                "console",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--final-step",
                final_steps,
            ])
            .env("CONSOLE_DATABASES", entries.join("\n"))
            .env("CONSOLE_TOKEN", token)
            .env("AMQP_URL", testkit::amqp_url())
            .env_remove("DATABASE_URL")
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        testkit::wait_until(Duration::from_secs(20), "the console listens", async || {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok())
        })
        .await?;
        Ok(Self { port, child, log })
    }

    /// An address on the console.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Stops it and returns what it logged.
    pub(crate) async fn stop(mut self) -> anyhow::Result<String> {
        testkit::stop(&mut self.child, Duration::from_secs(10)).await?;
        Ok(std::fs::read_to_string(&self.log)?)
    }
}
