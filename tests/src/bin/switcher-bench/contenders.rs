//! What switcher is compared with, each set up on the same lab edge in turn: switcher itself
//! (its daemon, XDP redirect or XDP pass), nftables DNAT, an nginx stream proxy, and no switch
//! (the client sends to the backend, the edge only routes).
//!
//! A [`Stage`] is one lab plus at most one running contender. Everything a contender adds lives
//! in the lab's namespaces (nft tables, addresses, processes) or in the stage's temp and bpffs
//! folders, so dropping the stage removes it all, also on error.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use switcher::{api, datapath, domain::Color};
use switcher_tests::{
    lab::{Host, Lab, Proc, BLUE_V4, EDGE_TO_CLIENT, GREEN_V4, VIP_V4},
    rig, services,
};

pub const UDP_PORT: u16 = services::UDP_PORT;
pub const TCP_PORT: u16 = services::TCP_PORT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The switcher daemon with every service in `forward = "redirect"` mode.
    SwitcherRedirect,
    /// The same with `forward = "pass"`: rewrite in XDP, route in the kernel.
    SwitcherPass,
    /// An nftables DNAT rule in the edge's prerouting hook (conntrack).
    Nft,
    /// nginx `stream` proxy listening on the VIP (UDP and TCP).
    Nginx,
    /// No switch: the client addresses the backend, the edge forwards.
    Direct,
}

impl Kind {
    pub fn key(self) -> &'static str {
        match self {
            Kind::SwitcherRedirect => "switcher_redirect",
            Kind::SwitcherPass => "switcher_pass",
            Kind::Nft => "nftables_dnat",
            Kind::Nginx => "nginx_stream",
            Kind::Direct => "direct",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::SwitcherRedirect => "switcher (XDP redirect)",
            Kind::SwitcherPass => "switcher (XDP pass)",
            Kind::Nft => "nftables DNAT",
            Kind::Nginx => "nginx stream proxy",
            Kind::Direct => "direct (no switch)",
        }
    }

    /// How this contender changes colour, for tables.
    pub fn flip_method(self) -> &'static str {
        match self {
            Kind::SwitcherRedirect | Kind::SwitcherPass => "API flip (one map write)",
            Kind::Nft => "rule replace (nft -f, one transaction)",
            Kind::Nginx => "config rewrite + reload (SIGHUP)",
            Kind::Direct => "-",
        }
    }
}

fn backend(c: Color) -> IpAddr {
    match c {
        Color::Blue => BLUE_V4.into(),
        Color::Green => GREEN_V4.into(),
    }
}

/// What is running for the current contender.
enum Running {
    Switcher { daemon: Proc },
    Nft,
    Nginx { master: Proc, conf: PathBuf },
    Direct,
}

pub struct Stage {
    pub lab: Lab,
    pub dir: PathBuf,
    bpffs: PathBuf,
    socket: PathBuf,
    current: Option<(Kind, Running)>,
    sinks: Vec<Proc>,
}

