//! A real etcd cluster for fleet tests: [`Etcd`], 1 or 3 members of Debian's `etcd` in a
//! namespace of their own, `{owner prefix}-etcd`, and the control net that joins lab edges to it.
//!
//! ```text
//! {prefix}-etcd ns: br0 198.19.0.1/24 (+ .2, .3): member i listens on 198.19.0.(1+i):2379/2380
//!     ├── lab0 ──veth── lab A's edge ns: ctl0 198.19.0.100/24   (Etcd::connect(&a, 0))
//!     └── lab1 ──veth── lab B's edge ns: ctl0 198.19.0.101/24   (Etcd::connect(&b, 1))
//! ```
//!
//! All members share the namespace (they reach each other locally, so they are never cut from
//! each other); [`Etcd::partition`] cuts one edge from all of them. The edge's only route into
//! 198.19.0.0/24 is the connected one of `ctl0`; nothing else on the edge changes (the daemon's
//! XDP program stays on `to-client`), and `ctl0` has IPv6 disabled so it adds no ICMPv6 chatter
//! to the edge's counters.
//!
//! Cleanup: [`Etcd::down`] (or Drop, also while a test panics) kills the members, deletes the
//! namespace (and with it every veth pair, `ctl0` included) and the members' data, which lives
//! under the owner's [`Lab::work_dir`]. The namespace carries the owner's prefix, so
//! [`Lab::down`] removes it too if the owner goes first, and a run that is killed leaves
//! nothing the next lab's sweep does not remove (the sweep knows the `-etcd` suffix and kills
//! what runs inside). Drop the `Etcd` before the `Lab`s it connects (declare it after them).
//!
//! The client helpers ([`Etcd::put`], [`Etcd::get_prefix`], ...) speak etcd's v3 JSON gateway
//! over a small HTTP/1.1 client inside the etcd namespace, so they work whatever is partitioned.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::addr::{
    control_v4, etcd_member_v4, CONTROL_IF, ETCD_CLIENT_PORT, ETCD_PEER_PORT, MAX_CONTROL_LABS,
    MAX_ETCD_MEMBERS,
};
use super::command::{require_tool, run_command};
use super::netns::{in_netns, netns_list, remove_netns};
use super::proc::{lock, Proc};
use super::topology::{Host, Lab};

/// How long [`Etcd::up`] and [`Etcd::start_member`] wait for `/health` to say true.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// One health probe; a member that takes longer is not healthy yet.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// One KV request: above etcd's own request timeout (5 s + 2 election timeouts), so a request
/// during an election comes back with etcd's error instead of ours.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP response read; KV answers of the tests are far smaller.
const MAX_RESPONSE: u64 = 16 << 20;
/// The bridge in the etcd namespace that carries the members' addresses and the edges' ports.
const BRIDGE: &str = "br0";
/// nftables table (netdev family) that [`Etcd::partition`] adds on both ends of a control link
/// (`_{index}` appended on the etcd end, where every edge has its own).
const PARTITION_TABLE: &str = "switcher_etcd_partition";

/// One key of a [`Etcd::get_prefix`] answer (key and value as UTF-8 text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    /// The lease id, 0 without one.
    pub lease: i64,
}

/// A running etcd cluster; see the module docs.
pub struct Etcd {
    ns: String,
    /// `{owner work dir}/etcd`: member `i`'s data dir is `m{i}` in it.
    data_root: PathBuf,
    /// Per member: its process while it runs.
    members: Vec<Option<Proc>>,
    /// Connected edges: edge namespace -> control-net index.
    links: Mutex<BTreeMap<String, usize>>,
    finished: bool,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("ns", &self.ns)
            .field("members", &self.members.len())
            .field("finished", &self.finished)
            .finish()
    }
}

