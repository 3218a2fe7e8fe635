//! Packet-level measurement tools for the forwarding section: trafgen on the client, the
//! backends' packet counters, interface counters, and the host's CPU time from /proc/stat.

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use etherparse::PacketBuilder;
use serde_json::Value;
use switcher_tests::lab::{in_netns, Host, Lab, CLIENT_V4, EDGE_TO_CLIENT, HOST_IF};

use crate::contenders::UDP_PORT;

/// A syslog line of typical size; the backends only count it.
const PAYLOAD: &[u8] =
    b"<14>1 2026-11-24T00:00:00Z client bench - - - stream=fwd a typical short syslog line, 120 bytes";

/// /proc/stat counts in USER_HZ, which Linux fixes at 100 for userspace; so does /proc/PID/stat.
const NS_PER_TICK: u64 = 10_000_000;

/// CPU time so far: of the whole host (all CPUs, all namespaces: /proc/stat is not
/// namespaced), and of the host's kernel plus the lab's own processes only. On a shared
/// machine the second leaves out other users' userspace work (a compiler next door).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub host_ns: u64,
    pub lab_ns: u64,
}

impl Cpu {
    /// `pids`: processes of the contender running through the window (nginx, the daemon);
    /// trafgen, our child, is counted once reaped (cutime of this process).
    pub fn now(pids: &[u32]) -> Result<Cpu> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no cpu line")?;
        let t: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse::<u64>().context("bad /proc/stat field"))
            .collect::<Result<_>>()?;
        if t.len() < 8 {
            bail!("/proc/stat cpu line too short: {line:?}");
        }
        // user nice system idle iowait irq softirq steal (guest is inside user already).
        let host = t[0] + t[1] + t[2] + t[5] + t[6] + t[7];
        let kernel = t[2] + t[5] + t[6];
        let mut user = proc_ticks("self", 13)?;
        for pid in pids {
            // A process that is gone has nothing more to add.
            user += proc_ticks(&pid.to_string(), 11).unwrap_or(0);
        }
        Ok(Cpu {
            host_ns: host * NS_PER_TICK,
            lab_ns: (kernel + user) * NS_PER_TICK,
        })
    }

    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            host_ns: self.host_ns.saturating_sub(earlier.host_ns),
            lab_ns: self.lab_ns.saturating_sub(earlier.lab_ns),
        }
    }
}

/// Field `idx` after the command name of /proc/PID/stat (11: utime, 13: cutime).
fn proc_ticks(pid: &str, idx: usize) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("bad {path}"))?;
    rest.split_whitespace()
        .nth(idx)
        .and_then(|v| v.parse::<i64>().ok())
        .map(|v| v.max(0) as u64)
        .with_context(|| format!("bad {path}"))
}

/// Pids of the processes in `host`'s namespace.
pub fn netns_pids(lab: &Lab, host: Host) -> Result<Vec<u32>> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", lab.ns(host)])
        .output()
        .context("ip netns pids")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

fn link_mac(lab: &Lab, host: Host, dev: &str) -> Result<[u8; 6]> {
    let out = lab.run(host, &["ip", "-j", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out).context("parsing `ip -j link`")?;
    let s = v[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC for {dev}"))?;
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).with_context(|| format!("bad MAC {s}")))
        .collect::<Result<_>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s}"))
}

const BACKEND_TABLE: &str = "switcher_bench_rx";
const CLIENT_TABLE: &str = "switcher_bench_tx";
/// trafgen's source port: with [`UDP_PORT`] it names the test flow.
const SRC_PORT: u16 = 40000;

/// Packets counted so far by the named nft counter `table`/`counter` (netdev family) in `host`.
pub fn nft_counter(lab: &Lab, host: Host, table: &str, counter: &str) -> Result<u64> {
    let out = lab.run(
        host,
        &["nft", "-j", "list", "counter", "netdev", table, counter],
    )?;
    let v: Value = serde_json::from_str(&out).context("parsing `nft -j list counter`")?;
    v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|e| e["counter"]["packets"].as_u64()))
        .with_context(|| format!("no counter {table}/{counter} in {out}"))
}

