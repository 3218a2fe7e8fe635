//! The lab: four network namespaces wired with veth pairs, built with iproute2.
//!
//! ```text
//! client ns  eth0 198.18.0.1/24, 2001:2::1/64      ──veth── edge ns  to-client 198.18.0.254/24, 2001:2::fe/64
//! blue ns    eth0 198.18.1.2/24, 2001:2:0:1::2/64  ──veth── edge ns  to-blue   198.18.1.1/24,   2001:2:0:1::1/64
//! green ns   eth0 198.18.2.2/24, 2001:2:0:2::2/64  ──veth── edge ns  to-green  198.18.2.1/24,   2001:2:0:2::1/64
//! ```
//!
//! The client reaches the VIP nets (198.18.10.0/24, 2001:2:0:10::/64) and the backend nets via
//! the edge; the backends default-route via the edge; the edge forwards (v4 and v6) with
//! `rp_filter` off. Namespaces are named `{prefix}-client`, `{prefix}-edge`, `{prefix}-blue` and
//! `{prefix}-green`, so labs with different prefixes can coexist (tests run in parallel; use
//! [`Lab::unique_prefix`]).
//!
//! Everything a [`Lab`] starts ([`Lab::spawn`], [`Lab::spawn_ready`], [`Lab::start_rsyslog`]) is
//! tracked and killed, and the namespaces deleted, by [`Lab::down`] or when the `Lab` is dropped
//! (also while a test panics).
//!
//! ```no_run
//! use switcher_tests::lab::{Host, Lab, EDGE_CLIENT_V4};
//! # fn main() -> anyhow::Result<()> {
//! let mut lab = Lab::up(&Lab::unique_prefix("ex"))?;
//! lab.run(Host::Client, &["ping", "-c1", "-W1", &EDGE_CLIENT_V4.to_string()])?;
//! let sink = lab.spawn_ready(Host::Blue, "sh", &["-c", "echo READY; exec sleep 60"], "READY",
//!     std::time::Duration::from_secs(5))?;
//! println!("sink pid {}", sink.pid());
//! lab.down()?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// ---- addresses -------------------------------------------------------------------------------

/// Client `eth0`.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Client `eth0`.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
/// Edge `to-client`: the client's gateway.
pub const EDGE_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// Edge `to-client`: the client's gateway.
pub const EDGE_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0xfe);
/// Blue `eth0`.
pub const BLUE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// Blue `eth0`.
pub const BLUE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);
/// Edge `to-blue`: blue's gateway.
pub const EDGE_BLUE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Edge `to-blue`: blue's gateway.
pub const EDGE_BLUE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
/// Green `eth0`.
pub const GREEN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// Green `eth0`.
pub const GREEN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 2);
/// Edge `to-green`: green's gateway.
pub const EDGE_GREEN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// Edge `to-green`: green's gateway.
pub const EDGE_GREEN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
/// An example VIP inside [`VIP_NET_V4`].
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 10);
/// An example VIP inside [`VIP_NET_V6`].
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, 0x10);
/// The VIP net the client routes via the edge.
pub const VIP_NET_V4: &str = "198.18.10.0/24";
/// The VIP net the client routes via the edge.
pub const VIP_NET_V6: &str = "2001:2:0:10::/64";
/// Blue's subnet.
pub const BLUE_NET_V4: &str = "198.18.1.0/24";
/// Blue's subnet.
pub const BLUE_NET_V6: &str = "2001:2:0:1::/64";
/// Green's subnet.
pub const GREEN_NET_V4: &str = "198.18.2.0/24";
/// Green's subnet.
pub const GREEN_NET_V6: &str = "2001:2:0:2::/64";

/// Interface name of the client's and the backends' veth end.
pub const HOST_IF: &str = "eth0";
/// Edge interface towards the client (where the XDP program is attached).
pub const EDGE_TO_CLIENT: &str = "to-client";
/// Edge interface towards blue.
pub const EDGE_TO_BLUE: &str = "to-blue";
/// Edge interface towards green.
pub const EDGE_TO_GREEN: &str = "to-green";

