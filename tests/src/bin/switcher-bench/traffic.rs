//! Packet-level measurement tools for the forwarding section: the paced generator on the
//! client, the backends' packet counters, interface counters, and the host's CPU time from
//! /proc/stat.

use std::{
    net::Ipv4Addr,
    path::Path,
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

/// /proc/stat counts in USER_HZ, which Linux fixes at 100 for userspace.
const NS_PER_TICK: u64 = 10_000_000;

/// Where the host's CPUs stand: wall time and the idle time the kernel has counted, summed
/// over all CPUs (/proc/stat is not namespaced: every namespace, every process).
///
/// Busy time is taken as wall time × CPUs − idle − iowait − steal, not from /proc/stat's user, system
/// and softirq fields: those are sampled by the scheduler tick (250 Hz on these machines, no
/// IRQ time accounting), and a load paced in 1 ms ticks runs in phase with it, so the tick
/// sees it busy or idle by that phase alone (run-to-run differences of 2× were seen). Idle time
/// is not sampled: with NO_HZ the kernel stamps every entry into and exit from idle, and
/// /proc/stat reports that sum (in 10 ms units: over a run of seconds, well under 1%).
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    at: Instant,
    idle_ns: u64,
    cpus: u64,
}

impl Cpu {
    pub fn now() -> Result<Cpu> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let at = Instant::now();
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
        let cpus = text
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count() as u64;
        Ok(Cpu {
            at,
            // idle, iowait, and steal: time the hypervisor gave to someone else.
            idle_ns: (t[3] + t[4] + t[7]) * NS_PER_TICK,
            cpus,
        })
    }

    /// CPU time the host spent busy since `earlier`.
    pub fn busy_ns_since(&self, earlier: Cpu) -> u64 {
        let wall = self.at.saturating_duration_since(earlier.at).as_nanos() as u64;
        (wall * self.cpus).saturating_sub(self.idle_ns.saturating_sub(earlier.idle_ns))
    }
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
/// The generator's source port: with [`UDP_PORT`] it names the test flow.
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
/// sees the pacer's qdisc-bypassing packet socket), and everything else that leaves. Same cost
/// in every run, so it cancels out of the CPU comparison. See [`Offered`] for why both.
pub fn install_offered_counter(lab: &Lab, dir: &Path) -> Result<()> {
    let rules = format!(
        "table netdev {CLIENT_TABLE} {{\n  counter tx {{}}\n  counter other {{}}\n  chain out {{\n    type filter hook egress device \"{HOST_IF}\" priority 0; policy accept;\n    ip protocol udp udp sport {SRC_PORT} udp dport {UDP_PORT} counter name \"tx\" accept\n    counter name \"other\"\n  }}\n}}\n"
    );
    nft_load(lab, Host::Client, dir, "client-tx.nft", &rules)
}

/// Test-flow send attempts the client has made so far (see [`Offered`]).
pub fn offered_packets(lab: &Lab) -> Result<u64> {
    nft_counter(lab, Host::Client, CLIENT_TABLE, "tx")
}

/// The test flow's packets that left the client in a trial.
///
/// The egress hook counts every send attempt: when the veth refuses a packet (its peer's queue
/// is full) the sender gets ENOBUFS, and a sender that tries again (trafgen does) is counted
/// again, so under pressure the hook's count may exceed what left (and read as loss). The
/// interface's tx counter counts only what its peer took, but also ARP and ND. So: what left =
/// interface tx minus everything else the hook saw, read in an order that can only overcount
/// by a stray ARP; the result is the smaller of that and the attempts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offered {
    /// Send attempts (the hook's test-flow counter).
    pub attempts: u64,
    /// Other packets the hook saw leave.
    other: u64,
    /// The interface's tx counter.
    tx_if: u64,
}

impl Offered {
    /// Before a trial: the interface first.
    pub fn before(lab: &Lab) -> Result<Offered> {
        let tx_if = client_tx_packets(lab)?;
        Ok(Offered {
            attempts: offered_packets(lab)?,
            other: nft_counter(lab, Host::Client, CLIENT_TABLE, "other")?,
            tx_if,
        })
    }

    /// After a trial (sending has stopped): the interface last.
    pub fn after(lab: &Lab) -> Result<Offered> {
        let attempts = offered_packets(lab)?;
        let other = nft_counter(lab, Host::Client, CLIENT_TABLE, "other")?;
        Ok(Offered {
            attempts,
            other,
            tx_if: client_tx_packets(lab)?,
        })
    }

    /// (test-flow packets that left, send attempts) between `self` and a later reading.
    pub fn since(self, before: Offered) -> (u64, u64) {
        let attempts = self.attempts.saturating_sub(before.attempts);
        let left = self
            .tx_if
            .saturating_sub(before.tx_if)
            .saturating_sub(self.other.saturating_sub(before.other));
        (left.min(attempts), attempts)
    }
}

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