/// Loads `rules` with `nft -f` in `host`, via a file in `dir` named `name`.
pub fn nft_load(lab: &Lab, host: Host, dir: &Path, name: &str, rules: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, rules).with_context(|| format!("writing {}", path.display()))?;
    lab.run(host, &["nft", "-f", &path.display().to_string()])?;
    Ok(())
}

/// On blue and green: count the syslog datagrams that arrive and drop them before any socket,
/// so a backend costs the same little for every contender and the count is exact.
pub fn install_backend_counters(lab: &Lab, dir: &Path) -> Result<()> {
    let rules = format!(
        "table netdev {BACKEND_TABLE} {{\n  counter rx {{}}\n  chain in {{\n    type filter hook ingress device \"{HOST_IF}\" priority 0; policy accept;\n    ip protocol udp udp dport {UDP_PORT} counter name \"rx\" drop\n  }}\n}}\n"
    );
    for host in [Host::Blue, Host::Green] {
        nft_load(lab, host, dir, "backend-rx.nft", &rules)?;
    }
    Ok(())
}

/// Datagrams counted by both backends so far.
pub fn backend_packets(lab: &Lab) -> Result<u64> {
    let mut sum = 0;
    for host in [Host::Blue, Host::Green] {
        sum += nft_counter(lab, host, BACKEND_TABLE, "rx")?;
    }
    Ok(sum)
}

/// On the client: count the test flow's datagrams as they leave (netdev egress, which also
/// sees trafgen's qdisc-bypassing packet socket). The interface's tx counter would also count
/// ARP and IPv6 ND/MLD, and one such packet would make a lossless trial look lossy. Same cost
/// in every run, so it cancels out of the CPU comparison.
pub fn install_offered_counter(lab: &Lab, dir: &Path) -> Result<()> {
    let rules = format!(
        "table netdev {CLIENT_TABLE} {{\n  counter tx {{}}\n  chain out {{\n    type filter hook egress device \"{HOST_IF}\" priority 0; policy accept;\n    ip protocol udp udp sport {SRC_PORT} udp dport {UDP_PORT} counter name \"tx\"\n  }}\n}}\n"
    );
    nft_load(lab, Host::Client, dir, "client-tx.nft", &rules)
}

/// Test-flow datagrams the client has sent so far.
pub fn offered_packets(lab: &Lab) -> Result<u64> {
    nft_counter(lab, Host::Client, CLIENT_TABLE, "tx")
}

/// Steady sending, timed from the client's tx counter: the sample intervals in which it moved
/// and so did the intervals either side. Leaves out trafgen's start (`ip netns exec`, ring
/// setup) and exit, and its idle time: trafgen's `-b` paces per second, sending each second's
/// packets in one burst as fast as the path takes them and then sleeping, so this is the rate
/// of those bursts, not the per-second average asked for.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub packets: u64,
    pub secs: f64,
}

impl Window {
    pub fn pps(&self) -> f64 {
        self.packets as f64 / self.secs.max(1e-9)
    }
}

/// How often the client's tx counter is sampled while trafgen runs (a read of
/// /proc/net/dev, no process: cheap, and the same in every run).
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// Client `HOST_IF` tx packets from /proc/net/dev of the calling thread's namespace.
fn tx_now() -> Result<u64> {
    let text =
        std::fs::read_to_string("/proc/thread-self/net/dev").context("reading /proc/net/dev")?;
    let line = text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(name, _)| name.trim() == HOST_IF)
                .map(|(_, rest)| rest)
        })
        .with_context(|| format!("{HOST_IF} not in /proc/net/dev"))?;
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
    line.split_whitespace()
        .nth(9)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad /proc/net/dev line {line:?}"))
}