/// How long [`Lab::down`] waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Lines of stdout/stderr kept per process; older lines are dropped so chatty processes don't
/// grow memory without bound.
const KEEP_LINES: usize = 10_000;

/// One of the lab's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    Client,
    Edge,
    Blue,
    Green,
}

impl Host {
    pub const ALL: [Host; 4] = [Host::Client, Host::Edge, Host::Blue, Host::Green];

    /// The namespace suffix: `client`, `edge`, `blue` or `green`.
    pub fn name(self) -> &'static str {
        match self {
            Host::Client => "client",
            Host::Edge => "edge",
            Host::Blue => "blue",
            Host::Green => "green",
        }
    }

    /// The host's main IPv4 address (for the edge: its client-facing one).
    pub fn v4(self) -> Ipv4Addr {
        match self {
            Host::Client => CLIENT_V4,
            Host::Edge => EDGE_CLIENT_V4,
            Host::Blue => BLUE_V4,
            Host::Green => GREEN_V4,
        }
    }

    /// The host's main IPv6 address (for the edge: its client-facing one).
    pub fn v6(self) -> Ipv6Addr {
        match self {
            Host::Client => CLIENT_V6,
            Host::Edge => EDGE_CLIENT_V6,
            Host::Blue => BLUE_V6,
            Host::Green => GREEN_V6,
        }
    }

    fn index(self) -> usize {
        match self {
            Host::Client => 0,
            Host::Edge => 1,
            Host::Blue => 2,
            Host::Green => 3,
        }
    }
}

// ---- free functions --------------------------------------------------------------------------

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
/// still inside first. Returns the names removed. Used by `cargo xtask lab down` and to sweep
/// namespaces left by killed test runs.
pub fn cleanup_stale(prefix_start: &str) -> Result<Vec<String>> {
    if prefix_start.is_empty() {
        // An empty prefix would delete every namespace on the machine.
        bail!("cleanup_stale needs a non-empty prefix");
    }
    let mut removed = Vec::new();
    for name in netns_list()? {
        if name.starts_with(prefix_start) {
            remove_netns(&name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// Kills what still runs in `name` and deletes it; a missing namespace is fine.
fn remove_netns(name: &str) -> Result<()> {
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

/// Checks that `program` can be started, naming the Debian package otherwise.
fn require_tool(program: &str, version_arg: &str, package: &str) -> Result<()> {
    match Command::new(program)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "`{program}` not found: install the Debian package `{package}` (`cargo xtask setup` does)"
        ),
        Err(e) => Err(e).with_context(|| format!("running `{program} {version_arg}`")),
    }
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion; on failure the error carries its stderr (or stdout).
fn run_command(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{desc}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout.trim()
        } else {
            stderr.trim()
        };
        bail!("`{desc}` failed ({}): {detail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not make teardown panic as well.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let ok_chars = prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if prefix.is_empty() || prefix.len() > 24 || !ok_chars {
        bail!("lab prefix {prefix:?} must be 1-24 characters of [A-Za-z0-9_-]");
    }
    Ok(())
}

// ---- processes -------------------------------------------------------------------------------

#[derive(Default)]
struct Streams {
    stdout: VecDeque<String>,
    stderr: VecDeque<String>,
    /// Lines ever read from stdout, including dropped ones.
    stdout_total: u64,
    stdout_closed: bool,
}

#[derive(Default)]
struct Shared {
    streams: Mutex<Streams>,
    changed: Condvar,
}

struct ProcInner {
    label: String,
    pid: u32,
    child: Mutex<Child>,
    shared: Arc<Shared>,
}

/// A process started by a [`Lab`]. Cheap to clone; the lab keeps a clone and stops the process
/// on [`Lab::down`]. Its stdout and stderr are drained continuously into bounded buffers.
#[derive(Clone)]
pub struct Proc(Arc<ProcInner>);

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.0.pid)
            .field("label", &self.0.label)
            .finish()
    }
}

