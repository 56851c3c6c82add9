//! The machine's side of a node: free ports, signals to processes, whether one runs
//! (from `/proc`), and the sweep of what dead processes left.

use std::hash::BuildHasher;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{HOST, OWNER_FILE, PID_FILE, POLL};

/// `count` free local ports below the kernel's ephemeral range. There, no client's
/// outgoing connection can take one while the node is down between a kill and a
/// start again (a client retrying a closed local port inside the range can even
/// connect to itself and hold the port).
pub(crate) fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(10_001);
    let span = u64::from(ephemeral - 10_000);
    let offset = std::hash::RandomState::new().hash_one(std::process::id()) % span;
    let mut held = Vec::new();
    for step in 0..span {
        let port = 10_000 + ((offset + step) % span) as u16;
        // 15672, 25672, 35672..35682 and their neighbours are RabbitMQ's own.
        if (5670..=5700).contains(&(port % 10_000)) {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
        if held.len() == count {
            return held
                .iter()
                .map(|listener| Ok(listener.local_addr()?.port()))
                .collect();
        }
    }
    anyhow::bail!("no {count} free ports between 10000 and {ephemeral}")
}

/// Kills what a process that ended without dropping its nodes (a Ctrl-C, a kill -9,
/// a test timeout) left under `base`, and removes their directories. Linux only: it
/// needs `/proc` to tell a live owner and our VM from a recycled pid.
pub(super) fn sweep(base: &Path) {
    for dir in orphans(base, OWNER_FILE) {
        let node = format!("{}@{HOST}", dir.file_name().unwrap_or_default().display());
        if let Some(vm) = vm_of(&dir, &node) {
            kill_and_wait(vm);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The directories under `base` whose owner (the pid in their `owner_file`) is gone:
/// what a test, a demo or a bench left running when it ended without cleaning up. A
/// directory with no owner yet (another process is preparing it), or a detached one
/// (no pid), or one whose owner runs, is not. Empty without `/proc`, where a recycled
/// pid cannot be told from a live owner.
pub(crate) fn orphans(base: &Path, owner_file: &str) -> Vec<std::path::PathBuf> {
    if !Path::new("/proc/self").exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| read_pid(&dir.join(owner_file)).is_some_and(|owner| !alive(owner)))
        .collect()
}

/// The pid of `node`'s VM when it runs: the pid in its pid file, if that process has
/// the node's name as its `-testkit_node` argument (the pid may be another process's by
/// now). Linux only (`/proc`).
pub(super) fn vm_of(dir: &Path, node: &str) -> Option<u32> {
    let vm = read_pid(&dir.join(PID_FILE))?;
    let command_line = std::fs::read(format!("/proc/{vm}/cmdline")).ok()?;
    let ours = command_line
        .split(|byte| *byte == 0)
        .any(|argument| argument == node.as_bytes());
    (ours && alive(vm)).then_some(vm)
}

/// SIGKILL to the VM (when known), then to the rest of the node's process group (the
/// script; the VM too when its pid file was not written yet); synchronous, for `Drop`.
pub(super) fn kill_group(group: Option<u32>, vm: Option<u32>) {
    if let Some(vm) = vm {
        kill_and_wait(vm);
    }
    if let Some(group) = group {
        signal(&format!("-{group}"), "-KILL");
    }
}

/// SIGKILL to `pid`, and a short wait (at most 5 s) until it is gone.
pub(crate) fn kill_and_wait(pid: u32) {
    signal(&pid.to_string(), "-KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}

/// `kill <signal> -- <target>`: `kill(1)` rather than `libc::kill`, as the workspace
/// forbids `unsafe`. A negative target is a process group.
pub(crate) fn signal(target: &str, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether `pid` runs: a zombie does not (no one may reap it in a container).
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) if Path::new("/proc/self").exists() => false,
        Err(_) => signal(&pid.to_string(), "-0"),
    }
}

pub(crate) fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}
