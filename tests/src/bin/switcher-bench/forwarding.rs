//! Section 2, forwarding: one UDP flow from trafgen on the client, through each contender on
//! the edge, to a backend that counts and drops it at its ingress hook.
//!
//! On 2 vCPUs the generator saturates first, so packets per second barely separate the
//! contenders. CPU time does: the host's busy time (/proc/stat) over a run at a fixed offered
//! rate, minus a baseline run in which the edge drops every packet at the earliest hook of the
//! contender's own receive path (generator and delivery cost only), divided by the packets the
//! backend got. An XDP program changes veth's receive path (each skb becomes an xdp_buff, maybe
//! copied), which only the XDP contenders pay: their baseline drops in XDP (`bench_drop`); the
//! others' drops at netdev ingress (nft) with no XDP program attached. Each contender's
//! baseline is measured right before it, to follow drifting background load.
//! Then the highest offered rate with zero loss, by binary search (RFC 2544 style), up to what
//! the generator can offer.
//!
//! Each row must have measured the path its label names, or the section fails:
//! - switcher rows: the datapath's reason counters (pinned `REASON_COUNTERS`) are read around
//!   the CPU trial and around the loss-free search. Every packet the datapath rewrites ends
//!   with exactly one of `redirected`, `pass_mode` or `fib_fallback`; the row's own verdict
//!   (`redirected` for "XDP redirect", `pass_mode` for "XDP pass") must cover at least
//!   [`ON_PATH_PCT`]% of those packets and of the packets the backend counted (none reaches the
//!   backend without crossing the edge's XDP hook). A redirect row that in fact fell back to
//!   the kernel (XDP_PASS), or a pass row that redirected, measured another contender.
//!   The remaining 1% leaves room for the first packets of a run, which may take the kernel
//!   while the neighbour entry is resolved (`fib_fallback`).
//! - the other rows, and the netdev-ingress baselines, claim the plain skb path: no XDP
//!   program may be attached to the edge's client-facing interface (a left-over program would
//!   change veth's receive path); the switcher rows must show one (which also proves the
//!   check can see it).
//! - baselines: the edge's drop must have seen at least half the offered packets (as before).
//! - every trial: the client's test flow must be quiet before it starts and must not carry
//!   more packets than the trial's trafgen was asked for (a generator of an earlier trial
//!   still sending would be counted as this trial's offered load). trafgen forks its sender,
//!   so a time-bounded run is stopped by signalling its whole process group.
//!
//! Offered packets are those that left the client, not send attempts: a packet the client's
//! veth refuses is sent again by trafgen and would otherwise count twice, as loss (see
//! [`crate::traffic::Offered`]); the repeats are reported as `send_retries`.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use aya::programs::{xdp::XdpLinkId, XdpMode};
use serde_json::{json, Value};
use switcher::datapath::MapReader;
use switcher_common::Reason;
use switcher_tests::{
    lab::{in_netns, Host, BLUE_V4, EDGE_TO_CLIENT, VIP_V4},
    loaded::LoadedDatapath,
};

use crate::{
    contenders::{Kind, Stage, UDP_PORT},
    traffic::{
        backend_packets, check_quiet, install_backend_counters, install_offered_counter,
        netns_pids, nft_counter, nft_load, Cpu, Generator, Offered, Window,
    },
    Opts,
};

const KINDS: [Kind; 5] = [
    Kind::SwitcherRedirect,
    Kind::SwitcherPass,
    Kind::Nft,
    Kind::Nginx,
    Kind::Direct,
];

struct Params {
    /// The fixed offered rate of the CPU comparison.
    pps: u64,
    secs: f64,
    search_secs: f64,
    search_steps: u32,
}

impl Params {
    fn new(quick: bool) -> Params {
        if quick {
            Params {
                pps: 100_000,
                secs: 1.0,
                search_secs: 0.5,
                search_steps: 2,
            }
        } else {
            Params {
                pps: 300_000,
                secs: 4.0,
                search_secs: 1.5,
                search_steps: 5,
            }
        }
    }
}

/// `bench_drop` from a private copy of the datapath, attached to the edge's client side only
/// while a baseline runs. Its pins go with it.
struct EdgeDrop {
    loaded: LoadedDatapath,
    ns: String,
}

