//! The topology drawn in the module docs of `lab` (mod.rs): [`Host`], one of its namespaces,
//! [`Node`], one ingest node of a backend host (an address of its own), and [`Lab`], which
//! builds and checks it, tracks what runs in it and tears it all down.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::addr::*;
use super::claim::{self, Claim, Turn};
use super::command::{require_tool, run_command};
#[cfg(doc)]
use super::netns::cleanup_stale;
use super::netns::{in_netns, remove_netns, require_root};
use super::proc::{lock, stop_all, Proc};
use super::snmp::Snmp;
use crate::privilege::notice;

/// One of the lab's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// One ingest node of a colour's environment: an address of its own (v4 and v6) on the
/// backend host's `eth0`. Node 0 is the host's main address ([`BLUE_V4`], [`GREEN_V4`]), node
/// `i` the `i`-th after it (198.18.1.3, ...; see [`node_v4`]). A lab has
/// [`Lab::nodes_per_colour`] of them on blue and on green.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// [`Host::Blue`] or [`Host::Green`].
    pub host: Host,
    pub index: usize,
}

impl Node {
    /// Node `index` of `host`; fails for the client and the edge, and from [`MAX_NODES`] on.
    pub fn new(host: Host, index: usize) -> Result<Node> {
        if !matches!(host, Host::Blue | Host::Green) {
            bail!(
                "only blue and green carry ingest nodes, not {}",
                host.name()
            );
        }
        if index >= MAX_NODES {
            bail!("node {index} of {}: at most {MAX_NODES} nodes", host.name());
        }
        Ok(Node { host, index })
    }

    pub fn v4(self) -> Ipv4Addr {
        node_v4(self.host.v4(), self.index)
    }

    pub fn v6(self) -> Ipv6Addr {
        node_v6(self.host.v6(), self.index)
    }

    /// `blue-0`, `green-2`, ...: for file names and reports.
    pub fn name(self) -> String {
        format!("{}-{}", self.host.name(), self.index)
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.v4())
    }
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

/// A running lab. See the module docs for the topology.
pub struct Lab {
    prefix: String,
    names: [String; 4],
    /// Ingest nodes on blue and on green each (addresses on the host's `eth0`).
    nodes: usize,
    procs: Mutex<Vec<Proc>>,
    /// Set once torn down (or handed over with [`Lab::keep`]), so Drop does nothing.
    finished: bool,
    /// This process owns the prefix while the lab exists (see the `claim` module).
    claim: Option<Claim>,
    /// One lab at a time on the machine; released when the lab is down or kept.
    turn: Option<Turn>,
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
    /// Builds the topology under `prefix` and checks connectivity. On error everything created
    /// is removed again.
    ///
    /// First it waits for its turn: labs run one at a time on the machine (across threads,
    /// test binaries and processes; the lab holds the turn until it is down or kept, and a
    /// thread that holds one may build more). Then it sweeps what labs of dead owners left
    /// (namespaces and what runs in them, pins, work folders; never a lab whose owner lives)
    /// and claims `prefix` for this process: a prefix a live process owns is refused, one left
    /// by a dead owner or a kept lab is taken over and what it left removed.
    pub fn up(prefix: &str) -> Result<Lab> {
        Lab::up_with_nodes(prefix, 1)
    }

