//! A lab with the full switcher stack running: reference ingest sinks on blue and green (UDP
//! 514 and TCP 601, IPv4 and IPv6, HTTP 8080), and the switcher daemon on the edge attached to
//! the client-facing interface. Used by the integration tests, the demo and the benchmarks.
//!
//! With [`Rig::up_nodes`] (or [`Rig::up_pools`]) each colour is an environment of several
//! ingest nodes ([`Node`]), each with a sink of its own on its own address (the reference sink,
//! or a real rsyslog) writing its own file: [`Rig::received_by_node`] and
//! [`Rig::streams_by_node`] say which node got which line, [`Rig::received`] still sums them
//! per colour.
//!
//! The rig holds the daemon to what README promises about stopping it: a daemon stopped with
//! SIGTERM without `--keep-attached` must leave no pin behind ([`Rig::stop_daemon`] fails, and
//! so does dropping the rig, if it does), one stopped with `--keep-attached` must leave the
//! links pinned. Only pins a test left on purpose (`--keep-attached`, [`Rig::kill_daemon`]) are
//! removed silently at the end.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use switcher::{
    api::{self, Request},
    controller::StatusView,
    datapath::{self, FlipOutcome},
    domain::Color,
};

pub use crate::lab::EDGE_TO_CLIENT;
use crate::lab::{Host, Lab, Node, Proc, RsyslogExtras};
use crate::poll;

pub use crate::services::{
    gelf_services, pool_services, standard_services, GELF_PORT, GELF_PORT_2, HTTP_PORT, RELP_PORT,
    RSYSLOG_HEALTH, SHADOW_PORT, STANDARD_CHECKS, TCP_PORT, UDP_PORT,
};

/// How often the sinks' output files are read while waiting: each read parses whole files,
/// which should not load the machine the traffic tests measure.
const SINK_POLL: Duration = Duration::from_millis(100);

/// Where the project's binaries are: next to the running executable (target/<profile>/, or
/// its deps/ folder for tests), unless SWITCHER_BIN_DIR says otherwise.
pub fn bin(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("SWITCHER_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().context("locating the running executable")?;
            let mut dir = exe
                .parent()
                .context("executable has no folder")?
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} not found: build it first (`cargo build -p switcher-userspace -p switcher-tests --bins`; `cargo xtask test` does)",
            p.display()
        );
    }
    Ok(p)
}

/// What a daemon the rig starts does when it is stopped with SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// No flag: it detaches and unpins everything.
    Detach,
    /// `--keep-attached`: it leaves the datapath attached and pinned for the next daemon.
    KeepAttached,
}

/// What serves each ingest node of a rig built with [`Rig::up_nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSinks {
    /// The reference `ingest-sink` on the node's addresses: UDP 514, TCP 601 (acknowledging),
    /// HTTP 8080 (health, metrics), as the standard sinks; validations can run against it.
    Reference,
    /// A real rsyslog bound to the node's addresses, imudp and imtcp on 514 and 601 (no HTTP:
    /// probe its health over TCP, [`RSYSLOG_HEALTH`]).
    Rsyslog,
}

/// The XDP and TC links pinned for the edge's client-facing interface: link and program ids
/// (`bpftool link show pinned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedLinks {
    pub xdp_link: u64,
    pub xdp_prog: u64,
    pub tc_link: u64,
    pub tc_prog: u64,
    /// TC ingress (the shadow program).
    pub shadow_link: u64,
    pub shadow_prog: u64,
}

pub struct Rig {
    pub lab: Lab,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub config: PathBuf,
    daemon: Option<Proc>,
    /// How the current (or next) daemon is started.
    on_stop: OnStop,
    /// Whatever is pinned now was left on purpose (kill -9, a stop with --keep-attached) or
    /// was already reported, and no daemon has taken it over since: removing it at the end is
    /// cleanup, not a hidden failure.
    pins_accounted_for: bool,
    /// None: one reference sink per colour, on the host's main address ([`Rig::sink_file`]).
    /// Some: a sink per ingest node ([`Rig::node_file`]).
    node_sinks: Option<NodeSinks>,
    /// The running sink of each node (per-node rigs).
    node_procs: std::sync::Mutex<BTreeMap<Node, Proc>>,
    /// What every node's rsyslog takes besides imudp and imtcp ([`Rig::start_node`]).
    rsyslog: RsyslogExtras,
    /// A command the daemon runs under (e.g. `setpriv ...`), set by [`Rig::set_daemon_prefix`].
    daemon_prefix: Vec<String>,
}