impl EdgeDrop {
    fn load(stage: &Stage) -> Result<EdgeDrop> {
        let mut loaded = LoadedDatapath::load("bench-fwd")?;
        loaded.dp()?.bench_program("bench_drop")?;
        Ok(EdgeDrop {
            loaded,
            ns: stage.lab.ns(Host::Edge).to_owned(),
        })
    }

    fn attach(&mut self) -> Result<XdpLinkId> {
        let ns = self.ns.clone();
        let dp = self.loaded.dp()?;
        // The interface name resolves in the namespace of the attaching thread.
        in_netns(&ns, || -> Result<XdpLinkId> {
            dp.bench_program("bench_drop")?
                .attach(EDGE_TO_CLIENT, XdpMode::Driver)
                .context("attaching bench_drop to the edge")
        })?
    }

    fn detach(&mut self, link: XdpLinkId) -> Result<()> {
        let ns = self.ns.clone();
        let dp = self.loaded.dp()?;
        in_netns(&ns, || -> Result<()> {
            dp.bench_program("bench_drop")?
                .detach(link)
                .context("detaching bench_drop")
        })?
    }
}

/// Where a baseline drops the test traffic on the edge: the earliest hook of the contender's
/// own receive path, so the baseline pays for that path's receive work and nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropAt {
    /// `bench_drop` attached in XDP: the path the XDP contenders' packets take.
    Xdp,
    /// An nft netdev ingress hook, no XDP program: the plain skb path of everyone else.
    NetdevIngress,
}

impl DropAt {
    fn of(kind: Kind) -> DropAt {
        match kind {
            Kind::SwitcherRedirect | Kind::SwitcherPass => DropAt::Xdp,
            Kind::Nft | Kind::Nginx | Kind::Direct => DropAt::NetdevIngress,
        }
    }

    fn key(self) -> &'static str {
        match self {
            DropAt::Xdp => "xdp_drop",
            DropAt::NetdevIngress => "netdev_ingress_drop",
        }
    }

    fn describe(self) -> String {
        match self {
            DropAt::Xdp => format!("bench_drop (XDP, driver mode) on the edge's {EDGE_TO_CLIENT}"),
            DropAt::NetdevIngress => format!(
                "nft netdev ingress hook on the edge's {EDGE_TO_CLIENT} dropping udp dport {UDP_PORT}, no XDP program attached"
            ),
        }
    }
}

const EDGE_DROP_TABLE: &str = "switcher_bench_drop";

/// The netdev ingress drop on the edge, present only while a baseline runs; deleted on drop,
/// also when the run fails.
struct NftDrop<'a> {
    stage: &'a Stage,
    armed: bool,
}

impl<'a> NftDrop<'a> {
    fn install(stage: &'a Stage) -> Result<NftDrop<'a>> {
        let rules = format!(
            "table netdev {EDGE_DROP_TABLE} {{\n  counter dropped {{}}\n  chain in {{\n    type filter hook ingress device \"{EDGE_TO_CLIENT}\" priority -500; policy accept;\n    ip protocol udp udp dport {UDP_PORT} counter name \"dropped\" drop\n  }}\n}}\n"
        );
        // `nft -f` is one transaction: if it fails there is nothing to delete.
        nft_load(&stage.lab, Host::Edge, &stage.dir, "edge-drop.nft", &rules)?;
        Ok(NftDrop { stage, armed: true })
    }

    fn packets(&self) -> Result<u64> {
        nft_counter(&self.stage.lab, Host::Edge, EDGE_DROP_TABLE, "dropped")
    }

    fn delete(&self) -> Result<()> {
        self.stage.lab.run(
            Host::Edge,
            &["nft", "delete", "table", "netdev", EDGE_DROP_TABLE],
        )?;
        Ok(())
    }

    fn remove(mut self) -> Result<()> {
        self.armed = false;
        self.delete()
    }
}

impl Drop for NftDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.delete() {
                eprintln!("bench: removing the edge's nft drop: {e:#}");
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Trial {
    /// Test-flow datagrams that left the client.
    offered: u64,
    /// Send attempts the client's veth refused and trafgen repeated.
    retried: u64,
    forwarded: u64,
    /// Seen by the edge's drop (baselines only).
    edge: u64,
    /// Steady sending, timed from the client's counters (not trafgen's start, exit or idle).
    window: Window,
    cpu: Cpu,
}

impl Trial {
    fn pps(&self) -> f64 {
        self.window.pps()
    }

