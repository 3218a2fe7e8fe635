//! Packet-level measurement tools for the forwarding section: trafgen on the client, the
//! backends' packet counters, interface counters, and the host's CPU time from /proc/stat.

use std::{
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
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
use switcher_tests::lab::{in_netns, Host, Lab, Proc, CLIENT_V4, EDGE_TO_CLIENT, HOST_IF};

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
/// sees trafgen's qdisc-bypassing packet socket), and everything else that leaves. Same cost
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
/// is full) trafgen gets ENOBUFS and sends the same packet again, and the hook counts it again,
/// so under pressure the hook's count exceeds what left (and would be reported as loss). The
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

/// Packets the client's `HOST_IF` has transmitted so far (every kind, ARP and ND too): what
/// the veth handed to its peer; an attempt the peer refused (queue full) is not counted.
pub fn client_tx_packets(lab: &Lab) -> Result<u64> {
    in_netns(lab.ns(Host::Client), tx_now)?
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
        // trafgen forks its sender and waits for it: a signal to the parent alone leaves the
        // sender running into the next trial. Its own process group is stopped as a whole.
        let mut cmd = lab.command(Host::Client, "trafgen");
        cmd.args(&args).process_group(0);
        let p = lab.spawn_command(cmd)?;
        let started = Instant::now();
        let st = p.wait_timeout(limit);
        let st = match st {
            Ok(Some(s)) => s,
            Ok(None) | Err(_) => {
                // Bounded in time (or lost track of): stop it; what it sent still counts.
                let stopped = stop_group(&p);
                st?;
                stopped?;
                eprintln!(
                    "  (trafgen stopped after {:.1} s, before sending {count})",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        };
        if !st.success() {
            stop_group(&p)?;
            bail!("trafgen exited with {st}: {}", p.stderr_tail(10));
        }
        Ok(())
    }
}

/// SIGTERM to the process group `p` leads (trafgen and the sender it forked), SIGKILL to the
/// group if it is still there after a grace period, then reaps `p`. The group is signalled
/// only while `p` is unreaped, so its id cannot belong to anyone else.
fn stop_group(p: &Proc) -> Result<()> {
    use nix::{
        errno::Errno,
        sys::signal::{killpg, Signal},
        unistd::Pid,
    };
    let pg = Pid::from_raw(i32::try_from(p.pid()).context("trafgen pid")?);
    let signal = |s: Signal| match killpg(pg, s) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{s} to trafgen's process group")),
    };
    if p.try_wait()?.is_none() {
        signal(Signal::SIGTERM)?;
        if p.wait_timeout(Duration::from_millis(1500))?.is_none() {
            signal(Signal::SIGKILL)?;
        }
    }
    p.stop()?;
    Ok(())
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