    /// Like [`Lab::up`], with `nodes` ingest nodes on blue and on green each (1 to
    /// [`MAX_NODES`]): the extra ones are more addresses on the backend host's `eth0`
    /// (198.18.1.3, 2001:2:0:1::3, ...; see [`Node`]), each checked with a ping from the edge.
    pub fn up_with_nodes(prefix: &str, nodes: usize) -> Result<Lab> {
        require_root()?;
        validate_prefix(prefix)?;
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("a lab has 1 to {MAX_NODES} nodes per colour, not {nodes}");
        }
        require_tool("ip", "-V", "iproute2")?;
        require_tool("ethtool", "--version", "ethtool")?;
        require_tool("ping", "-V", "iputils-ping")?;
        let turn = claim::take_turn(prefix)?;
        match claim::sweep_stale() {
            Ok(swept) => {
                for line in swept {
                    notice(&format!("lab: removed what a dead run left: {line}"));
                }
            }
            // Not this lab's problem; say so and go on.
            Err(e) => notice(&format!("lab: {e:#}")),
        }
        let claim = Claim::take(prefix)?;
        let lab = Lab {
            prefix: prefix.to_owned(),
            names: Host::ALL.map(|h| format!("{prefix}-{}", h.name())),
            nodes,
            procs: Mutex::new(Vec::new()),
            finished: false,
            claim: Some(claim),
            turn: Some(turn),
        };
        // Ours now: whatever carries these names was left by a dead owner or a kept lab.
        let left = claim::remove_leftovers(prefix)
            .with_context(|| format!("removing what an earlier lab {prefix:?} left"))?;
        if !left.is_empty() {
            notice(&format!(
                "lab {prefix}: replaced an earlier lab: removed {}",
                left.join(", ")
            ));
        }
        // On error `lab` is dropped here, which deletes what was created.
        lab.build()
            .with_context(|| format!("setting up lab {prefix:?}"))?;
        lab.verify()
            .with_context(|| format!("lab {prefix:?} has no connectivity"))?;
        Ok(lab)
    }

    /// A prefix unique among live processes: `sw{tag}{pid}_{counter}` (the whole pid, so two
    /// running processes never collide). [`Lab::up`] claims it for this process, which is how a
    /// later run tells a dead owner's leftovers from a running lab. Keep `tag` to a few letters
    /// (non-letters are dropped, at most 6 kept) so names stay short and unambiguous.
    pub fn unique_prefix(tag: &str) -> String {
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphabetic)
            .take(6)
            .collect();
        let n = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("sw{tag}{}_{n}", std::process::id())
    }

    /// The lab's work folder by convention, `$TMPDIR/switcher-{prefix}` (not created here):
    /// removed by [`Lab::down`], and swept with the lab's leftovers if its owner dies.
    pub fn work_dir(&self) -> PathBuf {
        claim::work_dir(&self.prefix)
    }

    /// The bpffs folder for a daemon on this lab's edge by convention,
    /// `/sys/fs/bpf/switcher-{prefix}` (not created here): whatever is pinned there is removed
    /// by [`Lab::down`] (check it before, if it matters), and swept if the owner dies.
    pub fn bpffs_dir(&self) -> PathBuf {
        claim::bpffs_dir(&self.prefix)
    }

    /// The lab's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Ingest nodes on blue and on green each: 1 unless built with [`Lab::up_with_nodes`].
    pub fn nodes_per_colour(&self) -> usize {
        self.nodes
    }

    /// The ingest nodes of `host` (blue or green; none for the client and the edge), node 0
    /// first.
    pub fn nodes(&self, host: Host) -> Vec<Node> {
        match host {
            Host::Blue | Host::Green => (0..self.nodes).map(|index| Node { host, index }).collect(),
            Host::Client | Host::Edge => Vec::new(),
        }
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

    /// Stops every tracked process (SIGTERM, SIGKILL after 2 s), kills anything else left in
    /// the namespaces and deletes them, removes [`Lab::work_dir`] and [`Lab::bpffs_dir`], gives
    /// up the prefix and ends the lab's turn. Idempotent; Drop calls it too. If something
    /// could not be removed, the prefix's claim stays behind so that the next run sweeps it.
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
        // An Etcd of this lab dropped after it (or leaked) goes too: nothing of the prefix stays.
        for name in self
            .names
            .iter()
            .cloned()
            .chain(claim::extra_netns(&self.prefix))
        {
            if let Err(e) = remove_netns(&name) {
                errors.push(format!("{e:#}"));
            }
        }
        for dir in [self.bpffs_dir(), self.work_dir()] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("removing {}: {e}", dir.display())),
            }
        }
        if let Some(claim) = self.claim.take() {
            if errors.is_empty() {
                if let Err(e) = claim.release() {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        self.turn = None;
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down lab {}: {}", self.prefix, errors.join("; "))
        }
    }

    /// Leaves the lab (and anything spawned in it) running after this value is gone; for
    /// `cargo xtask lab up`. Its claim is marked kept, so sweeps leave it alone, and its turn
    /// ends (other labs may run). Remove it later with [`cleanup_stale`], or replace it with
    /// [`Lab::up`] and the same prefix.
    pub fn keep(mut self) {
        self.finished = true;
        if let Some(claim) = self.claim.take() {
            if let Err(e) = claim.keep() {
                notice(&format!("lab {}: marking it kept: {e:#}", self.prefix));
            }
        }
        self.turn = None;
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
        // More ingest nodes: more addresses on the backend's eth0, in its /24 and /64, so the
        // edge reaches them on the same link and they answer from their own address.
        for node in [Host::Blue, Host::Green]
            .into_iter()
            .flat_map(|h| self.nodes(h).into_iter().skip(1))
        {
            let (a4, a6) = (node.v4(), node.v6());
            self.ip(
                node.host,
                &["addr", "add", &format!("{a4}/24"), "dev", HOST_IF],
            )?;
            self.ip(
                node.host,
                &["addr", "add", &format!("{a6}/64"), "dev", HOST_IF, "nodad"],
            )?;
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
        let mut checks = vec![
            (Host::Client, EDGE_CLIENT_V4.to_string()),
            (Host::Client, EDGE_CLIENT_V6.to_string()),
            (Host::Edge, BLUE_V4.to_string()),
            (Host::Edge, BLUE_V6.to_string()),
            (Host::Edge, GREEN_V4.to_string()),
            (Host::Edge, GREEN_V6.to_string()),
        ];
        for node in [Host::Blue, Host::Green]
            .into_iter()
            .flat_map(|h| self.nodes(h).into_iter().skip(1))
        {
            checks.push((Host::Edge, node.v4().to_string()));
            checks.push((Host::Edge, node.v6().to_string()));
        }
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

    #[test]
    fn unique_prefixes_differ() {
        let a = Lab::unique_prefix("t-1");
        let b = Lab::unique_prefix("t-1");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("swt{}_", std::process::id())), "{a}");
        assert!(validate_prefix(&a).is_ok());
        assert_eq!(claim::test_prefix_form(&a), Some(claim::Form::Claimed));
        // The longest tag with the largest pid still fits.
        let long = format!("swabcdef{}_{}", 4_194_304, 999);
        assert!(validate_prefix(&long).is_ok(), "{long}");
    }

    #[test]
    fn nodes_follow_the_hosts_main_address() {
        let b = |i| Node::new(Host::Blue, i).expect("blue node");
        assert_eq!(b(0).v4(), BLUE_V4);
        assert_eq!(b(0).v6(), BLUE_V6);
        assert_eq!(b(2).v4().to_string(), "198.18.1.4");
        assert_eq!(b(2).v6().to_string(), "2001:2:0:1::4");
        let g = Node::new(Host::Green, MAX_NODES - 1).expect("last green node");
        assert_eq!(g.v4().to_string(), "198.18.2.65");
        assert_eq!(g.name(), "green-63");
        assert!(Node::new(Host::Green, MAX_NODES).is_err());
        assert!(Node::new(Host::Edge, 0).is_err());
    }
}
