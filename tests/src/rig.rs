//! A lab with the full switcher stack running: reference ingest sinks on blue and green (UDP
//! 514 and TCP 601, IPv4 and IPv6, HTTP 8080), and the switcher daemon on the edge attached to
//! the client-facing interface. Used by the integration tests, the demo and the benchmarks.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use switcher::{
    api::{self, Request},
    config::Color,
    controller::StatusView,
    datapath::{self, FlipOutcome},
};

use crate::lab::{Host, Lab, Proc, EDGE_TO_CLIENT};

pub use crate::services::{standard_services, HTTP_PORT, TCP_PORT, UDP_PORT};

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

pub struct Rig {
    pub lab: Lab,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub config: PathBuf,
    daemon: Option<Proc>,
}

impl Rig {
    /// Brings up a lab named after `tag`, starts both sinks and the daemon with `services`
    /// (`[[service]]` TOML).
    pub fn up(tag: &str, services: &str) -> Result<Rig> {
        let lab = Lab::up(&Lab::unique_prefix(tag))?;
        let dir = std::env::temp_dir().join(format!("switcher-{}", lab.prefix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/switcher-{}", lab.prefix()));
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
        };
        for host in [Host::Blue, Host::Green] {
            rig.start_sink(host)?;
        }
        rig.start_daemon()?;
        Ok(rig)
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

    /// Starts the daemon on the edge (again, after [`Rig::stop_daemon`]).
    ///
    /// Enters only the network namespace (nsenter), not `ip netns exec`'s private mount
    /// namespace: that one gets its own /sys, so the daemon's bpffs pins would vanish with
    /// the process and a restarted daemon could not adopt the datapath.
    pub fn start_daemon(&mut self) -> Result<()> {
        let sw = bin("switcher")?;
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.lab.ns(Host::Edge)))
            .arg(&sw)
            .args(["daemon", "--config"])
            .arg(&self.config);
        let p = self.lab.spawn_command(cmd)?;
        if let Err(e) = p.wait_for_stdout(|l| l.starts_with("READY"), Duration::from_secs(30)) {
            let tail = p.stderr_tail(20);
            let _ = p.stop();
            return Err(e.context(format!("switcher daemon did not start: {tail}")));
        }
        self.daemon = Some(p);
        Ok(())
    }

    /// SIGTERM to the daemon; it detaches and unpins on the way out.
    pub fn stop_daemon(&mut self) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            let st = d.stop()?;
            if !st.success() {
                bail!("daemon exited with {st}: {}", d.stderr_tail(20));
            }
        }
        Ok(())
    }

    /// `kill -9` of the daemon, as a crash would: nothing is cleaned up.
    pub fn kill_daemon(&mut self) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.pid() as i32),
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

    pub fn sink_file(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.log", host.name()))
    }

    pub fn flip(&self, service: &str, to: Color) -> Result<FlipOutcome> {
        let v = self.call(&Request::Flip {
            service: service.into(),
            to,
            force: false,
            reason: None,
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

    /// `count` numbered lines named `stream` at `rate` per second to the IPv4 VIP over `proto`
    /// ("udp" or "tcp": one connection), from the client; bounded to 60 s.
    pub fn stream(&self, proto: &str, stream: &str, count: u64, rate: u64) -> Result<Proc> {
        let port = if proto == "udp" { UDP_PORT } else { TCP_PORT };
        self.send(
            &format!("{}:{port}", crate::lab::VIP_V4),
            &[
                "--proto",
                proto,
                "--count",
                &count.to_string(),
                "--rate",
                &rate.to_string(),
                "--stream",
                stream,
                "--max-seconds",
                "60",
            ],
        )
    }

    /// Waits until the sinks together hold `expected` lines of `stream` (or `timeout`), then
    /// returns the sequence numbers each colour received.
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
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn received(&self, stream: &str) -> Result<Received> {
        Ok(Received {
            blue: seqs(&self.sink_file(Host::Blue), stream)?,
            green: seqs(&self.sink_file(Host::Green), stream)?,
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Err(e) = self.stop_daemon() {
            eprintln!("rig: {e:#}");
        }
        if let Err(e) = self.lab.down() {
            eprintln!("rig: lab down: {e:#}");
        }
        // A daemon that died without cleaning up leaves pins behind.
        if let Ok(entries) = std::fs::read_dir(&self.bpffs) {
            for e in entries.flatten() {
                if let Err(e) = datapath::remove_pins(&e.path()) {
                    eprintln!("rig: {e:#}");
                }
            }
        }
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
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
