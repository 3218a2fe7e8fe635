//! Network-namespace helpers that need no [`Lab`]: the root check, running code inside a
//! namespace, listing namespaces and removing them (stale ones included).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::claim::{lab_of_netns, owner, Owner, StaleClaim};
use super::command::run_command;
#[cfg(doc)]
use super::Lab;
use crate::privilege::notice;

/// Fails with a clear message unless running as root (the lab needs CAP_NET_ADMIN and
/// CAP_SYS_ADMIN for `ip netns`).
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        bail!("the lab needs root (network namespaces, veth, XDP); run the tests with sudo or as root")
    }
}

/// Runs `f` on a fresh thread that has joined the network namespace `ns` (a name under
/// `/run/netns`), so sockets opened inside `f` live in that namespace. Only that thread
/// switches; it ends with `f`. A panic in `f` is propagated.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = netns_path(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    thread::scope(|scope| {
        let handle = scope.spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into network namespace {ns}"))?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Names of all named network namespaces (`ip netns list`).
pub fn netns_list() -> Result<Vec<String>> {
    let out = run_command(Command::new("ip").args(["netns", "list"]))?;
    // Lines look like `swlab-client (id: 3)` or just `swlab-client`.
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Deletes every network namespace whose name starts with `prefix_start`, killing the processes
/// still inside first, except those of a lab whose owner process is alive (a running test: see
/// the `claim` module); a kept lab (`cargo xtask lab up`) is removed with its claim. Returns the
/// names removed. Used by `cargo xtask lab down`.
pub fn cleanup_stale(prefix_start: &str) -> Result<Vec<String>> {
    if prefix_start.is_empty() {
        // An empty prefix would delete every namespace on the machine.
        bail!("cleanup_stale needs a non-empty prefix");
    }
    // Per lab prefix: its claim once we hold it (None: its owner lives, leave it).
    let mut labs: BTreeMap<String, Option<Option<StaleClaim>>> = BTreeMap::new();
    let mut removed = Vec::new();
    for name in netns_list()? {
        if !name.starts_with(prefix_start) {
            continue;
        }
        if let Some(lab) = lab_of_netns(&name) {
            if !labs.contains_key(lab) {
                let state = match owner(lab)? {
                    Owner::Live(who) => {
                        notice(&format!("leaving lab {lab} alone: its owner runs ({who})"));
                        None
                    }
                    Owner::Starting => None,
                    Owner::Unclaimed => Some(None),
                    Owner::Kept(c) | Owner::Dead(c) => Some(Some(c)),
                };
                labs.insert(lab.to_owned(), state);
            }
            if matches!(labs.get(lab), Some(None)) {
                continue;
            }
        }
        remove_netns(&name)?;
        removed.push(name);
    }
    for claim in labs.into_values().flatten().flatten() {
        claim.remove()?;
    }
    Ok(removed)
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// Kills what still runs in `name` and deletes it; a missing namespace is fine.
pub(super) fn remove_netns(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    // A process left inside keeps the namespace (and its veths) alive after `ip netns del`.
    let pids = run_command(Command::new("ip").args(["netns", "pids", name]))?;
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("killing pid {pid} in {name}")),
        }
    }
    run_command(Command::new("ip").args(["netns", "del", name]))
        .with_context(|| format!("deleting network namespace {name}"))?;
    Ok(())
}