impl Stage {
    pub fn up(tag: &str) -> Result<Stage> {
        let lab = Lab::up(&Lab::unique_prefix(tag))?;
        let dir = std::env::temp_dir().join(format!("switcher-bench-{}", lab.prefix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/switcher-{}", lab.prefix()));
        let socket = dir.join("switcher.sock");
        Ok(Stage {
            lab,
            dir,
            bpffs,
            socket,
            current: None,
            sinks: Vec::new(),
        })
    }

    /// Where the client sends `port` traffic for the current contender.
    pub fn target(&self, port: u16) -> SocketAddr {
        let ip: IpAddr = match self.current {
            Some((Kind::Direct, _)) => BLUE_V4.into(),
            _ => VIP_V4.into(),
        };
        SocketAddr::new(ip, port)
    }

    /// Starts `kind` on the edge, serving blue (stops the previous contender first).
    pub fn start(&mut self, kind: Kind) -> Result<()> {
        self.stop()?;
        let running = match kind {
            Kind::SwitcherRedirect => self.start_switcher("redirect")?,
            Kind::SwitcherPass => self.start_switcher("pass")?,
            Kind::Nft => {
                self.nft(&nft_ruleset(Color::Blue, true))?;
                Running::Nft
            }
            Kind::Nginx => self.start_nginx()?,
            Kind::Direct => Running::Direct,
        };
        self.current = Some((kind, running));
        Ok(())
    }

    fn start_switcher(&mut self, forward: &str) -> Result<Running> {
        let config = self.dir.join("switcher.toml");
        let text = services::lab_config(
            EDGE_TO_CLIENT,
            &self.bpffs,
            &self.dir,
            &services::standard_services(forward, ""),
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        // Only the network namespace (as the rig does): `ip netns exec` would give the daemon a
        // private /sys, and its pins would not be where our cleanup looks.
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.lab.ns(Host::Edge)))
            .arg(rig::bin("switcher")?)
            .args(["daemon", "--config"])
            .arg(&config);
        let daemon = self.lab.spawn_command(cmd)?;
        if let Err(e) = daemon.wait_for_stdout(|l| l.starts_with("READY"), Duration::from_secs(30))
        {
            let tail = daemon.stderr_tail(20);
            let _ = daemon.stop();
            return Err(e.context(format!("switcher daemon did not start: {tail}")));
        }
        Ok(Running::Switcher { daemon })
    }

    fn start_nginx(&mut self) -> Result<Running> {
        // nginx must own the VIP to listen on it; removed again in stop().
        self.lab.run(
            Host::Edge,
            &["ip", "addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"],
        )?;
        let conf = self.dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&self.dir, Color::Blue))
            .with_context(|| format!("writing {}", conf.display()))?;
        let dir = self.dir.display().to_string();
        let conf_s = conf.display().to_string();
        let err_log = self.dir.join("nginx-error.log").display().to_string();
        let master = self.lab.spawn(
            Host::Edge,
            "nginx",
            &["-p", &dir, "-c", &conf_s, "-e", &err_log],
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = master.try_wait()? {
                bail!(
                    "nginx exited with {st}: {} {}",
                    master.stderr_tail(10),
                    std::fs::read_to_string(&err_log).unwrap_or_default()
                );
            }
            let udp = self.lab.run(Host::Edge, &["ss", "-H", "-l", "-n", "-u"])?;
            let tcp = self.lab.run(Host::Edge, &["ss", "-H", "-l", "-n", "-t"])?;
            if udp.contains(&format!("{VIP_V4}:{UDP_PORT}"))
                && tcp.contains(&format!("{VIP_V4}:{TCP_PORT}"))
            {
                break;
            }
            if Instant::now() >= deadline {
                let _ = master.stop();
                bail!("nginx does not listen on {VIP_V4} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Running::Nginx { master, conf })
    }

    /// Stops the current contender and removes what it added to the edge.
    pub fn stop(&mut self) -> Result<()> {
        let Some((_, running)) = self.current.take() else {
            return Ok(());
        };
        match running {
            Running::Switcher { daemon } => {
                let st = daemon.stop()?;
                if !st.success() {
                    bail!(
                        "switcher daemon exited with {st}: {}",
                        daemon.stderr_tail(20)
                    );
                }
                self.remove_pins();
            }
            Running::Nft => {
                self.lab
                    .run(Host::Edge, &["nft", "delete", "table", "ip", NFT_TABLE])?;
            }
            Running::Nginx { master, .. } => {
                master.stop()?;
                self.lab.run(
                    Host::Edge,
                    &["ip", "addr", "del", &format!("{VIP_V4}/32"), "dev", "lo"],
                )?;
            }
            Running::Direct => {}
        }
        Ok(())
    }

    /// The pinned maps of the running switcher contender (reason and colour counters), to
    /// prove which path its packets took; None while another contender runs.
    pub fn switcher_maps(&self) -> Result<Option<datapath::MapReader>> {
        match self.current {
            Some((_, Running::Switcher { .. })) => Ok(Some(datapath::MapReader::open(
                &datapath::maps_dir(&self.bpffs),
            )?)),
            _ => Ok(None),
        }
    }

    /// The XDP program attached to the edge's client-facing interface (`ip -j link`'s `xdp`
    /// object), if any.
    pub fn edge_xdp(&self) -> Result<Option<Value>> {
        let out = self.lab.run(
            Host::Edge,
            &["ip", "-j", "-d", "link", "show", "dev", EDGE_TO_CLIENT],
        )?;
        let v: Value = serde_json::from_str(&out).context("parsing `ip -j link`")?;
        Ok(v[0].get("xdp").cloned())
    }

    /// Moves new traffic to `to`. Returns CLOCK_MONOTONIC ns right before the command was
    /// issued and, for switcher, the kernel-clock time of its map write.
    pub fn flip(&mut self, to: Color) -> Result<(u64, Option<u64>)> {
        let t0 = datapath::monotonic_ns()?;
        let kernel = match &self.current {
            Some((_, Running::Switcher { .. })) => {
                let v = self.api(&api::Request::Flip {
                    service: "udp4".into(),
                    to,
                    force: false,
                    reason: None,
                    local: false,
                })?;
                // The TCP service flips with it; the UDP one carries the in-kernel mark.
                let w = self.api(&api::Request::Flip {
                    service: "tcp4".into(),
                    to,
                    force: false,
                    reason: None,
                    local: false,
                })?;
                if v["changed"] != true || w["changed"] != true {
                    bail!("switcher flip to {to} changed nothing: {v} {w}");
                }
                v["flip_ns"].as_u64()
            }
            Some((_, Running::Nft)) => {
                self.nft(&nft_ruleset(to, false))?;
                None
            }
            Some((_, Running::Nginx { master, conf })) => {
                std::fs::write(conf, nginx_conf(&self.dir, to))
                    .with_context(|| format!("writing {}", conf.display()))?;
                let pid = i32::try_from(master.pid()).context("nginx pid")?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .context("SIGHUP to nginx")?;
                None
            }
            Some((k, _)) => bail!("{} cannot flip", k.label()),
            None => bail!("no contender running"),
        };
        Ok((t0, kernel))
    }

    /// For switcher: kernel time from the flip of `udp4` written at `flip_ns` to the first
    /// packet `c` got after it (None if none yet, or a later flip replaced the mark).
    pub fn first_after_ns(&self, flip_ns: u64, c: Color) -> Result<Option<u64>> {
        let v = self.api(&api::Request::Status {
            service: Some("udp4".into()),
        })?;
        let Some(s) = v["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "udp4"))
        else {
            bail!("status has no udp4: {v}");
        };
        let f = &s["last_flip"];
        if f["flip_ns"].as_u64() != Some(flip_ns) {
            return Ok(None);
        }
        Ok(f[format!("{c}_first_after_ns")].as_u64())
    }

    fn api(&self, req: &api::Request) -> Result<Value> {
        api::call_with_timeout(&self.socket, req, Duration::from_secs(30))
    }

    fn nft(&self, ruleset: &str) -> Result<()> {
        let path = self.dir.join("dnat.nft");
        std::fs::write(&path, ruleset).with_context(|| format!("writing {}", path.display()))?;
        self.lab
            .run(Host::Edge, &["nft", "-f", &path.display().to_string()])?;
        Ok(())
    }

    /// Reference sinks on blue and green that stamp every line with its arrival time.
    pub fn start_sinks(&mut self, tag: &str) -> Result<[PathBuf; 2]> {
        self.stop_sinks()?;
        let sink = rig::bin("ingest-sink")?.display().to_string();
        let mut files = Vec::new();
        for host in [Host::Blue, Host::Green] {
            let out = self.dir.join(format!("{tag}-{}.log", host.name()));
            let _ = std::fs::remove_file(&out);
            let v4 = host.v4();
            let args = [
                "--name".to_string(),
                host.name().into(),
                "--udp".into(),
                format!("{v4}:{UDP_PORT}"),
                "--tcp".into(),
                format!("{v4}:{TCP_PORT}"),
                "--out".into(),
                out.display().to_string(),
                "--stamp".into(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let p = self
                .lab
                .spawn_ready(host, &sink, &args, "READY", Duration::from_secs(10))?;
            self.sinks.push(p);
            files.push(out);
        }
        let [b, g]: [PathBuf; 2] = files
            .try_into()
            .map_err(|_| anyhow::anyhow!("two sink files expected"))?;
        Ok([b, g])
    }

    /// SIGTERM to the sinks: they flush their files and exit.
    pub fn stop_sinks(&mut self) -> Result<()> {
        for p in std::mem::take(&mut self.sinks) {
            p.stop()?;
        }
        Ok(())
    }

    fn remove_pins(&self) {
        // The daemon unpins on SIGTERM; this catches one that died without doing so.
        if let Ok(entries) = std::fs::read_dir(&self.bpffs) {
            for e in entries.flatten() {
                if let Err(e) = datapath::remove_pins(&e.path()) {
                    eprintln!("bench: {e:#}");
                }
            }
        }
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: stopping contender: {e:#}");
        }
        let _ = self.stop_sinks();
        if let Err(e) = self.lab.down() {
            eprintln!("bench: lab down: {e:#}");
        }
        self.remove_pins();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const NFT_TABLE: &str = "switcher_bench";

/// The DNAT ruleset sending the VIP's syslog ports to `c`. `create` makes the table; later
/// calls replace the chain's rules in one transaction (what an operator's flip would do).
fn nft_ruleset(c: Color, create: bool) -> String {
    let b = backend(c);
    let head = if create {
        format!(
            "table ip {NFT_TABLE} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n  }}\n}}\n"
        )
    } else {
        String::new()
    };
    format!(
        "{head}flush chain ip {NFT_TABLE} pre\n\
         add rule ip {NFT_TABLE} pre ip daddr {VIP_V4} udp dport {UDP_PORT} dnat to {b}:{UDP_PORT}\n\
         add rule ip {NFT_TABLE} pre ip daddr {VIP_V4} tcp dport {TCP_PORT} dnat to {b}:{TCP_PORT}\n"
    )
}

/// nginx serving only the stream proxy, everything it writes kept in `dir`.
fn nginx_conf(dir: &Path, c: Color) -> String {
    let b = backend(c);
    // Debian builds the stream module as a dynamic module (libnginx-mod-stream).
    let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    let load = if module.exists() {
        format!("load_module {};\n", module.display())
    } else {
        String::new()
    };
    let d = dir.display();
    format!(
        "{load}daemon off;\nmaster_process on;\nworker_processes auto;\nuser root;\n\
         pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         stream {{\n\
         \x20 server {{ listen {VIP_V4}:{UDP_PORT} udp; proxy_pass {b}:{UDP_PORT}; proxy_responses 0; }}\n\
         \x20 server {{ listen {VIP_V4}:{TCP_PORT}; proxy_pass {b}:{TCP_PORT}; }}\n\
         }}\n"
    )
}