impl Etcd {
    /// Starts a `members`-member cluster (1 or 3) in namespace `{owner prefix}-etcd` and waits
    /// until every member's `/health` says true. On error everything made is removed again.
    pub fn up(owner: &Lab, members: usize) -> Result<Etcd> {
        if members != 1 && members != MAX_ETCD_MEMBERS {
            bail!("an etcd cluster here has 1 or {MAX_ETCD_MEMBERS} members, not {members}");
        }
        require_tool("etcd", "--version", "etcd-server")?;
        let ns = format!("{}-etcd", owner.prefix());
        if netns_list()?.contains(&ns) {
            bail!("lab {} already has an etcd namespace {ns}", owner.prefix());
        }
        let mut etcd = Etcd {
            ns,
            data_root: owner.work_dir().join("etcd"),
            members: vec![None; members],
            links: Mutex::new(BTreeMap::new()),
            finished: false,
        };
        // On error `etcd` is dropped here, which removes what was made.
        etcd.build()
            .with_context(|| format!("setting up etcd in {}", etcd.ns))?;
        for i in 0..members {
            etcd.spawn_member(i)?;
        }
        let all: Vec<usize> = (0..members).collect();
        etcd.wait_healthy(&all, HEALTHY_TIMEOUT)?;
        Ok(etcd)
    }

