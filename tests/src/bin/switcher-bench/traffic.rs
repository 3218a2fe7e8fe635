//! Packet-level measurement tools for the forwarding section: trafgen on the client, the
//! backends' packet counters, interface counters, and the host's CPU time from /proc/stat.

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use etherparse::PacketBuilder;
use serde_json::Value;
use switcher_tests::lab::{Host, Lab, CLIENT_V4, EDGE_TO_CLIENT, HOST_IF};

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

/// `ip -s` packet counter of `dev` in `host` (`"rx"` or `"tx"`).
pub fn link_packets(lab: &Lab, host: Host, dev: &str, dir: &str) -> Result<u64> {
    let out = lab.run(host, &["ip", "-j", "-s", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out).context("parsing `ip -j -s link`")?;
    v[0]["stats64"][dir]["packets"]
        .as_u64()
        .with_context(|| format!("no {dir} packet counter for {dev} in {out}"))
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

/// On blue and green: count the syslog datagrams that arrive and drop them before any socket,
/// so a backend costs the same little for every contender and the count is exact.
pub fn install_backend_counters(lab: &Lab, dir: &Path) -> Result<()> {
    let rules = format!(
        "table netdev {BACKEND_TABLE} {{\n  counter rx {{}}\n  chain in {{\n    type filter hook ingress device \"{HOST_IF}\" priority 0; policy accept;\n    ip protocol udp udp dport {UDP_PORT} counter name \"rx\" drop\n  }}\n}}\n"
    );
    let path = dir.join("backend-rx.nft");
    std::fs::write(&path, rules).with_context(|| format!("writing {}", path.display()))?;
    for host in [Host::Blue, Host::Green] {
        lab.run(host, &["nft", "-f", &path.display().to_string()])?;
    }
    Ok(())
}

/// Datagrams counted by both backends so far.
pub fn backend_packets(lab: &Lab) -> Result<u64> {
    let mut sum = 0;
    for host in [Host::Blue, Host::Green] {
        let out = lab.run(
            host,
            &[
                "nft",
                "-j",
                "list",
                "counter",
                "netdev",
                BACKEND_TABLE,
                "rx",
            ],
        )?;
        let v: Value = serde_json::from_str(&out).context("parsing `nft -j list counter`")?;
        let n = v["nftables"]
            .as_array()
            .and_then(|a| a.iter().find_map(|e| e["counter"]["packets"].as_u64()))
            .with_context(|| format!("no counter in {out}"))?;
        sum += n;
    }
    Ok(sum)
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
            .udp(40000, UDP_PORT)
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
    /// done; killed after `limit`.
    pub fn send(&self, lab: &Lab, count: u64, pps: Option<u64>, limit: Duration) -> Result<()> {
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