impl Rig {
    /// Brings up a lab named after `tag`, starts both sinks and the daemon with `services`
    /// (`[[service]]` TOML); the daemon detaches on SIGTERM.
    pub fn up(tag: &str, services: &str) -> Result<Rig> {
        Rig::up_with(tag, services, OnStop::Detach)
    }

    /// Like [`Rig::up`], with the daemon started as `on_stop` says.
    pub fn up_with(tag: &str, services: &str, on_stop: OnStop) -> Result<Rig> {
        Rig::build(tag, services, on_stop, 1, None, RsyslogExtras::default())
    }

    /// A lab with `nodes` ingest nodes per colour ([`Lab::up_with_nodes`]), a sink of kind
    /// `sinks` on every node, and the daemon with `services` (usually [`pool_services`] over
    /// [`Rig::nodes`]); the daemon detaches on SIGTERM.
    pub fn up_nodes(tag: &str, services: &str, nodes: usize, sinks: NodeSinks) -> Result<Rig> {
        Rig::build(
            tag,
            services,
            OnStop::Detach,
            nodes,
            Some(sinks),
            RsyslogExtras {
                relp_port: Some(RELP_PORT),
                ..RsyslogExtras::default()
            },
        )
    }

    /// Issue 16's lab: `nodes_per_colour` nodes on blue and on green, each running its own real
    /// rsyslog ([`NodeSinks::Rsyslog`]), and the daemon with `services`.
    pub fn up_pools(tag: &str, services: &str, nodes_per_colour: usize) -> Result<Rig> {
        Rig::up_nodes(tag, services, nodes_per_colour, NodeSinks::Rsyslog)
    }

    /// [`Rig::up_pools`] with every node's rsyslog also taking `extras` (e.g. a TLS input;
    /// RELP on [`RELP_PORT`] unless `extras` says otherwise).
    pub fn up_pools_with(
        tag: &str,
        services: &str,
        nodes_per_colour: usize,
        extras: RsyslogExtras,
    ) -> Result<Rig> {
        let extras = RsyslogExtras {
            relp_port: extras.relp_port.or(Some(RELP_PORT)),
            ..extras
        };
        Rig::build(
            tag,
            services,
            OnStop::Detach,
            nodes_per_colour,
            Some(NodeSinks::Rsyslog),
            extras,
        )
    }

    fn build(
        tag: &str,
        services: &str,
        on_stop: OnStop,
        nodes: usize,
        node_sinks: Option<NodeSinks>,
        rsyslog: RsyslogExtras,
    ) -> Result<Rig> {
        let lab = Lab::up_with_nodes(&Lab::unique_prefix(tag), nodes)?;
        let dir = lab.work_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bpffs = lab.bpffs_dir();
        let socket = dir.join("switcher.sock");
        let config = dir.join("switcher.toml");
        let text = crate::services::lab_config(EDGE_TO_CLIENT, &bpffs, &dir, services);
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let mut rig = Rig {
            lab,
            dir,
            socket,
            bpffs,
            config,
            daemon: None,
            on_stop,
            pins_accounted_for: false,
            node_sinks,
            node_procs: std::sync::Mutex::new(BTreeMap::new()),
            rsyslog,
            daemon_prefix: Vec::new(),
        };
        if node_sinks.is_some() {
            for node in rig.all_nodes() {
                rig.start_node(node)?;
            }
        } else {
            for host in [Host::Blue, Host::Green] {
                rig.start_sink(host)?;
            }
        }
        rig.start_daemon()?;
        Ok(rig)
    }

    /// The ingest nodes of `host` (blue or green), node 0 first.
    pub fn nodes(&self, host: Host) -> Vec<Node> {
        self.lab.nodes(host)
    }

    /// Every ingest node, blue's then green's.
    pub fn all_nodes(&self) -> Vec<Node> {
        let mut v = self.nodes(Host::Blue);
        v.extend(self.nodes(Host::Green));
        v
    }

    /// Starts the sink of `node` (again, after [`Rig::stop_node`]) on a rig built with
    /// [`Rig::up_nodes`]; returns once it listens. It appends to [`Rig::node_file`]. A node's
    /// rsyslog also takes RELP on [`RELP_PORT`] (and what the rig was built with).
    pub fn start_node(&self, node: Node) -> Result<()> {
        self.start_node_with(node, &self.rsyslog.clone())
    }