    fn build(&self) -> Result<()> {
        match fs::remove_dir_all(&self.data_root) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing {}", self.data_root.display()))
            }
        }
        fs::create_dir_all(&self.data_root)
            .with_context(|| format!("creating {}", self.data_root.display()))?;
        run_command(Command::new("ip").args(["netns", "add", &self.ns]))?;
        // IPv4 only on the control net: no link-local addresses, no ICMPv6 chatter.
        sysctls(
            &self.ns,
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ],
        )?;
        self.ip(&["link", "set", "lo", "up"])?;
        self.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        for i in 0..self.members.len() {
            let addr = format!("{}/24", etcd_member_v4(i));
            self.ip(&["addr", "add", &addr, "dev", BRIDGE])?;
        }
        self.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(())
    }

    /// The etcd namespace's name, `{owner prefix}-etcd`.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Number of members (running or not).
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The client URL of every member, member 0 first (`http://198.19.0.1:2379`, ...).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| format!("http://{}", client_addr(i)))
            .collect()
    }

    /// Member `i`'s data dir (kept across [`Etcd::stop_member`] and [`Etcd::start_member`]).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.data_root.join(format!("m{i}"))
    }

    /// The pid of member `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.as_ref().map(Proc::pid)
    }

    /// Whether member `i`'s process runs (started and not exited).
    pub fn is_running(&self, i: usize) -> bool {
        match self.members.get(i) {
            Some(Some(p)) => matches!(p.try_wait(), Ok(None)),
            _ => false,
        }
    }

    /// Joins `lab`'s edge to the control net: a veth pair, `ctl0` 198.19.0.(100+index)/24 in the
    /// edge, its peer `lab{index}` a port of the etcd namespace's bridge. The connected route of
    /// `ctl0` is the edge's only way into 198.19.0.0/24; checked with a ping to member 0's
    /// address. Each lab once, each index once (below 100).
    pub fn connect(&self, lab: &Lab, index: usize) -> Result<()> {
        if index >= MAX_CONTROL_LABS {
            bail!("control net index {index}: at most {MAX_CONTROL_LABS} labs");
        }
        let edge = lab.ns(Host::Edge).to_owned();
        {
            let links = lock(&self.links);
            if links.contains_key(&edge) {
                bail!("{edge} is already connected to {}", self.ns);
            }
            if let Some((other, _)) = links.iter().find(|(_, i)| **i == index) {
                bail!("control net index {index} is taken by {other}");
            }
        }
        let port = port_name(index);
        // Created directly inside both namespaces, so no name is ever taken in the root ns.
        run_command(Command::new("ip").args([
            "link", "add", CONTROL_IF, "netns", &edge, "type", "veth", "peer", "name", &port,
            "netns", &self.ns,
        ]))
        .with_context(|| format!("joining {edge} to {}", self.ns))?;
        // From here on teardown removes the pair (with the etcd namespace) even if a step fails.
        lock(&self.links).insert(edge.clone(), index);
        let result = (|| -> Result<()> {
            sysctls(
                &edge,
                &[
                    (&format!("net/ipv6/conf/{CONTROL_IF}/disable_ipv6"), "1"),
                    (&format!("net/ipv4/conf/{CONTROL_IF}/rp_filter"), "0"),
                ],
            )?;
            sysctls(
                &self.ns,
                &[(&format!("net/ipv6/conf/{port}/disable_ipv6"), "1")],
            )?;
            let addr = format!("{}/24", control_v4(index));
            ip_in(&edge, &["addr", "add", &addr, "dev", CONTROL_IF])?;
            ip_in(&edge, &["link", "set", CONTROL_IF, "up"])?;
            self.ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
            // A few tries: the first packet waits for neighbour resolution.
            let target = etcd_member_v4(0).to_string();
            let mut last = None;
            for _ in 0..3 {
                match lab.run(Host::Edge, &["ping", "-c1", "-W1", &target]) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow!("no ping sent")))
                .with_context(|| format!("ping from {edge} to {target} over {CONTROL_IF}"))
        })();
        if let Err(e) = result {
            let _ = self.disconnect_ns(&edge);
            return Err(e.context(format!("connecting {edge} to {}", self.ns)));
        }
        Ok(())
    }

    /// Undoes [`Etcd::connect`]: heals, and deletes the veth pair.
    pub fn disconnect(&self, lab: &Lab) -> Result<()> {
        let edge = lab.ns(Host::Edge);
        if !lock(&self.links).contains_key(edge) {
            bail!("{edge} is not connected to {}", self.ns);
        }
        self.disconnect_ns(edge)
    }

    fn disconnect_ns(&self, edge: &str) -> Result<()> {
        let Some(index) = lock(&self.links).remove(edge) else {
            return Ok(());
        };
        let mut errors = Vec::new();
        // Without nft there was never a partition to heal.
        if require_tool("nft", "--version", "nftables").is_ok() {
            if let Err(e) = self.heal_ns(edge, index) {
                errors.push(format!("{e:#}"));
            }
        }
        // Deleting one end deletes both.
        if netns_list()?.iter().any(|n| n == edge) && link_exists(edge, CONTROL_IF)? {
            if let Err(e) = ip_in(edge, &["link", "del", CONTROL_IF]) {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("disconnecting {edge}: {}", errors.join("; "))
        }
    }

    /// Cuts `lab`'s edge from every member: an nftables netdev table on each end of the control
    /// link drops all IPv4 arriving there (ingress of `ctl0` in the edge, of `lab{index}` in the
    /// etcd namespace). Packets are dropped on receipt, never refused: nobody sends a RST or an
    /// ICMP error, and the senders' stacks see no local error (a drop on output would hand
    /// EPERM to some senders), so an established connection (a daemon's gRPC stream) really
    /// stalls and new connections hang in SYN_SENT until their timeouts. ARP still passes, so
    /// [`Etcd::heal`] works at once. Idempotent.
    pub fn partition(&self, lab: &Lab) -> Result<()> {
        require_tool("nft", "--version", "nftables")?;
        let (edge, index) = self.link_of(lab)?;
        self.heal_ns(&edge, index)?;
        for (ns, table, device) in self.cut_points(&edge, index) {
            let script = format!(
                "add table netdev {table}; \
                 add chain netdev {table} cut {{ type filter hook ingress device \"{device}\" priority -500; policy accept; }}; \
                 add rule netdev {table} cut meta protocol ip drop"
            );
            nft_in(&ns, &script)
                .with_context(|| format!("partitioning {edge} from {}", self.ns))?;
        }
        Ok(())
    }

    /// Undoes [`Etcd::partition`]. Idempotent.
    pub fn heal(&self, lab: &Lab) -> Result<()> {
        let (edge, index) = self.link_of(lab)?;
        self.heal_ns(&edge, index)
    }

    /// Where a partition of edge `index` drops: (namespace, nft table, ingress device) for the
    /// edge's end and for the etcd namespace's end (a table per edge there).
    fn cut_points(&self, edge: &str, index: usize) -> [(String, String, String); 2] {
        [
            (
                edge.to_owned(),
                PARTITION_TABLE.to_owned(),
                CONTROL_IF.to_owned(),
            ),
            (
                self.ns.clone(),
                format!("{PARTITION_TABLE}_{index}"),
                port_name(index),
            ),
        ]
    }

    fn heal_ns(&self, edge: &str, index: usize) -> Result<()> {
        let mut errors = Vec::new();
        for (ns, table, _) in self.cut_points(edge, index) {
            // `add` first makes the `delete` succeed whether or not the table exists.
            let script = format!("add table netdev {table}; delete table netdev {table}");
            if let Err(e) = nft_in(&ns, &script) {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("healing {edge}: {}", errors.join("; "))
        }
    }

    fn link_of(&self, lab: &Lab) -> Result<(String, usize)> {
        let edge = lab.ns(Host::Edge).to_owned();
        let index = lock(&self.links)
            .get(&edge)
            .copied()
            .with_context(|| format!("{edge} is not connected to {}", self.ns))?;
        Ok((edge, index))
    }

    /// SIGKILLs member `i` (no-op if it does not run); its data dir stays.
    pub fn stop_member(&mut self, i: usize) -> Result<()> {
        self.check_member(i)?;
        if let Some(proc) = self.members[i].take() {
            proc.kill_and_wait()
                .with_context(|| format!("killing etcd member {i}"))?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data dir (it rejoins the cluster) and waits until its
    /// `/health` says true. A running member is only waited for.
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        self.check_member(i)?;
        if !self.is_running(i) {
            self.members[i] = None;
            self.spawn_member(i)?;
        }
        self.wait_healthy(&[i], HEALTHY_TIMEOUT)
    }

    /// SIGKILLs every member.
    pub fn stop_all(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            self.stop_member(i)?;
        }
        Ok(())
    }

    /// Starts every member that does not run (all at once: a restarted cluster needs its
    /// quorum back before any member is healthy), then waits until all are healthy.
    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                self.members[i] = None;
                self.spawn_member(i)?;
            }
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_healthy(&all, HEALTHY_TIMEOUT)
    }

    fn check_member(&self, i: usize) -> Result<()> {
        if i >= self.members.len() {
            bail!("etcd member {i}: the cluster has {}", self.members.len());
        }
        Ok(())
    }

    fn spawn_member(&mut self, i: usize) -> Result<()> {
        let cmd = self.member_command(i);
        let proc =
            Proc::start(cmd).with_context(|| format!("starting etcd member {i} in {}", self.ns))?;
        self.members[i] = Some(proc);
        Ok(())
    }

    /// Leaves the cluster running after this process ends (`cargo xtask lab up --hosts`):
    /// each member is restarted on its data, detached, logging to `m{i}.log` next to its data
    /// folder, and nothing is torn down on drop. `cargo xtask lab down` removes it with the
    /// namespace (keep the owning lab too, or a later sweep takes it for a dead run's).
    pub fn keep(mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if let Some(p) = self.members[i].take() {
                p.kill_and_wait()?;
            }
            let log_path = self.data_root.join(format!("m{i}.log"));
            let log = fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let err = log.try_clone().context("duplicating the log handle")?;
            let mut cmd = self.member_command(i);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            cmd.stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .with_context(|| format!("starting etcd member {i} detached"))?;
        }
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        for i in 0..self.members.len() {
            while !self.health(i).unwrap_or(false) {
                if Instant::now() >= deadline {
                    bail!("detached etcd member {i} is not healthy within {HEALTHY_TIMEOUT:?}");
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        self.finished = true;
        Ok(())
    }

    fn member_command(&self, i: usize) -> Command {
        let n = self.members.len();
        let peer = |j: usize| format!("http://{}:{ETCD_PEER_PORT}", etcd_member_v4(j));
        let client = format!("http://{}", client_addr(i));
        let cluster = (0..n)
            .map(|j| format!("m{j}={}", peer(j)))
            .collect::<Vec<_>>()
            .join(",");
        let data_dir = self.data_dir(i);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcd"])
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer(i)])
            .args(["--initial-advertise-peer-urls", &peer(i)])
            // Read only on the first start; a restart on the same data dir rejoins.
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.ns])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        // ETCD_* variables of the caller's environment would configure the members too.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Waits until every member of `which` answers `GET /health` with health true.
    fn wait_healthy(&self, which: &[usize], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = which.to_vec();
        let mut last: BTreeMap<usize, String> = BTreeMap::new();
        loop {
            let mut still = Vec::new();
            for &i in &pending {
                let Some(proc) = &self.members[i] else {
                    bail!("etcd member {i} is not running");
                };
                if let Some(status) = proc.try_wait()? {
                    bail!(
                        "etcd member {i} exited ({status}) before it was healthy; stderr:\n{}",
                        proc.stderr_tail(20)
                    );
                }
                match self.health(i) {
                    Ok(true) => {}
                    Ok(false) => {
                        last.insert(i, "health false".to_owned());
                        still.push(i);
                    }
                    Err(e) => {
                        last.insert(i, format!("{e:#}"));
                        still.push(i);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let detail = pending
                    .iter()
                    .map(|&i| {
                        let tail = self.members[i]
                            .as_ref()
                            .map(|p| p.stderr_tail(15))
                            .unwrap_or_default();
                        format!(
                            "member {i} ({}): last {}; stderr:\n{tail}",
                            client_addr(i),
                            last.get(&i).map_or("no answer", String::as_str)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!(
                    "etcd in {} not healthy after {timeout:?}:\n{detail}",
                    self.ns
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Member `i`'s `GET /health` (3.4 says `{"health":"true"}`).
    fn health(&self, i: usize) -> Result<bool> {
        let resp = http_in(
            &self.ns,
            client_addr(i),
            "GET",
            "/health",
            "",
            HEALTH_PROBE_TIMEOUT,
        )?;
        if resp.status != 200 {
            return Ok(false);
        }
        let v: Value = serde_json::from_str(&resp.body)
            .with_context(|| format!("parsing /health answer {:?}", resp.body))?;
        Ok(matches!(&v["health"], Value::Bool(true)) || v["health"].as_str() == Some("true"))
    }

    /// POSTs `body` to the JSON gateway's `path` on the first running member that answers;
    /// a member that cannot be reached is skipped, an error answer returned.
    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let body = body.to_string();
        let mut errors = Vec::new();
        for i in (0..self.members.len()).filter(|&i| self.is_running(i)) {
            let addr = client_addr(i);
            let resp = match http_in(&self.ns, addr, "POST", path, &body, REQUEST_TIMEOUT) {
                Ok(resp) => resp,
                Err(e) => {
                    errors.push(format!("member {i}: {e:#}"));
                    continue;
                }
            };
            if resp.status != 200 {
                bail!(
                    "POST {path} {body} to {addr}: HTTP {}: {}",
                    resp.status,
                    resp.body.trim()
                );
            }
            return serde_json::from_str(&resp.body)
                .with_context(|| format!("parsing the answer to POST {path}: {:?}", resp.body));
        }
        if errors.is_empty() {
            bail!("POST {path}: no etcd member of {} runs", self.ns);
        }
        bail!("POST {path}: no member answered: {}", errors.join("; "))
    }

    /// Every key starting with `prefix` (all keys for ""), sorted by key.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>> {
        let (key, end) = if prefix.is_empty() {
            (vec![0], vec![0])
        } else {
            (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
        };
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": base64_encode(&key), "range_end": base64_encode(&end) }),
        )?;
        let Some(kvs) = v.get("kvs") else {
            return Ok(Vec::new());
        };
        kvs.as_array()
            .with_context(|| format!("kvs is not an array: {v}"))?
            .iter()
            .map(kv_of)
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("parsing range answer {v}"))
    }

    /// Puts `key` = `value`; returns the store's revision after it (the key's mod_revision).
    pub fn put(&self, key: &str, value: &str) -> Result<i64> {
        let v = self.call(
            "/v3/kv/put",
            &json!({ "key": base64_encode(key.as_bytes()), "value": base64_encode(value.as_bytes()) }),
        )?;
        header_revision(&v)
    }

    /// The store's current revision (a linearizable read).
    pub fn revision(&self) -> Result<i64> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": base64_encode(&[0]), "count_only": true }),
        )?;
        header_revision(&v)
    }

    /// Compacts the history up to `revision`, physically (returns once the data is gone).
    pub fn compact(&self, revision: i64) -> Result<()> {
        self.call(
            "/v3/kv/compaction",
            &json!({ "revision": revision, "physical": true }),
        )
        .with_context(|| format!("compacting {} at revision {revision}", self.ns))?;
        Ok(())
    }

    /// The index of the current leader, as the running members report it.
    pub fn leader(&self) -> Result<usize> {
        let mut ids = BTreeMap::new();
        let mut leader = None;
        for i in (0..self.members.len()).filter(|&i| self.is_running(i)) {
            let Ok(resp) = http_in(
                &self.ns,
                client_addr(i),
                "POST",
                "/v3/maintenance/status",
                "{}",
                REQUEST_TIMEOUT,
            ) else {
                continue;
            };
            if resp.status != 200 {
                continue;
            }
            let v: Value = serde_json::from_str(&resp.body)
                .with_context(|| format!("parsing status of member {i}: {:?}", resp.body))?;
            ids.insert(json_u64(&v["header"]["member_id"])?, i);
            let l = json_u64(&v["leader"])?;
            if l != 0 {
                leader = Some(l);
            }
        }
        let id = leader.with_context(|| format!("no member of {} knows a leader", self.ns))?;
        ids.get(&id)
            .copied()
            .with_context(|| format!("leader {id:x} is not a running member of {}", self.ns))
    }

    /// Kills the members, deletes the namespace (and every control link with it), removes the
    /// edges' partition tables and the data dirs. Idempotent; Drop calls it too.
    pub fn down(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let mut errors = Vec::new();
        for (i, proc) in self.members.iter_mut().enumerate() {
            if let Some(p) = proc.take() {
                if let Err(e) = p.kill_and_wait() {
                    errors.push(format!("killing etcd member {i}: {e:#}"));
                }
            }
        }
        let edges: Vec<String> = lock(&self.links).keys().cloned().collect();
        let existing = netns_list().unwrap_or_default();
        for edge in edges {
            // An edge whose lab is gone took its end of the pair with it.
            if !existing.contains(&edge) {
                lock(&self.links).remove(&edge);
                continue;
            }
            if let Err(e) = self.disconnect_ns(&edge) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = remove_netns(&self.ns) {
            errors.push(format!("{e:#}"));
        }
        match fs::remove_dir_all(&self.data_root) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", self.data_root.display())),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down etcd {}: {}", self.ns, errors.join("; "))
        }
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        ip_in(&self.ns, args)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("etcd teardown: {e:#}");
        }
    }
}

fn client_addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(etcd_member_v4(i), ETCD_CLIENT_PORT)
}

