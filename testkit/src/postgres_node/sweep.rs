//! What a process that ended without dropping its PostgreSQL nodes (a Ctrl-C, a
//! kill -9, a test timeout) left: servers still running, and their directories.
//! Linux only: telling a live owner and our server from a recycled pid needs `/proc`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::rabbit_node::host::{alive, kill_and_wait, orphans, signal};

use super::{DATA, OWNER_FILE};

/// Stops the server of every node under `base` whose owner is gone (SIGQUIT, the
/// immediate shutdown, then SIGKILL if it lingers), and removes its directory.
pub(super) fn sweep(base: &Path) {
    for dir in orphans(base, OWNER_FILE) {
        if let Some(postmaster) = postmaster_of(&dir.join(DATA)) {
            signal(&postmaster.to_string(), "-QUIT");
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(postmaster) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            kill_and_wait(postmaster);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The pid of the server of `data` when it runs: the first line of its
/// `postmaster.pid`, if that process names `data` on its command line (the pid may be
/// another process's by now).
pub(super) fn postmaster_of(data: &Path) -> Option<u32> {
    let pid = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let data = data.to_string_lossy();
    let ours = command_line
        .split(|byte| *byte == 0)
        .any(|argument| String::from_utf8_lossy(argument).contains(data.as_ref()));
    (ours && alive(pid)).then_some(pid)
}