/// Samples the client's tx counter until `stop`, in the client's namespace.
fn sample_tx(ns: &str, stop: &AtomicBool, deadline: Instant) -> Result<Vec<(Instant, u64)>> {
    in_netns(ns, || -> Result<Vec<(Instant, u64)>> {
        let mut v = Vec::new();
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            v.push((Instant::now(), tx_now()?));
            std::thread::sleep(SAMPLE_EVERY);
        }
        v.push((Instant::now(), tx_now()?));
        Ok(v)
    })?
}

/// The steady [`Window`] in `samples`; None if trafgen never sent for three sample periods in
/// a row.
fn steady_window(samples: &[(Instant, u64)]) -> Option<Window> {
    let moved: Vec<bool> = samples.windows(2).map(|w| w[1].1 > w[0].1).collect();
    let (mut packets, mut secs) = (0u64, 0f64);
    for i in 1..moved.len().saturating_sub(1) {
        if moved[i - 1] && moved[i] && moved[i + 1] {
            let ((t0, c0), (t1, c1)) = (samples[i], samples[i + 1]);
            packets += c1 - c0;
            secs += (t1 - t0).as_secs_f64();
        }
    }
    (secs > 0.0).then_some(Window { packets, secs })
}

/// trafgen on the client sending one UDP flow to `dst`, through the edge.
pub struct Generator {
    conf: String,
}

impl Generator {
    pub fn new(lab: &Lab, dir: &Path, dst: Ipv4Addr) -> Result<Generator> {
        let src_mac = link_mac(lab, Host::Client, HOST_IF)?;
        let dst_mac = link_mac(lab, Host::Edge, EDGE_TO_CLIENT)?;
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(CLIENT_V4.octets(), dst.octets(), 64)
            .udp(SRC_PORT, UDP_PORT)
            .write(&mut frame, PAYLOAD)
            .context("building the trafgen frame")?;
        let bytes: Vec<String> = frame.iter().map(|b| format!("0x{b:02x}")).collect();
        let path = dir.join(format!("trafgen-{dst}.cfg"));
        std::fs::write(&path, format!("{{ {} }}\n", bytes.join(", ")))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Generator {
            conf: path.display().to_string(),
        })
    }

    /// Sends `count` frames at `pps` (None: as fast as it can) and returns when trafgen is
    /// done (killed after `limit`), with the steady sending window timed from the counters.
    pub fn send(
        &self,
        lab: &Lab,
        count: u64,
        pps: Option<u64>,
        limit: Duration,
    ) -> Result<Option<Window>> {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let ns = lab.ns(Host::Client).to_owned();
            let stop = Arc::clone(&stop);
            let deadline = Instant::now() + limit + Duration::from_secs(3);
            std::thread::spawn(move || sample_tx(&ns, &stop, deadline))
        };
        let sent = self.run_trafgen(lab, count, pps, limit);
        stop.store(true, Ordering::Relaxed);
        let samples = match sampler.join() {
            Ok(r) => r,
            Err(_) => bail!("tx counter sampler panicked"),
        };
        sent?;
        Ok(steady_window(&samples?))
    }

    fn run_trafgen(&self, lab: &Lab, count: u64, pps: Option<u64>, limit: Duration) -> Result<()> {
        let count_s = count.to_string();
        let rate = pps.map(|r| format!("{r}pps"));
        // One process (-P 1), leave socket memory sysctls and IRQ affinity alone (-A, -Q).
        let mut args = vec![
            "--dev",
            HOST_IF,
            "--conf",
            &self.conf,
            "-n",
            &count_s,
            "-P",
            "1",
            "--no-sock-mem",
            "--notouch-irq",
        ];
        if let Some(r) = &rate {
            args.extend(["-b", r.as_str()]);
        }
        let p = lab.spawn(Host::Client, "trafgen", &args)?;
        let started = Instant::now();
        let st = p.wait_timeout(limit)?;
        match st {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("trafgen exited with {s}: {}", p.stderr_tail(10)),
            None => {
                // Bounded in time: stop it; what it sent still counts.
                p.stop()?;
                eprintln!(
                    "  (trafgen stopped after {:.1} s, before sending {count})",
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            }
        }
    }
}