    /// [`Rig::start_node`] with `extras` for a node running rsyslog (e.g. a main queue that
    /// cannot keep up); ignored for the reference sink.
    pub fn start_node_with(&self, node: Node, extras: &RsyslogExtras) -> Result<()> {
        let Some(kind) = self.node_sinks else {
            bail!("this rig has one sink per colour, not per node");
        };
        let mut procs = self.node_procs.lock().unwrap_or_else(|p| p.into_inner());
        if procs.contains_key(&node) {
            bail!("the sink of {node} is running already");
        }
        let out = self.node_file(node);
        let proc = match kind {
            NodeSinks::Reference => {
                let args = crate::services::node_sink_args(node, &out);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.lab.spawn_ready(
                    node.host,
                    &bin("ingest-sink")?.display().to_string(),
                    &args,
                    "READY",
                    Duration::from_secs(10),
                )?
            }
            NodeSinks::Rsyslog => self.lab.start_rsyslog_at(
                node.host,
                &[node.v4().into(), node.v6().into()],
                &[UDP_PORT, TCP_PORT],
                extras,
                &out,
                &self.dir.join(format!("rsyslog-{}", node.name())),
            )?,
        };
        procs.insert(node, proc);
        Ok(())
    }

    /// Sends `signal` to the sink of `node` (e.g. SIGSTOP to freeze it, SIGCONT to thaw it).
    pub fn signal_node(&self, node: Node, signal: nix::sys::signal::Signal) -> Result<()> {
        let procs = self.node_procs.lock().unwrap_or_else(|p| p.into_inner());
        let proc = procs
            .get(&node)
            .with_context(|| format!("no sink of {node} is running"))?;
        let pid = i32::try_from(proc.pid()).context("pid out of range")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to the sink of {node}"))
    }