    fn lost(&self) -> u64 {
        self.offered.saturating_sub(self.forwarded)
    }
}

/// Packets above a trial's count that can only be other traffic miscounted (see
/// [`Offered`]), not a second generator.
const OFFERED_SLACK: u64 = 10;

/// Packets the edge's baseline drop has seen so far.
type EdgeCount<'a> = &'a dyn Fn() -> Result<u64>;

/// One generator run: counters and CPU around it.
fn trial(
    stage: &Stage,
    gen: &Generator,
    edge: Option<EdgeCount<'_>>,
    pps: Option<u64>,
    secs: f64,
) -> Result<Trial> {
    let lab = &stage.lab;
    // Unpaced runs are bounded by time; give them enough packets for ~2 Mpps.
    let count = match pps {
        Some(r) => ((r as f64 * secs) as u64).max(1),
        None => (2_000_000.0 * secs) as u64,
    };
    let limit = Duration::from_secs_f64(secs * 1.5 + 1.0);
    check_quiet(lab)?;
    let e0 = edge.map(|f| f()).transpose()?;
    let tx0 = Offered::before(lab)?;
    let fwd0 = backend_packets(lab)?;
    let pids = netns_pids(lab, Host::Edge)?;
    let cpu0 = Cpu::now(&pids)?;
    let window = gen.send(lab, count, pps, limit)?;
    // In the window: what the contender still has queued (nginx) is work for these packets.
    std::thread::sleep(Duration::from_millis(100));
    let cpu1 = Cpu::now(&pids)?;
    let tx1 = Offered::after(lab)?;
    let fwd1 = backend_packets(lab)?;
    let e1 = edge.map(|f| f()).transpose()?;
    let (offered, attempts) = tx1.since(tx0);
    if offered == 0 {
        bail!("trafgen offered nothing (the client's test-flow counter did not move)");
    }
    // trafgen sends at most `count`; a few more can only be a stray ARP counted as test flow.
    if offered > count + OFFERED_SLACK {
        bail!(
            "the client sent {offered} test-flow packets in a trial of {count}: another \
             generator was sending too; the measurement is invalid"
        );
    }
    let offered = offered.min(count);
    let Some(window) = window else {
        bail!("could not time the generator: it sent {offered} packets in too short a burst");
    };
    Ok(Trial {
        offered,
        retried: attempts.saturating_sub(offered),
        forwarded: fwd1.saturating_sub(fwd0),
        edge: e1.unwrap_or(0).saturating_sub(e0.unwrap_or(0)),
        window,
        cpu: cpu1.since(cpu0),
    })
}

/// Share of the rewritten (and of the forwarded) packets that must have taken a switcher
/// row's own path; see the module doc.
const ON_PATH_PCT: u64 = 99;

/// The switcher datapath's verdicts on the packets it rewrote, from its reason counters
/// (summed over CPUs): each rewritten packet gets exactly one of the three.
#[derive(Debug, Clone, Copy, Default)]
struct Verdicts {
    redirected: u64,
    pass_mode: u64,
    fib_fallback: u64,
}

impl Verdicts {
    fn read(maps: &MapReader) -> Result<Verdicts> {
        let mut v = Verdicts::default();
        for (reason, n) in maps.reasons()? {
            match reason {
                Reason::Redirected => v.redirected = n,
                Reason::PassMode => v.pass_mode = n,
                Reason::FibFallback => v.fib_fallback = n,
                _ => {}
            }
        }
        Ok(v)
    }

    fn since(self, e: Verdicts) -> Verdicts {
        Verdicts {
            redirected: self.redirected.saturating_sub(e.redirected),
            pass_mode: self.pass_mode.saturating_sub(e.pass_mode),
            fib_fallback: self.fib_fallback.saturating_sub(e.fib_fallback),
        }
    }