impl Proc {
    fn start(mut cmd: Command) -> Result<Proc> {
        let label = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{label}`"))?;
        let shared = Arc::new(Shared::default());
        if let Some(out) = child.stdout.take() {
            pump(out, Arc::clone(&shared), true);
        } else {
            lock(&shared.streams).stdout_closed = true;
        }
        if let Some(err) = child.stderr.take() {
            pump(err, Arc::clone(&shared), false);
        }
        Ok(Proc(Arc::new(ProcInner {
            label,
            pid: child.id(),
            child: Mutex::new(child),
            shared,
        })))
    }

    /// The process id (of the program itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// The stdout lines kept so far (the last 10 000).
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.0.shared.streams)
            .stdout
            .iter()
            .cloned()
            .collect()
    }

    /// The stderr lines kept so far (the last 10 000).
    pub fn stderr_lines(&self) -> Vec<String> {
        lock(&self.0.shared.streams)
            .stderr
            .iter()
            .cloned()
            .collect()
    }

    /// The last `n` stderr lines joined, for error messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let streams = lock(&self.0.shared.streams);
        let skip = streams.stderr.len().saturating_sub(n);
        streams
            .stderr
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a kept stdout line satisfies `pred` and returns it. Fails when stdout closes
    /// (the process exited) or on timeout, with the stderr tail in the message.
    pub fn wait_for_stdout(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let shared = &self.0.shared;
        let mut checked = 0u64;
        let mut streams = lock(&shared.streams);
        loop {
            let total = streams.stdout_total;
            let first = total - streams.stdout.len() as u64;
            for abs in checked.max(first)..total {
                if let Some(line) = streams.stdout.get((abs - first) as usize) {
                    if pred(line) {
                        return Ok(line.clone());
                    }
                }
            }
            checked = total;
            if streams.stdout_closed {
                drop(streams);
                bail!(
                    "`{}` closed stdout (exited: {:?}) before the expected line; stderr:\n{}",
                    self.0.label,
                    self.try_wait().ok().flatten(),
                    self.stderr_tail(20)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(streams);
                bail!(
                    "timed out after {timeout:?} waiting for a line from `{}`; stderr:\n{}",
                    self.0.label,
                    self.stderr_tail(20)
                );
            }
            streams = shared
                .changed
                .wait_timeout(streams, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The exit status if the process has exited (never blocks).
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        lock(&self.0.child)
            .try_wait()
            .with_context(|| format!("waiting for `{}`", self.0.label))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after 2 s; returns the exit status. Idempotent.
    pub fn stop(&self) -> Result<ExitStatus> {
        stop_all(std::slice::from_ref(self))?
            .pop()
            .context("stop_all returned no status")
    }

    fn terminate(&self) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.0.pid).context("pid out of range")?;
        // The child is not reaped yet, so its pid cannot have been reused.
        match kill(Pid::from_raw(pid), Signal::SIGTERM) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("SIGTERM to `{}`", self.0.label)),
        }
    }

    fn kill_and_wait(&self) -> Result<ExitStatus> {
        let mut child = lock(&self.0.child);
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // Already exiting processes make kill() fail harmlessly; wait() below settles it.
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("reaping `{}`", self.0.label))
    }
}

/// Stops all `procs` in parallel: SIGTERM to all, a shared grace period, then SIGKILL.
fn stop_all(procs: &[Proc]) -> Result<Vec<ExitStatus>> {
    for p in procs {
        p.terminate()?;
    }
    let deadline = Instant::now() + TERM_GRACE;
    let mut statuses = Vec::with_capacity(procs.len());
    for p in procs {
        let left = deadline.saturating_duration_since(Instant::now());
        statuses.push(match p.wait_timeout(left)? {
            Some(status) => status,
            None => p.kill_and_wait()?,
        });
    }
    Ok(statuses)
}

/// Drains one pipe into the shared buffers, line by line.
fn pump(pipe: impl Read + Send + 'static, shared: Arc<Shared>, is_stdout: bool) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    let mut streams = lock(&shared.streams);
                    let queue = if is_stdout {
                        &mut streams.stdout
                    } else {
                        &mut streams.stderr
                    };
                    if queue.len() >= KEEP_LINES {
                        queue.pop_front();
                    }
                    queue.push_back(line);
                    if is_stdout {
                        streams.stdout_total += 1;
                    }
                    shared.changed.notify_all();
                }
            }
        }
        if is_stdout {
            lock(&shared.streams).stdout_closed = true;
            shared.changed.notify_all();
        }
    });
}

// ---- SNMP counters ---------------------------------------------------------------------------

/// Counters from `/proc/net/snmp` and `/proc/net/snmp6` of one namespace.
///
/// The named fields are the ones the tests check; [`Snmp::raw`] has every counter, keyed like
/// `nstat` does (`UdpInDatagrams`, `TcpOutRsts`, `Udp6InDatagrams`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snmp {
    pub udp_in_datagrams: u64,
    pub udp_in_errors: u64,
    pub udp_rcvbuf_errors: u64,
    pub udp_in_csum_errors: u64,
    pub tcp_in_csum_errors: u64,
    pub tcp_out_rsts: u64,
    pub tcp_attempt_fails: u64,
    pub tcp_estab_resets: u64,
    pub udp6_in_datagrams: u64,
    pub udp6_rcvbuf_errors: u64,
    pub udp6_in_csum_errors: u64,
    pub raw: BTreeMap<String, u64>,
}

impl Snmp {
    /// Parses the text of `/proc/net/snmp` (header/value line pairs per protocol) and
    /// `/proc/net/snmp6` (one `Name value` per line).
    pub fn parse(snmp: &str, snmp6: &str) -> Result<Snmp> {
        let mut raw = BTreeMap::new();
        let mut lines = snmp.lines().filter(|l| !l.trim().is_empty());
        while let Some(header) = lines.next() {
            let values = lines
                .next()
                .with_context(|| format!("snmp: no value line after {header:?}"))?;
            let (proto, names) = header
                .split_once(':')
                .with_context(|| format!("snmp: bad line {header:?}"))?;
            let (proto2, nums) = values
                .split_once(':')
                .with_context(|| format!("snmp: bad line {values:?}"))?;
            if proto != proto2 {
                bail!("snmp: header {proto:?} followed by values of {proto2:?}");
            }
            for (name, num) in names.split_whitespace().zip(nums.split_whitespace()) {
                // Tcp MaxConn is -1; it is no counter, skip what is not unsigned.
                if let Ok(v) = num.parse::<u64>() {
                    raw.insert(format!("{proto}{name}"), v);
                }
            }
        }
        for line in snmp6.lines() {
            let mut it = line.split_whitespace();
            if let (Some(name), Some(num)) = (it.next(), it.next()) {
                if let Ok(v) = num.parse::<u64>() {
                    raw.insert(name.to_owned(), v);
                }
            }
        }
        let get = |key: &str| {
            raw.get(key)
                .copied()
                .with_context(|| format!("snmp: no counter {key}"))
        };
        Ok(Snmp {
            udp_in_datagrams: get("UdpInDatagrams")?,
            udp_in_errors: get("UdpInErrors")?,
            udp_rcvbuf_errors: get("UdpRcvbufErrors")?,
            udp_in_csum_errors: get("UdpInCsumErrors")?,
            tcp_in_csum_errors: get("TcpInCsumErrors")?,
            tcp_out_rsts: get("TcpOutRsts")?,
            tcp_attempt_fails: get("TcpAttemptFails")?,
            tcp_estab_resets: get("TcpEstabResets")?,
            udp6_in_datagrams: get("Udp6InDatagrams")?,
            udp6_rcvbuf_errors: get("Udp6RcvbufErrors")?,
            udp6_in_csum_errors: get("Udp6InCsumErrors")?,
            raw,
        })
    }

    /// Any counter by its `nstat` name, e.g. `IcmpInEchos`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.raw.get(key).copied()
    }
}

// ---- the lab ---------------------------------------------------------------------------------

/// A running lab. See the module docs for the topology.
pub struct Lab {
    prefix: String,
    names: [String; 4],
    procs: Mutex<Vec<Proc>>,
    /// Set once torn down (or handed over with [`Lab::keep`]), so Drop does nothing.
    finished: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("finished", &self.finished)
            .finish()
    }
}

static PREFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds the topology under `prefix` and checks connectivity. Namespaces left with the same
    /// names by an earlier run are removed first. On error everything created is removed again.
    pub fn up(prefix: &str) -> Result<Lab> {
        require_root()?;
        validate_prefix(prefix)?;
        require_tool("ip", "-V", "iproute2")?;
        require_tool("ethtool", "--version", "ethtool")?;
        require_tool("ping", "-V", "iputils-ping")?;
        let lab = Lab {
            prefix: prefix.to_owned(),
            names: Host::ALL.map(|h| format!("{prefix}-{}", h.name())),
            procs: Mutex::new(Vec::new()),
            finished: false,
        };
        for name in &lab.names {
            remove_netns(name).with_context(|| format!("removing stale namespace {name}"))?;
        }
        // On error `lab` is dropped here, which deletes what was created.
        lab.build()
            .with_context(|| format!("setting up lab {prefix:?}"))?;
        lab.verify()
            .with_context(|| format!("lab {prefix:?} has no connectivity"))?;
        Ok(lab)
    }

    /// A prefix unique to this process and call: `sw{tag}{pid % 10000:04}{counter}`. Keep `tag`
    /// to a few letters (non-letters are dropped) so names stay short and unambiguous.
    pub fn unique_prefix(tag: &str) -> String {
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphabetic)
            .take(6)
            .collect();
        let n = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("sw{tag}{:04}{n}", std::process::id() % 10_000)
    }

    /// The lab's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace name of `host`, e.g. `swlab-edge`.
    pub fn ns(&self, host: Host) -> &str {
        &self.names[host.index()]
    }

    /// `ip netns exec NS program`, to add arguments to and run.
    pub fn command(&self, host: Host, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(host), program]);
        cmd
    }

    /// Runs `args` (program first) inside `host` to completion and returns its stdout; fails
    /// with its stderr when it exits non-zero.
    pub fn run(&self, host: Host, args: &[&str]) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .context("Lab::run needs at least a program")?;
        run_command(self.command(host, program).args(rest))
    }

    /// Starts `program args` inside `host` in the background; tracked and stopped on
    /// [`Lab::down`].
    pub fn spawn(&self, host: Host, program: &str, args: &[&str]) -> Result<Proc> {
        let mut cmd = self.command(host, program);
        cmd.args(args);
        self.spawn_command(cmd)
    }

    /// Starts a prepared command (usually from [`Lab::command`], e.g. with extra environment) in
    /// the background; tracked and stopped on [`Lab::down`].
    pub fn spawn_command(&self, cmd: Command) -> Result<Proc> {
        let proc = Proc::start(cmd)?;
        lock(&self.procs).push(proc.clone());
        Ok(proc)
    }

    /// Like [`Lab::spawn`], then waits up to `timeout` for a stdout line starting with
    /// `ready_line` (e.g. `READY`). Stdout keeps being drained afterwards. On failure the process
    /// is stopped and the error shows its stderr.
    pub fn spawn_ready(
        &self,
        host: Host,
        program: &str,
        args: &[&str],
        ready_line: &str,
        timeout: Duration,
    ) -> Result<Proc> {
        let proc = self.spawn(host, program, args)?;
        if let Err(e) = proc.wait_for_stdout(|line| line.starts_with(ready_line), timeout) {
            let _ = proc.stop();
            return Err(e.context(format!(
                "waiting for {ready_line:?} from {program} in {}",
                self.ns(host)
            )));
        }
        Ok(proc)
    }

    /// Parsed `/proc/net/snmp` and `/proc/net/snmp6` of `host`'s namespace.
    pub fn snmp(&self, host: Host) -> Result<Snmp> {
        in_netns(self.ns(host), || -> Result<Snmp> {
            // thread-self, not self: only this thread is in the namespace.
            let snmp = fs::read_to_string("/proc/thread-self/net/snmp")
                .context("reading /proc/net/snmp")?;
            let snmp6 = fs::read_to_string("/proc/thread-self/net/snmp6")
                .context("reading /proc/net/snmp6")?;
            Snmp::parse(&snmp, &snmp6)
        })?
        .with_context(|| format!("snmp counters of {}", self.ns(host)))
    }

    /// Starts a real `rsyslogd` in `host` listening with imudp and imtcp on `port` (IPv4 and
    /// IPv6, all addresses) and writing each received message as one line to `out_file`,
    /// exactly as received (`%rawmsg%`, syslog header included; TCP framing removed). Its
    /// config, pid file and state go to `workdir`. Returns once it listens. Tracked like
    /// [`Lab::spawn`]; SIGTERM makes rsyslog flush and exit.
    pub fn start_rsyslog(
        &self,
        host: Host,
        port: u16,
        out_file: &Path,
        workdir: &Path,
    ) -> Result<Proc> {
        require_tool("rsyslogd", "-v", "rsyslog")?;
        fs::create_dir_all(workdir).with_context(|| format!("creating {}", workdir.display()))?;
        // rsyslogd resolves relative paths against its own cwd, so hand it absolute ones.
        let workdir = std::path::absolute(workdir).context("absolute workdir")?;
        let out_file = std::path::absolute(out_file).context("absolute out_file")?;
        for p in [&workdir, &out_file] {
            if p.to_string_lossy().contains(['"', '\\']) {
                bail!(
                    "rsyslog paths must not contain quotes or backslashes: {}",
                    p.display()
                );
            }
        }
        let conf_path = workdir.join(format!("rsyslog-{port}.conf"));
        let pid_path = workdir.join(format!("rsyslog-{port}.pid"));
        // Inputs bound to their own ruleset so rsyslog's internal messages never reach out_file.
        let conf = format!(
            r#"global(workDirectory="{workdir}" net.enableDNS="off")
module(load="imudp")
module(load="imtcp")
template(name="switcher_raw" type="string" string="%rawmsg%\n")
ruleset(name="ingest") {{
    action(type="omfile" file="{out}" template="switcher_raw")
}}
input(type="imudp" port="{port}" ruleset="ingest")
input(type="imtcp" port="{port}" ruleset="ingest")
"#,
            workdir = workdir.display(),
            out = out_file.display(),
        );
        fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
        match fs::remove_file(&pid_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing stale {}", pid_path.display()))
            }
        }
        let mut cmd = self.command(host, "rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(&pid_path);
        let proc = self.spawn_command(cmd)?;
        if let Err(e) = self.wait_listening(host, port, &proc, Duration::from_secs(10)) {
            let _ = proc.stop();
            return Err(e.context(format!(
                "rsyslogd in {} did not come up; stderr:\n{}",
                self.ns(host),
                proc.stderr_tail(20)
            )));
        }
        Ok(proc)
    }

    /// Polls `ss` until `port` has UDP and TCP listeners on the v4 and v6 wildcard addresses.
    fn wait_listening(&self, host: Host, port: u16, proc: &Proc, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let suffix = format!(":{port}");
        let has = |listing: &str, wildcards: &[&str]| {
            listing.lines().any(|line| {
                line.split_whitespace()
                    .nth(3)
                    .and_then(|local| local.strip_suffix(suffix.as_str()))
                    .is_some_and(|addr| wildcards.contains(&addr))
            })
        };
        loop {
            if let Some(status) = proc.try_wait()? {
                bail!("exited with {status}");
            }
            let udp = self.run(host, &["ss", "-H", "-l", "-n", "-u"])?;
            let tcp = self.run(host, &["ss", "-H", "-l", "-n", "-t"])?;
            let v4 = ["0.0.0.0", "*"];
            let v6 = ["[::]", "*"];
            if has(&udp, &v4) && has(&udp, &v6) && has(&tcp, &v4) && has(&tcp, &v6) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nothing listens on UDP and TCP port {port} (v4 and v6) after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every tracked process (SIGTERM, SIGKILL after 2 s), kills anything else left in
    /// the namespaces and deletes them. Idempotent; Drop calls it too.
    pub fn down(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let mut errors = Vec::new();
        let procs = std::mem::take(&mut *lock(&self.procs));
        if let Err(e) = stop_all(&procs) {
            errors.push(format!("{e:#}"));
        }
        for name in &self.names {
            if let Err(e) = remove_netns(name) {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down lab {}: {}", self.prefix, errors.join("; "))
        }
    }

    /// Leaves the lab (and anything spawned in it) running after this value is gone; for
    /// `cargo xtask lab up`. Remove it later with [`cleanup_stale`].
    pub fn keep(mut self) {
        self.finished = true;
    }

    fn ip(&self, host: Host, args: &[&str]) -> Result<()> {
        run_command(Command::new("ip").args(["-n", self.ns(host)]).args(args))?;
        Ok(())
    }

    fn sysctls(&self, host: Host, settings: &[(&str, &str)]) -> Result<()> {
        in_netns(self.ns(host), || {
            settings.iter().try_for_each(|(k, v)| write_sysctl(k, v))
        })?
        .with_context(|| format!("sysctls in {}", self.ns(host)))
    }

    fn ethtool(&self, host: Host, args: &[&str]) -> Result<()> {
        let mut full = vec!["ethtool"];
        full.extend_from_slice(args);
        self.run(host, &full).map(drop)
    }

    fn build(&self) -> Result<()> {
        for host in Host::ALL {
            run_command(Command::new("ip").args(["netns", "add", self.ns(host)]))?;
            // Before the veths exist, so they inherit these as defaults: no DAD delay for any
            // IPv6 address (link-local included).
            self.sysctls(
                host,
                &[
                    ("net/ipv6/conf/all/accept_dad", "0"),
                    ("net/ipv6/conf/default/accept_dad", "0"),
                ],
            )?;
            self.ip(host, &["link", "set", "lo", "up"])?;
        }
        // New namespaces copy the IPv4 defaults of the root namespace, which may have
        // rp_filter on; the edge sees asymmetric paths once XDP redirects.
        self.sysctls(
            Host::Edge,
            &[
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
                ("net/ipv4/ip_forward", "1"),
            ],
        )?;

        let edge = self.ns(Host::Edge).to_owned();
        let links = [
            (
                Host::Client,
                EDGE_TO_CLIENT,
                CLIENT_V4,
                CLIENT_V6,
                EDGE_CLIENT_V4,
                EDGE_CLIENT_V6,
            ),
            (
                Host::Blue,
                EDGE_TO_BLUE,
                BLUE_V4,
                BLUE_V6,
                EDGE_BLUE_V4,
                EDGE_BLUE_V6,
            ),
            (
                Host::Green,
                EDGE_TO_GREEN,
                GREEN_V4,
                GREEN_V6,
                EDGE_GREEN_V4,
                EDGE_GREEN_V6,
            ),
        ];
        for (host, edge_if, v4, v6, edge_v4, edge_v6) in links {
            // Created directly inside both namespaces, so no name is ever taken in the root ns.
            run_command(Command::new("ip").args([
                "link",
                "add",
                edge_if,
                "netns",
                &edge,
                "type",
                "veth",
                "peer",
                "name",
                HOST_IF,
                "netns",
                self.ns(host),
            ]))?;
            for (h, dev, a4, a6) in [
                (host, HOST_IF, v4, v6),
                (Host::Edge, edge_if, edge_v4, edge_v6),
            ] {
                self.ip(h, &["addr", "add", &format!("{a4}/24"), "dev", dev])?;
                self.ip(
                    h,
                    &["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"],
                )?;
                self.ip(h, &["link", "set", dev, "up"])?;
            }
        }
        self.sysctls(
            Host::Edge,
            &[
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv4/conf/to-client/rp_filter", "0"),
                ("net/ipv4/conf/to-blue/rp_filter", "0"),
                ("net/ipv4/conf/to-green/rp_filter", "0"),
            ],
        )?;

        let (gw4, gw6) = (EDGE_CLIENT_V4.to_string(), EDGE_CLIENT_V6.to_string());
        for net in [VIP_NET_V4, BLUE_NET_V4, GREEN_NET_V4] {
            self.ip(Host::Client, &["route", "add", net, "via", &gw4])?;
        }
        for net in [VIP_NET_V6, BLUE_NET_V6, GREEN_NET_V6] {
            self.ip(Host::Client, &["-6", "route", "add", net, "via", &gw6])?;
        }
        for (host, gw4, gw6) in [
            (Host::Blue, EDGE_BLUE_V4, EDGE_BLUE_V6),
            (Host::Green, EDGE_GREEN_V4, EDGE_GREEN_V6),
        ] {
            self.ip(host, &["route", "add", "default", "via", &gw4.to_string()])?;
            self.ip(
                host,
                &["-6", "route", "add", "default", "via", &gw6.to_string()],
            )?;
        }

        // Local senders over veth otherwise hand out CHECKSUM_PARTIAL packets and receivers
        // never verify L4 checksums, hiding checksum bugs of the XDP rewrite.
        for host in [Host::Client, Host::Blue, Host::Green] {
            self.ethtool(host, &["-K", HOST_IF, "tx", "off"])?;
        }
        // XDP_REDIRECT into a veth is dropped unless the peer has GRO (or an XDP program).
        for host in [Host::Blue, Host::Green] {
            self.ethtool(host, &["-K", HOST_IF, "gro", "on"])?;
        }
        self.ethtool(Host::Edge, &["-K", EDGE_TO_CLIENT, "gro", "on"])?;
        Ok(())
    }

    fn verify(&self) -> Result<()> {
        let checks = [
            (Host::Client, EDGE_CLIENT_V4.to_string()),
            (Host::Client, EDGE_CLIENT_V6.to_string()),
            (Host::Edge, BLUE_V4.to_string()),
            (Host::Edge, BLUE_V6.to_string()),
            (Host::Edge, GREEN_V4.to_string()),
            (Host::Edge, GREEN_V6.to_string()),
        ];
        for (host, addr) in &checks {
            // A few tries: the first packet may wait for neighbour resolution.
            let mut last = None;
            for _ in 0..3 {
                match self.run(*host, &["ping", "-c1", "-W1", addr]) {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e.context(format!("ping from {} to {addr} failed", self.ns(*host))));
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("lab teardown: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 10
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 3 4 5 6 0 100 100 0 0 7 8
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 11 0 12 13 14 0 15 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
";
    const SNMP6: &str = "\
Ip6InReceives                   \t5
Udp6InDatagrams                 \t21
Udp6RcvbufErrors                \t22
Udp6InCsumErrors                \t23
";

    #[test]
    fn parses_snmp() -> Result<()> {
        let s = Snmp::parse(SNMP, SNMP6)?;
        assert_eq!(s.udp_in_datagrams, 11);
        assert_eq!(s.udp_in_errors, 12);
        assert_eq!(s.udp_rcvbuf_errors, 14);
        assert_eq!(s.udp_in_csum_errors, 15);
        assert_eq!(s.tcp_attempt_fails, 5);
        assert_eq!(s.tcp_estab_resets, 6);
        assert_eq!(s.tcp_out_rsts, 7);
        assert_eq!(s.tcp_in_csum_errors, 8);
        assert_eq!(s.udp6_in_datagrams, 21);
        assert_eq!(s.udp6_rcvbuf_errors, 22);
        assert_eq!(s.udp6_in_csum_errors, 23);
        assert_eq!(s.get("IpInReceives"), Some(10));
        assert_eq!(s.get("TcpMaxConn"), None);
        Ok(())
    }

    #[test]
    fn unique_prefixes_differ() {
        let a = Lab::unique_prefix("t-1");
        let b = Lab::unique_prefix("t-1");
        assert_ne!(a, b);
        assert!(a.starts_with("swt"));
        assert!(validate_prefix(&a).is_ok());
    }
}