    /// Stops the sink of `node` (SIGTERM: rsyslog flushes its file first), e.g. to take a
    /// member down for good; [`Rig::start_node`] brings it back.
    pub fn stop_node(&self, node: Node) -> Result<()> {
        let proc = self
            .node_procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node)
            .with_context(|| format!("no sink of {node} is running"))?;
        proc.stop()?;
        Ok(())
    }

    fn start_sink(&self, host: Host) -> Result<Proc> {
        let args = crate::services::sink_args(host, &self.sink_file(host));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let sink = bin("ingest-sink")?;
        self.lab.spawn_ready(
            host,
            &sink.display().to_string(),
            &args,
            "READY",
            Duration::from_secs(10),
        )
    }

    /// Starts the daemon on the edge (again, after [`Rig::stop_daemon`] or
    /// [`Rig::kill_daemon`]), with the rig's current [`OnStop`]; returns once it printed READY.
    /// A daemon started over pins left behind adopts them.
    ///
    /// Enters only the network namespace (nsenter), not `ip netns exec`'s private mount
    /// namespace: that one gets its own /sys, so the daemon's bpffs pins would vanish with
    /// the process and a restarted daemon could not adopt the datapath.
    pub fn start_daemon(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            bail!("a daemon is already running; stop it first");
        }
        let sw = bin("switcher")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.lab.ns(Host::Edge)))
            .args(&self.daemon_prefix)
            .arg(&sw)
            .args(["daemon", "--config"])
            .arg(&self.config);
        if self.on_stop == OnStop::KeepAttached {
            cmd.arg("--keep-attached");
        }
        let p = self.lab.spawn_command(cmd)?;
        // From here on the pins belong to this daemon, whatever it does with them.
        self.pins_accounted_for = false;
        if let Err(e) = p.wait_for_stdout(|l| l.starts_with("READY"), Duration::from_secs(30)) {
            let tail = p.stderr_tail(20);
            let _ = p.stop();
            // Reported here; what it may have pinned is cleaned up without a second report.
            self.pins_accounted_for = true;
            return Err(e.context(format!("switcher daemon did not start: {tail}")));
        }
        self.daemon = Some(p);
        Ok(())
    }

    /// Daemons started from now on run under `prefix` (a command that execs the rest of its
    /// arguments, e.g. `setpriv --bounding-set ...` or `perf trace ... --`), inside the edge's
    /// network namespace.
    pub fn set_daemon_prefix(&mut self, prefix: &[&str]) {
        self.daemon_prefix = prefix.iter().map(|a| (*a).to_string()).collect();
    }

    /// Sets how daemons started from now on stop, then starts one ([`Rig::start_daemon`]).
    pub fn start_daemon_with(&mut self, on_stop: OnStop) -> Result<()> {
        self.on_stop = on_stop;
        self.start_daemon()
    }

    /// How the current (or next) daemon stops.
    pub fn on_stop(&self) -> OnStop {
        self.on_stop
    }

    /// SIGTERM to the daemon; waits for it to exit, and checks what it left: nothing at all
    /// ([`OnStop::Detach`]: any pin left is an error), or the pinned links
    /// ([`OnStop::KeepAttached`]: missing link pins are an error).
    pub fn stop_daemon(&mut self) -> Result<()> {
        let Some(d) = self.daemon.take() else {
            return Ok(());
        };
        let st = d.stop()?;
        if !st.success() {
            // Killed after the grace period, or failed: it may have left anything.
            self.pins_accounted_for = true;
            bail!("daemon exited with {st}: {}", d.stderr_tail(20));
        }
        match self.on_stop {
            OnStop::Detach => {
                let left = self.pins_left()?;
                if !left.is_empty() {
                    self.pins_accounted_for = true;
                    bail!(
                        "the daemon was stopped (SIGTERM) without --keep-attached but left pins: {}; its log:\n{}",
                        left.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" "),
                        d.stderr_tail(10)
                    );
                }
            }
            OnStop::KeepAttached => {
                self.pins_accounted_for = true;
                let links = datapath::pins_dir(&self.bpffs).join("links");
                for kind in ["xdp", "tc"] {
                    let pin = links.join(format!("{kind}-{EDGE_TO_CLIENT}"));
                    if !pin.exists() {
                        bail!(
                            "the daemon was stopped with --keep-attached but {} is gone; its log:\n{}",
                            pin.display(),
                            d.stderr_tail(10)
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// `kill -9` of the daemon, as a crash would: nothing is cleaned up.
    pub fn kill_daemon(&mut self) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            self.pins_accounted_for = true;
            let pid = i32::try_from(d.pid()).context("daemon pid out of range")?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .context("kill -9 daemon")?;
            d.wait_timeout(Duration::from_secs(5))?
                .context("daemon did not die after SIGKILL")?;
        }
        Ok(())
    }

    pub fn daemon(&self) -> Option<&Proc> {
        self.daemon.as_ref()
    }

    /// Every file pinned under the rig's bpffs folder (empty when the folder is gone).
    pub fn pins_left(&self) -> Result<Vec<PathBuf>> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
            };
            for e in entries {
                let e = e.with_context(|| format!("listing {}", dir.display()))?;
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&path, out)?;
                } else {
                    out.push(path);
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&self.bpffs, &mut out)?;
        out.sort();
        Ok(out)
    }

    /// The pinned XDP and TC links of the client-facing interface and the programs inside
    /// them, from `bpftool link show pinned` (an upgrade swaps the program, keeps the link).
    pub fn pinned_links(&self) -> Result<PinnedLinks> {
        let links = datapath::pins_dir(&self.bpffs).join("links");
        let show = |kind: &str| -> Result<(u64, u64)> {
            let pin = links.join(format!("{kind}-{EDGE_TO_CLIENT}"));
            let out = Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(&pin)
                .output()
                .context("running bpftool (Debian package bpftool)")?;
            if !out.status.success() {
                bail!(
                    "bpftool link show pinned {}: {}",
                    pin.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
            let id = |k: &str| {
                v[k].as_u64()
                    .with_context(|| format!("no {k} in bpftool's answer {v}"))
            };
            Ok((id("id")?, id("prog_id")?))
        };
        let (xdp_link, xdp_prog) = show("xdp")?;
        let (tc_link, tc_prog) = show("tc")?;
        let (shadow_link, shadow_prog) = show("tc-ingress")?;
        Ok(PinnedLinks {
            xdp_link,
            xdp_prog,
            tc_link,
            tc_prog,
            shadow_link,
            shadow_prog,
        })
    }

    /// `bpftool net show` inside the edge: the programs attached there (XDP; tcx only with a
    /// bpftool newer than Debian 12's 7.1).
    pub fn edge_programs(&self) -> Result<String> {
        self.lab.run(Host::Edge, &["bpftool", "net", "show"])
    }

    /// Whether the datapath may redirect to the edge's interface `ifname`: its ifindex is in
    /// the REDIRECT_OK map the daemon refreshes every 2 s.
    pub fn redirect_ok(&self, ifname: &str) -> Result<bool> {
        let out = self
            .lab
            .run(Host::Edge, &["ip", "-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
        let ifindex = v[0]["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("no ifindex for {ifname} in {out}"))?;
        let path = datapath::maps_dir(&self.bpffs).join(switcher_common::names::REDIRECT_OK);
        let data = aya::maps::MapData::from_pin(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let map = aya::maps::Map::from_map_data(data).context("REDIRECT_OK")?;
        let map: aya::maps::HashMap<_, u32, u32> =
            aya::maps::HashMap::try_from(map).context("REDIRECT_OK is a hash map")?;
        match map.get(&ifindex, 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e).context("reading REDIRECT_OK"),
        }
    }

    /// Runs the real `switcher` CLI against this rig's daemon (`--socket`) with `args`:
    /// (its pid, its output). Fails when it cannot be started, not when it exits non-zero.
    pub fn cli(&self, args: &[&str]) -> Result<(u32, std::process::Output)> {
        let child = Command::new(bin("switcher")?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting the switcher CLI")?;
        let pid = child.id();
        let out = child
            .wait_with_output()
            .context("waiting for the switcher CLI")?;
        Ok((pid, out))
    }

    /// Stops the daemon (see [`Rig::stop_daemon`]) and tears everything down, reporting
    /// what went wrong. Dropping the rig does the same and panics on a problem.
    pub fn down(mut self) -> Result<()> {
        let problems = self.teardown();
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("rig {}: {}", self.lab.prefix(), problems.join("; "))
        }
    }

    /// Idempotent; returns the problems found.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.daemon.is_some() {
            if let Err(e) = self.stop_daemon() {
                problems.push(format!("{e:#}"));
            }
        } else if !self.pins_accounted_for {
            // E.g. a daemon that failed to start, or exited on its own, and left pins.
            match self.pins_left() {
                Ok(left) if !left.is_empty() => problems.push(format!(
                    "pins left behind with no daemon running, not on purpose: {left:?}"
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!("{e:#}")),
            }
            self.pins_accounted_for = true;
        }
        // What is left now was left on purpose, or already reported above.
        if let Ok(entries) = std::fs::read_dir(&self.bpffs) {
            for e in entries.flatten() {
                if let Err(e) = datapath::remove_pins(&e.path()) {
                    problems.push(format!("{e:#}"));
                }
            }
        }
        let _ = std::fs::remove_dir(&self.bpffs);
        if let Err(e) = self.lab.down() {
            problems.push(format!("lab down: {e:#}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        problems
    }

    pub fn sink_file(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.log", host.name()))
    }

    /// The file the sink of `node` writes (rigs built with [`Rig::up_nodes`]; on the others,
    /// node 0's is its colour's [`Rig::sink_file`]).
    pub fn node_file(&self, node: Node) -> PathBuf {
        match self.node_sinks {
            Some(_) => self.dir.join(format!("{}.log", node.name())),
            None => self.sink_file(node.host),
        }
    }

    /// The sink files of `host`'s colour: its one sink's, or each node's.
    fn colour_files(&self, host: Host) -> Vec<PathBuf> {
        match self.node_sinks {
            Some(_) => self
                .nodes(host)
                .into_iter()
                .map(|n| self.node_file(n))
                .collect(),
            None => vec![self.sink_file(host)],
        }
    }

    /// Rewrites the daemon's config with `services` (the daemon reads it on `switcher reload`
    /// or SIGHUP).
    pub fn set_services(&self, services: &str) -> Result<()> {
        let text = crate::services::lab_config(EDGE_TO_CLIENT, &self.bpffs, &self.dir, services);
        // Whole or not at all: a reload racing this write must not read half a file.
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.config)
            .with_context(|| format!("replacing {}", self.config.display()))
    }

    pub fn flip(&self, service: &str, to: Color) -> Result<FlipOutcome> {
        let v = self.call(&Request::Flip {
            service: service.into(),
            to,
            force: false,
            reason: None,
            local: false,
        })?;
        serde_json::from_value(v).context("decoding flip reply")
    }

    pub fn status(&self) -> Result<StatusView> {
        serde_json::from_value(self.call(&Request::Status { service: None })?)
            .context("decoding status")
    }

    /// Changes a sink's injected faults (POST /fault on its HTTP port), e.g.
    /// `{"health_ok": false}`, `{"ack_delay_ms": 50}`, `{"errors_per_sec": 20}`.
    pub fn fault(&self, host: Host, body: &str) -> Result<()> {
        let url = format!("http://{}:{HTTP_PORT}/fault", host.v4());
        let (status, reply) = self.http("POST", &url, None, Some(body))?;
        if status != 200 {
            bail!("POST {url}: {status} {reply}");
        }
        Ok(())
    }

    /// One HTTP request from the edge host (where the daemon's listener and the backends are
    /// reachable): (status, body). Any status is returned; transport failures are errors.
    pub fn http(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        let (method, url) = (method.to_string(), url.to_string());
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let body = body.map(str::to_string);
        crate::lab::in_netns(self.lab.ns(Host::Edge), move || -> Result<(u16, String)> {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .http_status_as_error(false)
                .build()
                .into();
            let mut resp = match method.as_str() {
                "GET" => {
                    let mut r = agent.get(&url);
                    if let Some(a) = &auth {
                        r = r.header("Authorization", a);
                    }
                    r.call()
                }
                _ => {
                    let mut r = agent.post(&url).header("Content-Type", "application/json");
                    if let Some(a) = &auth {
                        r = r.header("Authorization", a);
                    }
                    r.send(body.unwrap_or_default())
                }
            }
            .with_context(|| format!("{method} {url}"))?;
            let status = resp.status().as_u16();
            let text = resp
                .body_mut()
                .read_to_string()
                .with_context(|| format!("reading the reply to {method} {url}"))?;
            Ok((status, text))
        })?
    }

    /// The daemon's HTTP listener, as the edge host sees it.
    pub fn web_url(&self, path: &str) -> String {
        format!("http://{}{path}", crate::services::WEB_LISTEN)
    }

    /// `/metrics` of the daemon.
    pub fn metrics(&self) -> Result<String> {
        let (status, text) = self.http("GET", &self.web_url("/metrics"), None, None)?;
        if status != 200 {
            bail!("GET /metrics: {status} {text}");
        }
        Ok(text)
    }

    /// The token the daemon generated for the dashboard's actions.
    pub fn web_token(&self) -> Result<String> {
        let path = self.dir.join("state").join("http.token");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    }

    /// Any API request.
    pub fn call(&self, req: &Request) -> Result<serde_json::Value> {
        api::call_with_timeout(&self.socket, req, Duration::from_secs(120))
    }

    /// Starts log-sender on the client. `args` are its flags after the target.
    pub fn send(&self, target: &str, args: &[&str]) -> Result<Proc> {
        let sender = bin("log-sender")?;
        let mut all = vec!["--target", target];
        all.extend_from_slice(args);
        self.lab
            .spawn(Host::Client, &sender.display().to_string(), &all)
    }

    /// A real rsyslog shipper on the client: a forwarder ([`crate::lab::Forwarder`]) sending
    /// over `shipping` to the IPv4 VIP at `port`, fed by log-sender over TCP on the client's
    /// 127.0.0.1:`input_port` with `count` lines of `stream` at `rate` per second (bounded to
    /// 60 s). Returns (forwarder, sender).
    pub fn ship(
        &self,
        shipping: crate::lab::Shipping,
        port: u16,
        input_port: u16,
        stream: &str,
        count: u64,
        rate: u64,
    ) -> Result<(Proc, Proc)> {
        let input = std::net::SocketAddr::from(([127, 0, 0, 1], input_port));
        let fwd = self.lab.start_forwarder(
            Host::Client,
            &crate::lab::Forwarder {
                input,
                target: std::net::SocketAddr::new(crate::lab::VIP_V4.into(), port),
                shipping,
            },
            &self.dir.join(format!("forwarder-{stream}")),
        )?;
        let sender = self.send_lines(&input.to_string(), "tcp", stream, count, rate, &[])?;
        Ok((fwd, sender))
    }

    /// `count` numbered lines named `stream` at `rate` per second to the IPv4 VIP over `proto`
    /// ("udp" or "tcp": one connection), from the client; bounded to 60 s.
    pub fn stream(&self, proto: &str, stream: &str, count: u64, rate: u64) -> Result<Proc> {
        let port = if proto == "udp" { UDP_PORT } else { TCP_PORT };
        let target = format!("{}:{port}", crate::lab::VIP_V4);
        self.send_lines(&target, proto, stream, count, rate, &[])
    }

    /// log-sender on the client: `count` numbered lines of `stream` at `rate` per second to
    /// `target` over `proto` (`udp`, `tcp`, `gelf`), bounded to 60 s; `extra` flags follow.
    pub fn send_lines(
        &self,
        target: &str,
        proto: &str,
        stream: &str,
        count: u64,
        rate: u64,
        extra: &[&str],
    ) -> Result<Proc> {
        let (count, rate) = (count.to_string(), rate.to_string());
        let mut args = vec![
            "--proto",
            proto,
            "--count",
            &count,
            "--rate",
            &rate,
            "--stream",
            stream,
            "--max-seconds",
            "60",
        ];
        args.extend_from_slice(extra);
        self.send(target, &args)
    }

    /// Waits until the sinks together hold `expected` lines of `stream` (or `timeout`), then
    /// returns the sequence numbers each colour received (also when fewer arrived: the caller
    /// checks what is missing).
    pub fn wait_stream(
        &self,
        stream: &str,
        expected: usize,
        timeout: Duration,
    ) -> Result<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.received(stream)?;
            if r.blue.len() + r.green.len() >= expected || Instant::now() >= deadline {
                return Ok(r);
            }
            std::thread::sleep(SINK_POLL);
        }
    }

    /// Waits until what the sinks received of `stream` satisfies `cond` (e.g. "green has 500
    /// lines"); fails after `timeout`, showing the counts. `what` names the condition.
    pub fn wait_received(
        &self,
        stream: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Received) -> bool,
    ) -> Result<Received> {
        poll::until_state_every(what, timeout, SINK_POLL, || {
            let r = self.received(stream)?;
            Ok(if cond(&r) {
                Ok(r)
            } else {
                Err(format!(
                    "stream {stream}: blue {} lines, green {}",
                    r.blue.len(),
                    r.green.len()
                ))
            })
        })
    }

    /// The sequence numbers of `stream` each colour received (on a per-node rig, summed over
    /// its nodes, node by node).
    pub fn received(&self, stream: &str) -> Result<Received> {
        let colour = |host| -> Result<Vec<u64>> {
            let mut all = Vec::new();
            for f in self.colour_files(host) {
                all.extend(seqs(&f, stream)?);
            }
            Ok(all)
        };
        Ok(Received {
            blue: colour(Host::Blue)?,
            green: colour(Host::Green)?,
        })
    }

    /// The sequence numbers of `stream` each node received (every node of both colours is a
    /// key, also one that got nothing).
    pub fn received_by_node(&self, stream: &str) -> Result<BTreeMap<Node, Vec<u64>>> {
        self.all_nodes()
            .into_iter()
            .map(|n| Ok((n, seqs(&self.node_file(n), stream)?)))
            .collect()
    }

    /// Every stream whose name starts with `prefix` (e.g. log-sender's `NAME-cK`, one per
    /// connection, or [`crate::lab::Flows`]' `NAME-pPORT`, one per source port): stream →
    /// node → the sequence numbers that node received. Each file is read once.
    pub fn streams_by_node(&self, prefix: &str) -> Result<BTreeMap<String, ByNode>> {
        let mut out: BTreeMap<String, ByNode> = BTreeMap::new();
        for node in self.all_nodes() {
            for (stream, seq) in stream_seqs(&self.node_file(node), prefix)? {
                out.entry(stream)
                    .or_default()
                    .entry(node)
                    .or_default()
                    .push(seq);
            }
        }
        Ok(out)
    }

    /// Waits until the nodes hold `expected` lines of the streams starting with `prefix` (or
    /// `timeout`), then returns them as [`Rig::streams_by_node`] does (also when fewer
    /// arrived: the caller checks what is missing).
    pub fn wait_streams(
        &self,
        prefix: &str,
        expected: usize,
        timeout: Duration,
    ) -> Result<BTreeMap<String, ByNode>> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.streams_by_node(prefix)?;
            let n: usize = r.values().flat_map(|b| b.values()).map(Vec::len).sum();
            if n >= expected || Instant::now() >= deadline {
                return Ok(r);
            }
            std::thread::sleep(SINK_POLL);
        }
    }
}