/// The etcd namespace's end of edge `index`'s control link.
fn port_name(index: usize) -> String {
    format!("lab{index}")
}

fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    run_command(Command::new("ip").args(["-n", ns]).args(args))?;
    Ok(())
}

fn link_exists(ns: &str, dev: &str) -> Result<bool> {
    let out = run_command(Command::new("ip").args(["-n", ns, "-o", "link", "show"]))?;
    Ok(out
        .lines()
        .any(|l| l.split(": ").nth(1).and_then(|name| name.split('@').next()) == Some(dev)))
}

fn nft_in(ns: &str, script: &str) -> Result<String> {
    run_command(Command::new("ip").args(["netns", "exec", ns, "nft", script]))
}

fn sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    in_netns(ns, || {
        settings.iter().try_for_each(|(k, v)| {
            let path = Path::new("/proc/sys").join(k);
            fs::write(&path, v).with_context(|| format!("writing {v} to {}", path.display()))
        })
    })?
    .with_context(|| format!("sysctls in {ns}"))
}

/// The smallest key above every key starting with `prefix` (etcd's `range_end` of a prefix
/// read): `prefix` with its last byte below 0xff incremented and the rest cut; `\0` (to the
/// end of the key space) if there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An int64/uint64 of the JSON gateway: a decimal string (as protobuf's JSON mapping writes
/// them), a number, or absent (0, omitted as the default).
fn json_i64(v: &Value) -> Result<i64> {
    match v {
        Value::Null => Ok(0),
        Value::String(s) => s.parse().with_context(|| format!("not an int64: {s:?}")),
        Value::Number(n) => n.as_i64().with_context(|| format!("not an int64: {n}")),
        other => bail!("not an int64: {other}"),
    }
}

