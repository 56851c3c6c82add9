//! Where the PostgreSQL server programs are, and how to run one: as the `postgres`
//! user when this process is root, because `initdb` and the server refuse to run as
//! root (a server that runs as root could be made to run anything as root).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

/// The programs a node needs, all in one directory (one PostgreSQL version).
const NEEDED: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "postgres"];

/// The server programs' directory, and the user to run them as.
pub(super) struct Programs {
    bin: PathBuf,
    /// `Some` when this process is root: the programs run as this user, through
    /// `runuser`, and the nodes' directories belong to it.
    user: Option<User>,
}

/// An OS user, from `/etc/passwd`.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

/// The programs, found once: on `PATH`, or else in the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's packages put them there, off `PATH`).
/// `None` when they are missing, or when this process is root and there is no
/// `postgres` user to run them as.
pub(super) fn programs() -> Option<&'static Programs> {
    static PROGRAMS: OnceLock<Option<Programs>> = OnceLock::new();
    PROGRAMS.get_or_init(find).as_ref()
}

fn find() -> Option<Programs> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort();
    let bin = std::env::split_paths(&path)
        .chain(versioned.into_iter().rev().map(|(_, bin)| bin))
        .find(|dir| NEEDED.iter().all(|program| dir.join(program).is_file()))?;
    let root = std::fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0);
    let user = if root { Some(user("postgres")?) } else { None };
    Some(Programs { bin, user })
}

/// `name`'s uid and gid, from `/etc/passwd`.
fn user(name: &str) -> Option<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == name).then(|| {
            Some(User {
                name: name.to_owned(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
            })
        })?
    })
}

impl Programs {
    /// Gives `path` to the user the programs run as (a no-op when that is us), so that
    /// the server can write there.
    pub(super) fn hand_over(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(user) = &self.user {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("giving {} to {}", path.display(), user.name))?;
        }
        Ok(())
    }

    /// Runs `program args` in `dir` (as the `postgres` user when we are root) with an
    /// environment of its own (no `PGPORT` or `PGDATA` of the caller's), and returns
    /// its stdout; the error names the command, what it said, and `see` (a log file).
    pub(super) async fn run(
        &self,
        dir: &Path,
        program: &str,
        args: &[&str],
        timeout: Duration,
        see: &str,
    ) -> anyhow::Result<String> {
        let what = format!("{program} {}", args.join(" "));
        let mut command = Command::from(self.command(dir, program, args));
        command.kill_on_drop(true);
        let output = tokio::time::timeout(timeout, command.output())
            .await
            .with_context(|| format!("{what}: no answer within {timeout:?}; {see}"))?
            .with_context(|| format!("{what}: could not run it"))?;
        anyhow::ensure!(
            output.status.success(),
            "{what}: {}: {}{}; {see}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim(),
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// [`Programs::run`] without waiting on a runtime, for `Drop`: the status only.
    pub(super) fn run_blocking(&self, dir: &Path, program: &str, args: &[&str]) -> bool {
        self.command(dir, program, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn command(&self, dir: &Path, program: &str, args: &[&str]) -> std::process::Command {
        let program = self.bin.join(program);
        let mut command = match &self.user {
            Some(user) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", &user.name, "--"]).arg(program);
                command
            }
            None => std::process::Command::new(program),
        };
        command.args(args).env_clear();
        for inherited in ["PATH", "LANG", "LC_ALL", "LC_CTYPE"] {
            if let Some(value) = std::env::var_os(inherited) {
                command.env(inherited, value);
            }
        }
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}