/// What each node received of one stream: node → sequence numbers.
pub type ByNode = BTreeMap<Node, Vec<u64>>;

impl Drop for Rig {
    /// Tears down like [`Rig::down`]; a problem (e.g. a daemon that left pins after a
    /// SIGTERM without `--keep-attached`) fails the test: a panic, unless one is under way.
    fn drop(&mut self) {
        let problems = self.teardown();
        if problems.is_empty() {
            return;
        }
        let msg = format!("rig {}: {}", self.lab.prefix(), problems.join("; "));
        if std::thread::panicking() {
            eprintln!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}

/// Sequence numbers of one stream, per colour.
#[derive(Debug, Default)]
pub struct Received {
    pub blue: Vec<u64>,
    pub green: Vec<u64>,
}

impl Received {
    /// Checks that `0..count` arrived exactly once across both colours: (lost, duplicated).
    pub fn loss_and_duplicates(&self, count: u64) -> (Vec<u64>, Vec<u64>) {
        let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
        for s in self.blue.iter().chain(&self.green) {
            *seen.entry(*s).or_default() += 1;
        }
        let lost = (0..count).filter(|s| !seen.contains_key(s)).collect();
        let dup = seen
            .iter()
            .filter(|(s, n)| **n > 1 || **s >= count)
            .map(|(s, _)| *s)
            .collect();
        (lost, dup)
    }
}

/// `seq=N` of every line of `stream` in a sink's output file (absent file: none yet).
pub fn seqs(file: &Path, stream: &str) -> Result<Vec<u64>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let tag = format!("stream={stream} ");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.split_once(&tag).map(|(_, r)| r) else {
            continue;
        };
        let Some(n) = rest.split_whitespace().find_map(|t| t.strip_prefix("seq=")) else {
            continue;
        };
        out.push(n.parse().with_context(|| format!("bad seq in {line:?}"))?);
    }
    Ok(out)
}