fn json_u64(v: &Value) -> Result<u64> {
    match v {
        Value::Null => Ok(0),
        Value::String(s) => s.parse().with_context(|| format!("not a uint64: {s:?}")),
        Value::Number(n) => n.as_u64().with_context(|| format!("not a uint64: {n}")),
        other => bail!("not a uint64: {other}"),
    }
}

fn header_revision(v: &Value) -> Result<i64> {
    json_i64(&v["header"]["revision"]).with_context(|| format!("header.revision of {v}"))
}

fn kv_of(item: &Value) -> Result<Kv> {
    let text = |field: &str| -> Result<String> {
        let b64 = item.get(field).and_then(Value::as_str).unwrap_or("");
        String::from_utf8(base64_decode(b64)?).with_context(|| format!("{field} is not UTF-8"))
    };
    Ok(Kv {
        key: text("key")?,
        value: text("value")?,
        mod_revision: json_i64(&item["mod_revision"])?,
        lease: json_i64(&item["lease"])?,
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as etcd's JSON gateway writes keys and values.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional; the URL-safe letters are accepted too).
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let digits = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in digits.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => bail!("invalid base64 character {:?} in {text:?}", char::from(c)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        bail!("truncated base64 {text:?}");
    }
    Ok(out)
}

/// An HTTP answer: status and body (chunked transfer decoded).
#[derive(Debug)]
struct Response {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request from inside namespace `ns` (`Connection: close`), bounded by `timeout`
/// as a whole.
fn http_in(
    ns: &str,
    addr: SocketAddrV4,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Response> {
    in_netns(ns, || -> Result<Response> {
        let deadline = Instant::now() + timeout;
        let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_write_timeout(Some(timeout))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .with_context(|| format!("sending {method} {path} to {addr}"))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{method} {path} to {addr}: no complete answer within {timeout:?}");
            }
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.len() as u64 > MAX_RESPONSE {
                        bail!("{method} {path} to {addr}: answer above {MAX_RESPONSE} bytes");
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!("{method} {path} to {addr}: no complete answer within {timeout:?}")
                }
                Err(e) => return Err(e).with_context(|| format!("reading the answer from {addr}")),
            }
        }
        parse_response(&raw).with_context(|| format!("{method} {path} to {addr}"))
    })?
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the HTTP header")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .with_context(|| format!("body shorter than its Content-Length {n}"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        body: String::from_utf8(body).context("body is not UTF-8")?,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    // Each round consumes at least a size line, so this ends.
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line without end")?;
        let line = String::from_utf8_lossy(&rest[..eol]);
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).context("chunk shorter than its size")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).context("chunk without its CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_the_standard() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), coded);
            assert_eq!(
                base64_decode(coded).expect("valid base64"),
                plain.as_bytes()
            );
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(
            base64_decode(&base64_encode(&all)).expect("round trip"),
            all
        );
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
        assert!(base64_decode("Zm9v!").is_err());
        assert!(base64_decode("Z").is_err());
    }

    #[test]
    fn prefix_ends_cover_exactly_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn http_answers_parse_with_length_or_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let r = parse_response(plain).expect("plain answer");
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        let r = parse_response(chunked).expect("chunked answer");
        assert_eq!((r.status, r.body.as_str()), (503, "{\"a\":1}"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn gateway_integers_are_strings_or_numbers() {
        assert_eq!(json_i64(&json!("42")).expect("string"), 42);
        assert_eq!(json_i64(&json!(7)).expect("number"), 7);
        assert_eq!(json_i64(&Value::Null).expect("absent"), 0);
        assert!(json_i64(&json!("x")).is_err());
        let kv = kv_of(&json!({"key": "YS9i", "value": "dg==", "mod_revision": "9"})).expect("kv");
        assert_eq!(
            kv,
            Kv {
                key: "a/b".into(),
                value: "v".into(),
                mod_revision: 9,
                lease: 0
            }
        );
    }
}