    fn rewritten(&self) -> u64 {
        self.redirected + self.pass_mode + self.fib_fallback
    }
}

/// How a switcher row's packets must leave the datapath: the verdict and its label.
fn own_verdict(kind: Kind, v: &Verdicts) -> Option<(&'static str, u64)> {
    match kind {
        Kind::SwitcherRedirect => Some((Reason::Redirected.label(), v.redirected)),
        Kind::SwitcherPass => Some((Reason::PassMode.label(), v.pass_mode)),
        Kind::Nft | Kind::Nginx | Kind::Direct => None,
    }
}

/// Proves that `what` (a trial or a set of trials) of a switcher row took the row's own path:
/// its verdict covers [`ON_PATH_PCT`]% of what the datapath rewrote and of what the backend
/// got. Returns the counts for the results.
fn check_verdicts(kind: Kind, what: &str, v: Verdicts, forwarded: u64) -> Result<Value> {
    let Some((want, n)) = own_verdict(kind, &v) else {
        bail!("{} has no datapath verdict to check", kind.label());
    };
    // What the edge counted: nothing reaches the backend without crossing the XDP hook.
    let edge = v.rewritten().max(forwarded);
    let counts = json!({
        "rewritten": v.rewritten(),
        "redirected": v.redirected,
        "pass_mode": v.pass_mode,
        "fib_fallback": v.fib_fallback,
        "forwarded": forwarded,
        "expected": want,
        "on_path_pct": if edge == 0 { Value::Null } else { json!(100.0 * n as f64 / edge as f64) },
    });
    if edge == 0 || n * 100 < edge * ON_PATH_PCT {
        bail!(
            "{what}: the datapath counted {want} for {n} of the {} packets it rewrote \
             (redirected {}, pass_mode {}, fib_fallback {}; the backend got {forwarded}); at \
             least {ON_PATH_PCT}% must be {want}, so this row did not measure its own path: the \
             measurement is invalid",
            v.rewritten(),
            v.redirected,
            v.pass_mode,
            v.fib_fallback,
        );
    }
    Ok(counts)
}

/// Fails unless the edge's client-facing interface has an XDP program exactly when `xdp`.
fn check_edge_xdp(stage: &Stage, xdp: bool) -> Result<()> {
    match (stage.edge_xdp()?, xdp) {
        (Some(p), false) => bail!(
            "an XDP program is attached to the edge's {EDGE_TO_CLIENT} ({}, id {}) \
             where the plain kernel path is measured: the measurement is invalid",
            p["prog"]["name"].as_str().unwrap_or("?"),
            p["prog"]["id"]
        ),
        (None, true) => bail!(
            "no XDP program is attached to the edge's {EDGE_TO_CLIENT}: the measurement \
             is invalid"
        ),
        _ => Ok(()),
    }
}

/// A run with the edge dropping everything at `at`.
fn baseline(
    stage: &Stage,
    gen: &Generator,
    edge: &mut EdgeDrop,
    at: DropAt,
    pps: Option<u64>,
    secs: f64,
) -> Result<Trial> {
    let t = match at {
        DropAt::Xdp => {
            let link = edge.attach()?;
            let loaded = &edge.loaded;
            let count = || -> Result<u64> { loaded.reference_packets() };
            let t = trial(stage, gen, Some(&count), pps, secs);
            let d = edge.detach(link);
            let t = t?;
            d?;
            t
        }
        DropAt::NetdevIngress => {
            check_edge_xdp(stage, false)?;
            let drop = NftDrop::install(stage)?;
            let count = || drop.packets();
            let t = trial(stage, gen, Some(&count), pps, secs);
            let r = drop.remove();
            let t = t?;
            r?;
            t
        }
    };
    if t.edge < t.offered / 2 {
        bail!(
            "baseline invalid: the edge's {} saw {} of {} offered packets",
            at.key(),
            t.edge,
            t.offered
        );
    }
    Ok(t)
}

pub fn run(opts: &Opts) -> Result<Value> {
    let p = Params::new(opts.quick);
    let mut stage = Stage::up("fwd")?;
    install_backend_counters(&stage.lab, &stage.dir)?;
    install_offered_counter(&stage.lab, &stage.dir)?;
    let mut edge = EdgeDrop::load(&stage)?;
    let via_vip = Generator::new(&stage.lab, &stage.dir, VIP_V4)?;
    let direct = Generator::new(&stage.lab, &stage.dir, BLUE_V4)?;

    // What the generator alone can offer; into XDP, the cheapest receive path.
    let gmax = baseline(
        &stage,
        &via_vip,
        &mut edge,
        DropAt::Xdp,
        None,
        p.secs.min(2.0),
    )
    .context("the generator's maximum (unpaced, into the XDP drop)")?;
    let gen_max = gmax.pps() as u64;
    println!(
        "\nForwarding: one UDP flow from trafgen, {} kpps asked for {:.1} s per run (trafgen sends each second's packets in one burst); the generator alone reaches {:.0} kpps",
        p.pps / 1000,
        p.secs,
        gmax.pps() / 1000.0
    );
    let mut rows = Vec::new();
    for kind in KINDS {
        let gen = if kind == Kind::Direct {
            &direct
        } else {
            &via_vip
        };
        let base = baseline(
            &stage,
            gen,
            &mut edge,
            DropAt::of(kind),
            Some(p.pps),
            p.secs,
        )
        .with_context(|| format!("{}: baseline {}", kind.label(), DropAt::of(kind).key()))?;
        stage
            .start(kind)
            .with_context(|| format!("starting {}", kind.label()))?;
        let row = (|| {
            let maps = stage.switcher_maps()?;
            check_edge_xdp(&stage, maps.is_some())?;
            measure(&stage, gen, kind, &p, &base, gen_max, maps.as_ref())
        })();
        stage.stop()?;
        rows.push(row.with_context(|| kind.label())?);
    }
    drop(stage);
    print_table(&rows);
    Ok(json!({
        "method": "host busy CPU (/proc/stat) over a run at a fixed offered rate, minus the same run with the edge dropping every packet at the earliest hook of the contender's own receive path (baseline.drop_at: xdp_drop = bench_drop in XDP for switcher; netdev_ingress_drop = nft netdev ingress with no XDP program for the others), per packet counted at the backend (nft netdev ingress counter, dropped there); *_kernel_and_lab: the same with only the host's kernel time plus the user time of the lab's processes (trafgen, nginx, the daemon), less sensitive to other users of a shared machine",
        "offered_counted": "test-flow datagrams that left the client: the interface's tx counter (what the veth's peer took) minus the other packets an nft netdev egress hook saw leave (ARP, ND), at most the hook's test-flow count (udp sport/dport), which counts send attempts: a packet the veth refuses is sent again by trafgen (ENOBUFS) and counted again, reported as send_retries; offered_pps is the rate while trafgen was sending, timed from the client's tx counter sampled every 5 ms, its start, exit and idle time left out. trafgen -b paces per second: it sends each second's packets in one burst as fast as the path takes them, then sleeps; so offered_pps is that burst rate, above asked_pps, and loss and the loss-free search reflect such bursts",
        "offered_pps_target": p.pps,
        "run_seconds": p.secs,
        "generator": "trafgen -P 1, one UDP flow, 142-byte frames",
        "generator_max_pps": gen_max,
        "generator_max_drop_at": DropAt::Xdp.key(),
        "datapath_verdicts": format!("switcher rows: deltas of the datapath's reason counters over the CPU trial and over the loss-free search; every rewritten packet ends redirected, pass_mode or fib_fallback; the row's own verdict (redirected for XDP redirect, pass_mode for XDP pass) must be at least {ON_PATH_PCT}% of max(rewritten, forwarded), else the section fails"),
        "contenders": rows,
    }))
}

fn measure(
    stage: &Stage,
    gen: &Generator,
    kind: Kind,
    p: &Params,
    base: &Trial,
    gen_max: u64,
    maps: Option<&MapReader>,
) -> Result<Value> {
    let verdicts = || maps.map(Verdicts::read).transpose();
    // A few packets to warm caches, conntrack, nginx's session and the flow table; untimed
    // (trafgen sends so few in a burst too short to time).
    gen.send(&stage.lab, 1000, Some(10_000), Duration::from_secs(2))?;
    let v0 = verdicts()?;
    let t = trial(stage, gen, None, Some(p.pps), p.secs).context("CPU trial")?;
    let v1 = verdicts()?;
    if t.forwarded == 0 {
        bail!(
            "CPU trial: nothing reached the backend ({} offered): the measurement is invalid",
            t.offered
        );
    }
    let trial_verdicts = match (v0, v1) {
        (Some(a), Some(b)) => check_verdicts(kind, "CPU trial", b.since(a), t.forwarded)?,
        _ => Value::Null,
    };
    // Contender minus generator, per forwarded packet.
    let per_fwd = |run: u64, base_run: u64| {
        let base_per_offered = base_run as f64 / base.offered as f64;
        (run as f64 - base_per_offered * t.offered as f64) / t.forwarded as f64
    };
    let cpu_host = per_fwd(t.cpu.host_ns, base.cpu.host_ns);
    let cpu_lab = per_fwd(t.cpu.lab_ns, base.cpu.lab_ns);

    // Highest loss-free offered rate: first at the generator's maximum, then bisect.
    let mut trials = Vec::new();
    let (mut lo, mut hi) = (0u64, gen_max);
    let mut best: Option<f64> = None;
    let mut generator_bound = false;
    let top = trial(stage, gen, None, Some(gen_max), p.search_secs)
        .with_context(|| format!("loss-free search, trial at {gen_max} pps"))?;
    let mut search_forwarded = top.forwarded;
    trials.push(json!({"pps": top.pps(), "lost": top.lost(), "send_retries": top.retried}));
    if top.lost() == 0 {
        best = Some(top.pps());
        generator_bound = true;
    } else {
        // Paced trafgen may fall short of the rate asked for: search below what it offered.
        hi = hi.min(top.pps() as u64);
        for _ in 0..p.search_steps {
            let mid = (lo + hi) / 2;
            let t = trial(stage, gen, None, Some(mid.max(1000)), p.search_secs)
                .with_context(|| format!("loss-free search, trial at {} pps", mid.max(1000)))?;
            search_forwarded += t.forwarded;
            trials.push(json!({"pps": t.pps(), "lost": t.lost(), "send_retries": t.retried}));
            if t.lost() == 0 {
                lo = mid;
                best = Some(best.map_or(t.pps(), |b: f64| b.max(t.pps())));
            } else {
                hi = mid;
            }
        }
    }
    let search_verdicts = match (v1, verdicts()?) {
        (Some(a), Some(b)) => {
            check_verdicts(kind, "loss-free search", b.since(a), search_forwarded)?
        }
        _ => Value::Null,
    };
    Ok(json!({
        "key": kind.key(),
        "label": kind.label(),
        "offered": t.offered,
        "send_retries": t.retried,
        "offered_pps": t.pps(),
        "asked_pps": p.pps,
        "window_seconds": t.window.secs,
        "forwarded": t.forwarded,
        "lost": t.lost(),
        "loss_pct": 100.0 * t.lost() as f64 / t.offered as f64,
        "cpu_ns_per_forwarded": cpu_host,
        "cpu_ns_per_forwarded_kernel_and_lab": cpu_lab,
        "busy_ms": t.cpu.host_ns as f64 / 1e6,
        "baseline": {
            "drop_at": DropAt::of(kind).key(),
            "hook": DropAt::of(kind).describe(),
            "offered": base.offered,
            "offered_pps": base.pps(),
            "edge_dropped": base.edge,
            "busy_ms": base.cpu.host_ns as f64 / 1e6,
            "cpu_ns_per_offered": base.cpu.host_ns as f64 / base.offered as f64,
        },
        "max_loss_free_pps": best,
        "max_loss_free_is_generator_max": generator_bound,
        "search_upper_pps": hi,
        "search_trials": trials,
        "datapath_verdicts": {
            "cpu_trial": trial_verdicts,
            "loss_free_search": search_verdicts,
        },
    }))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn loss_free(v: &Value) -> String {
    match v["max_loss_free_pps"].as_f64() {
        None => format!("< {:.0} kpps", f(v, "search_upper_pps") / 1000.0),
        Some(x) if v["max_loss_free_is_generator_max"] == true => {
            format!(">= {:.0} kpps (generator limit)", x / 1000.0)
        }
        Some(x) => format!("{:.0} kpps", x / 1000.0),
    }
}

/// The datapath's verdict on a switcher row's CPU trial ("-" for the other rows).
fn verdict(r: &Value) -> String {
    let v = &r["datapath_verdicts"]["cpu_trial"];
    if v.is_null() {
        return "-".into();
    }
    format!(
        "{} {}/{} ({:.2}%)",
        v["expected"].as_str().unwrap_or("?"),
        match v["expected"].as_str() {
            Some("redirected") => &v["redirected"],
            _ => &v["pass_mode"],
        },
        v["rewritten"],
        f(v, "on_path_pct")
    )
}

fn print_table(rows: &[Value]) {
    println!(
        "  {:<26} {:>10} {:>12} {:>9} {:>14} {:>18} {:>30}  datapath verdict (CPU trial)",
        "contender",
        "offered",
        "forwarded",
        "loss",
        "CPU/pkt host",
        "CPU/pkt kern+lab",
        "max loss-free rate",
    );
    for r in rows {
        println!(
            "  {:<26} {:>6.0} kpps {:>12} {:>8.2}% {:>11.0} ns {:>15.0} ns {:>30}  {}",
            r["label"].as_str().unwrap_or("?"),
            f(r, "offered_pps") / 1000.0,
            r["forwarded"],
            f(r, "loss_pct"),
            f(r, "cpu_ns_per_forwarded"),
            f(r, "cpu_ns_per_forwarded_kernel_and_lab"),
            loss_free(r),
            verdict(r)
        );
    }
}

/// Markdown table of this section's results for results.md.
pub fn markdown(v: &Value) -> String {
    let mut s = format!(
        "One UDP flow from trafgen (the generator alone reaches {:.0} kpps). CPU per forwarded packet = host busy CPU over the run minus a baseline run, \
         divided by packets counted at the backend; each contender's generator + delivery baseline is a drop at the earliest hook of its own receive path: \
         XDP for switcher, netdev ingress (nft, no XDP program attached) for the others, since attaching XDP changes veth's receive path. \
         Offered packets are the test flow's, counted leaving the client; rates are timed over steady sending. trafgen paces per second \
         (each second's packets leave in one burst at the path's speed), so offered rates are burst rates, above the {:.0} kpps asked. \"kernel + lab\" counts only \
         the host's kernel time and the lab processes' user time. The switcher rows' datapath verdict \
         is from its reason counters over the CPU trial: packets sent on by the row's own path / packets the XDP program rewrote \
         (a switcher row below 99%, or a kernel-path row with an XDP program attached, fails the section).\n\n\
         | contender | offered | loss | CPU per forwarded packet (host) | (kernel + lab) | highest loss-free rate | datapath verdict |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        f(v, "generator_max_pps") / 1000.0,
        f(v, "offered_pps_target") / 1000.0
    );
    for r in v["contenders"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {:.0} kpps | {:.2}% | {:.0} ns | {:.0} ns | {} | {} |\n",
            r["label"].as_str().unwrap_or("?"),
            f(r, "offered_pps") / 1000.0,
            f(r, "loss_pct"),
            f(r, "cpu_ns_per_forwarded"),
            f(r, "cpu_ns_per_forwarded_kernel_and_lab"),
            loss_free(r),
            verdict(r)
        );
    }
    s
}

/// Headlines for the final summary.
pub fn summary(v: &Value) -> Vec<[String; 2]> {
    v["contenders"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            [
                format!(
                    "{} at {:.0} kpps",
                    r["label"].as_str().unwrap_or("?"),
                    f(r, "offered_pps") / 1000.0
                ),
                format!(
                    "{:.0} ns/pkt (kernel+lab {:.0}), loss {:.2}%, loss-free {}{}",
                    f(r, "cpu_ns_per_forwarded"),
                    f(r, "cpu_ns_per_forwarded_kernel_and_lab"),
                    f(r, "loss_pct"),
                    loss_free(r),
                    match verdict(r).as_str() {
                        "-" => String::new(),
                        v => format!(", datapath {v}"),
                    }
                ),
            ]
        })
        .collect()
}