/// (stream, seq) of every line in a sink's output file whose stream starts with `prefix`.
pub fn stream_seqs(file: &Path, prefix: &str) -> Result<Vec<(String, u64)>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let tag = format!("stream={prefix}");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.split_once(&tag).map(|(_, r)| r) else {
            continue;
        };
        // The rest of the stream's name runs to the next space (none: the name is `prefix`).
        let (suffix, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let stream = format!("{prefix}{suffix}");
        let Some(n) = after
            .split_whitespace()
            .find_map(|t| t.strip_prefix("seq="))
        else {
            continue;
        };
        out.push((
            stream,
            n.parse().with_context(|| format!("bad seq in {line:?}"))?,
        ));
    }
    Ok(out)
}

/// Waits up to `timeout` for a log-sender to end; fails unless it exited successfully, and
/// returns how many lines it sent.
pub fn finish_sender(p: &Proc, timeout: Duration) -> Result<u64> {
    let st = p.wait_timeout(timeout)?;
    if !st.is_some_and(|s| s.success()) {
        bail!("log-sender failed: {}", p.stderr_tail(10));
    }
    sender_summary(p)?["sent"]
        .as_u64()
        .context("log-sender summary has no sent count")
}

/// The sender's closing JSON summary line.
pub fn sender_summary(p: &Proc) -> Result<serde_json::Value> {
    let line = p
        .stdout_lines()
        .into_iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| {
            format!(
                "log-sender printed no summary; stderr: {}",
                p.stderr_tail(10)
            )
        })?;
    serde_json::from_str(&line).with_context(|| format!("bad summary {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_seqs_finds_every_stream_of_a_prefix() {
        let dir = std::env::temp_dir().join(format!("switcher-rig-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("node.log");
        std::fs::write(
            &f,
            "<14>1 - lab flows - - - stream=u-p20000 seq=0\n\
             <14>1 - lab log-sender - - - stream=u seq=7\n\
             <14>1 - lab log-sender - - - stream=L-c3 seq=9 xxxx\n\
             <14>1 - lab flows - - - stream=u-p20001 seq=1\n\
             no stream here\n",
        )
        .expect("write");
        let got = stream_seqs(&f, "u").expect("parse");
        assert_eq!(
            got,
            vec![
                ("u-p20000".to_string(), 0),
                ("u".to_string(), 7),
                ("u-p20001".to_string(), 1)
            ]
        );
        assert_eq!(
            stream_seqs(&f, "L-").expect("parse"),
            vec![("L-c3".to_string(), 9)]
        );
        assert!(stream_seqs(&dir.join("absent.log"), "u")
            .expect("none")
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