/// Packets the client's `HOST_IF` has transmitted so far (every kind, ARP and ND too): what
/// the veth handed to its peer; an attempt the peer refused (queue full) is not counted.
pub fn client_tx_packets(lab: &Lab) -> Result<u64> {
    in_netns(lab.ns(Host::Client), tx_now)?
}

/// Fails if the client's test flow is still being sent (a generator of an earlier trial that
/// did not stop): its packets would be counted as this trial's.
pub fn check_quiet(lab: &Lab) -> Result<()> {
    let a = offered_packets(lab)?;
    std::thread::sleep(Duration::from_millis(30));
    let b = offered_packets(lab)?;
    if b != a {
        bail!(
            "the client sent {} test-flow packets while no generator should run (one of an \
             earlier trial is still sending): the measurement is invalid",
            b - a
        );
    }
    Ok(())
}

/// The highest-numbered CPU this process may run on (0 if that cannot be read).
fn last_cpu() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .and_then(|set| {
            (0..nix::sched::CpuSet::count())
                .rev()
                .find(|&c| set.is_set(c).unwrap_or(false))
        })
        .unwrap_or(0)
}

/// What a [`Pacer`] run reported (frame-pacer's JSON line).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Paced {
    pub sent: u64,
    /// Frames the client's interface refused (lost at the client, not sent again).
    pub refused: u64,
    pub pps: f64,
    pub late_ticks: u64,
    pub ticks: u64,
}

/// frame-pacer on the client sending the test flow to `dst` through the edge at a steady
/// rate (frames due every 1 ms tick, in sendmmsg batches), for the forwarding measurement.
pub struct Pacer {
    frame: String,
    /// The frame's bytes.
    pub bytes: Vec<u8>,
    bin: String,
}

impl Pacer {
    pub fn new(lab: &Lab, dir: &Path, dst: Ipv4Addr) -> Result<Pacer> {
        let frame = test_frame(lab, dst)?;
        let path = dir.join(format!("frame-{dst}.bin"));
        std::fs::write(&path, &frame).with_context(|| format!("writing {}", path.display()))?;
        Ok(Pacer {
            frame: path.display().to_string(),
            bytes: frame,
            bin: switcher_tests::rig::bin("frame-pacer")?
                .display()
                .to_string(),
        })
    }

    /// The command that sends `count` frames at `pps` (bounded by `max_secs`), to run as is
    /// or under a profiler. Pinned to the last CPU: veth schedules the receiving side's NAPI
    /// on the sending CPU, so the whole path (edge and backend) runs there, in every run, and
    /// runs compare like with like rather than where the scheduler happened to put the sender.
    ///
    /// `live`: the pinned `bench_tx` program, to send XDP frames instead of writing to a packet
    /// socket (see frame-pacer). Only the network namespace is entered (`ip netns exec` would
    /// mount a /sys without the pin).
    pub fn command(
        &self,
        lab: &Lab,
        count: u64,
        pps: u64,
        live: Option<&Path>,
    ) -> std::process::Command {
        let last = last_cpu();
        let max_secs = count as f64 / pps as f64 * 1.5 + 2.0;
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", lab.ns(Host::Client)))
            .args(["taskset", "-c", &last.to_string(), &self.bin])
            .args(["--dev", HOST_IF, "--frame", &self.frame])
            .args(["--count", &count.to_string(), "--pps", &pps.to_string()])
            .args(["--max-secs", &format!("{max_secs:.1}")]);
        if let Some(pin) = live {
            cmd.arg("--xdp-live").arg(pin);
        }
        cmd
    }

    /// Sends `count` frames at `pps` and returns what the pacer reported.
    pub fn send(&self, lab: &Lab, count: u64, pps: u64, live: Option<&Path>) -> Result<Paced> {
        let out = switcher_tests::lab::run_command(&mut self.command(lab, count, pps, live))?;
        Paced::parse(&out)
    }
}

impl Paced {
    pub fn parse(out: &str) -> Result<Paced> {
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("frame-pacer printed no result: {out:?}"))?;
        serde_json::from_str(line).with_context(|| format!("frame-pacer's result {line:?}"))
    }
}

/// The test flow's frame: client to `dst`, addressed to the edge's MAC.
fn test_frame(lab: &Lab, dst: Ipv4Addr) -> Result<Vec<u8>> {
    let src_mac = link_mac(lab, Host::Client, HOST_IF)?;
    let dst_mac = link_mac(lab, Host::Edge, EDGE_TO_CLIENT)?;
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(CLIENT_V4.octets(), dst.octets(), 64)
        .udp(SRC_PORT, UDP_PORT)
        .write(&mut frame, PAYLOAD)
        .context("building the test frame")?;
    Ok(frame)
}
