//! Section 2, forwarding: one UDP flow from the client, paced smoothly (frame-pacer: the frames
//! due every 1 ms, in sendmmsg batches), through each contender on the edge, to a backend that
//! counts and drops it at its ingress hook.
//!
//! The figure is the CPU a contender adds over plain routing: the host's busy time (see
//! [`Cpu`]) over a run of a million-odd packets, per packet the backend counted, minus the
//! same for "direct" (the client addresses the backend, the edge only routes) in the same
//! round. Idle time is reported in 10 ms units, so a run is long enough to keep that under 1%
//! of its busy time. Contenders are interleaved, the order rotating every round, and the
//! rounds repeated: each figure is the median over rounds with its range, and the ratio of
//! switcher's added CPU to nftables' is taken per round; a range that holds 1.0 reads "no
//! difference".
//!
//! Then one profiled run per contender: `perf record -a -e cpu-clock` folded by symbol into
//! the stages of the path (see [`crate::profile`]), and for switcher the kernel's own run-time
//! account of the XDP program (`kernel.bpf_stats_enabled`) to check the profile against.
//!
//! Each run must have measured the path its label names, or the section fails:
//! - switcher rows: the datapath's reason counters (pinned `REASON_COUNTERS`) are read around
//!   every run. Every packet the datapath rewrites ends with exactly one of `redirected`,
//!   `pass_mode` or `fib_fallback`; the row's own verdict must cover at least [`ON_PATH_PCT`]%
//!   of those packets and of the packets the backend counted.
//! - the other rows claim the plain skb path: no XDP program may be attached to the edge's
//!   client-facing interface; the switcher rows must show one.
//! - every run: the client's test flow must be quiet before it starts and must not carry more
//!   packets than the run's pacer was asked for; the backend must get nearly all of them
//!   ([`MAX_LOSS_PCT`]): CPU per forwarded packet means little for a path that drops.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use switcher::datapath::MapReader;
use switcher_common::Reason;
use switcher_tests::{
    lab::{BLUE_V4, EDGE_TO_CLIENT, VIP_V4},
    loaded::LoadedDatapath,
};

use crate::{
    contenders::{Kind, Stage},
    plot,
    profile::{self, BpfStats, Profile},
    report::{Spread, Table},
    traffic::{
        backend_packets, check_quiet, install_backend_counters, install_offered_counter, Cpu,
        Offered, Paced, Pacer,
    },
    Opts,
};

/// Direct first: it is what the others are measured against.
const KINDS: [Kind; 4] = [
    Kind::Direct,
    Kind::SwitcherRedirect,
    Kind::SwitcherPass,
    Kind::Nft,
];

struct Params {
    pps: u64,
    /// Packets per measured run.
    packets: u64,
    rounds: usize,
    /// Packets of each contender's profiled run.
    profile_packets: u64,
}

impl Params {
    fn new(quick: bool) -> Params {
        if quick {
            Params {
                pps: 200_000,
                packets: 400_000,
                rounds: 3,
                profile_packets: 200_000,
            }
        } else {
            Params {
                pps: 200_000,
                packets: 1_500_000,
                rounds: 5,
                profile_packets: 1_000_000,
            }
        }
    }
}

/// How the edge receives the test flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// From a packet socket on the client: veth hands the edge an skb, and an XDP program
    /// there first copies it into a page with XDP headroom (what veth does).
    Skb,
    /// As XDP frames (`bench_tx` in live-frames mode on the client): the edge's veth gets a
    /// buffer, as a NIC driver does; an XDP program runs on it directly, the kernel path
    /// builds the skb from it.
    XdpFrames,
}

impl Feed {
    const ALL: [Feed; 2] = [Feed::Skb, Feed::XdpFrames];

    fn key(self) -> &'static str {
        match self {
            Feed::Skb => "skb",
            Feed::XdpFrames => "xdp_frames",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Feed::Skb => "packet socket (the edge's veth receives skbs)",
            Feed::XdpFrames => {
                "XDP frames (the edge's veth receives buffers, as from a NIC driver)"
            }
        }
    }
}

/// `bench_tx` from a private copy of the datapath, pinned for frame-pacer while it lives.
struct FrameSource {
    loaded: LoadedDatapath,
    pin: PathBuf,
}

impl FrameSource {
    fn load(tag: &str) -> Result<FrameSource> {
        let mut loaded = LoadedDatapath::load("bench-tx")?;
        let pin = PathBuf::from(format!("/sys/fs/bpf/switcher-bench-tx-{tag}"));
        let _ = std::fs::remove_file(&pin);
        loaded
            .dp()?
            .bench_program("bench_tx")?
            .pin(&pin)
            .with_context(|| format!("pinning bench_tx at {}", pin.display()))?;
        Ok(FrameSource { loaded, pin })
    }

    /// Makes `bench_tx` send `pacer`'s frame.
    fn aim(&mut self, pacer: &Pacer) -> Result<()> {
        self.loaded.dp()?.set_bench_frame(&pacer.bytes)
    }
}

impl Drop for FrameSource {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.pin) {
            eprintln!("bench: removing {}: {e}", self.pin.display());
        }
    }
}

/// Packets above a run's count that can only be other traffic miscounted (see [`Offered`]),
/// not a second generator.
const OFFERED_SLACK: u64 = 10;

/// A run may lose at most this share of what left the client.
const MAX_LOSS_PCT: f64 = 2.0;

/// Share of the rewritten (and of the forwarded) packets that must have taken a switcher row's
/// own path. The rest leaves room for the first packets of a run, which may take the kernel
/// while the neighbour entry is resolved (`fib_fallback`).
const ON_PATH_PCT: u64 = 99;

#[derive(Debug, Clone)]
struct Run {
    /// Test-flow datagrams that left the client.
    offered: u64,
    forwarded: u64,
    paced: Paced,
    busy_ns: u64,
    verdicts: Value,
}

impl Run {
    /// Busy CPU per forwarded packet.
    fn host_ns(&self) -> f64 {
        self.busy_ns as f64 / self.forwarded as f64
    }

    fn loss_pct(&self) -> f64 {
        100.0 * self.offered.saturating_sub(self.forwarded) as f64 / self.offered.max(1) as f64
    }
}

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

/// Proves that a run of a switcher row took the row's own path: its verdict covers
/// [`ON_PATH_PCT`]% of what the datapath rewrote and of what the backend got.
fn check_verdicts(kind: Kind, v: Verdicts, forwarded: u64) -> Result<Value> {
    let (want, n) = match kind {
        Kind::SwitcherRedirect => (Reason::Redirected.label(), v.redirected),
        Kind::SwitcherPass => (Reason::PassMode.label(), v.pass_mode),
        _ => bail!("{} has no datapath verdict to check", kind.label()),
    };
    // Nothing reaches the backend without crossing the XDP hook.
    let edge = v.rewritten().max(forwarded);
    if edge == 0 || n * 100 < edge * ON_PATH_PCT {
        bail!(
            "the datapath counted {want} for {n} of the {} packets it rewrote (redirected {}, \
             pass_mode {}, fib_fallback {}; the backend got {forwarded}); at least \
             {ON_PATH_PCT}% must be {want}, so this row did not measure its own path: the \
             measurement is invalid",
            v.rewritten(),
            v.redirected,
            v.pass_mode,
            v.fib_fallback,
        );
    }
    Ok(json!({
        "rewritten": v.rewritten(),
        "redirected": v.redirected,
        "pass_mode": v.pass_mode,
        "fib_fallback": v.fib_fallback,
        "forwarded": forwarded,
        "expected": want,
        "on_path_pct": 100.0 * n as f64 / edge as f64,
    }))
}

/// Fails unless the edge's client-facing interface has an XDP program exactly when `xdp`.
fn check_edge_xdp(stage: &Stage, xdp: bool) -> Result<()> {
    match (stage.edge_xdp()?, xdp) {
        (Some(p), false) => bail!(
            "an XDP program is attached to the edge's {EDGE_TO_CLIENT} ({}, id {}) where the \
             plain kernel path is measured: the measurement is invalid",
            p["prog"]["name"].as_str().unwrap_or("?"),
            p["prog"]["id"]
        ),
        (None, true) => bail!(
            "no XDP program is attached to the edge's {EDGE_TO_CLIENT}: the measurement is \
             invalid"
        ),
        _ => Ok(()),
    }
}

/// The contender's run of `count` packets, with counters and CPU around it. `send` runs the
/// pacer (plainly, or under perf) and returns its report.
fn run_once(
    stage: &Stage,
    kind: Kind,
    feed: Feed,
    count: u64,
    send: impl FnOnce() -> Result<Paced>,
) -> Result<Run> {
    let lab = &stage.lab;
    let maps = stage.switcher_maps()?;
    check_edge_xdp(stage, maps.is_some())?;
    let verdicts = || maps.as_ref().map(Verdicts::read).transpose();
    check_quiet(lab)?;
    let v0 = verdicts()?;
    let tx0 = Offered::before(lab)?;
    let fwd0 = backend_packets(lab)?;
    let cpu0 = Cpu::now()?;
    let paced = send()?;
    // What is still queued on the path is work for these packets.
    std::thread::sleep(Duration::from_millis(100));
    let cpu1 = Cpu::now()?;
    let tx1 = Offered::after(lab)?;
    let fwd1 = backend_packets(lab)?;
    let v1 = verdicts()?;
    let offered = match feed {
        Feed::Skb => tx1.since(tx0).0,
        // XDP frames pass no egress hook; a frame the edge's ring refused is lost there.
        Feed::XdpFrames => paced.sent,
    };
    if offered == 0 {
        bail!("the pacer offered nothing (the client's test-flow counter did not move)");
    }
    if offered > count + OFFERED_SLACK {
        bail!(
            "the client sent {offered} test-flow packets in a run of {count}: another \
             generator was sending too; the measurement is invalid"
        );
    }
    let forwarded = fwd1.saturating_sub(fwd0);
    let run = Run {
        offered: offered.min(count),
        forwarded,
        paced,
        busy_ns: cpu1.busy_ns_since(cpu0),
        verdicts: match (v0, v1) {
            (Some(a), Some(b)) => check_verdicts(kind, b.since(a), forwarded)?,
            _ => Value::Null,
        },
    };
    if forwarded == 0 || run.loss_pct() > MAX_LOSS_PCT {
        bail!(
            "{} of {} offered packets reached the backend ({:.2}% lost, the pacer reached {:.0} \
             pps with {} of {} ticks late): CPU per forwarded packet would measure a path \
             that drops; the measurement is invalid",
            forwarded,
            run.offered,
            run.loss_pct(),
            paced.pps,
            paced.late_ticks,
            paced.ticks
        );
    }
    Ok(run)
}

/// A few packets to warm caches, conntrack, the neighbour entry and the flow table; untimed.
fn warm(stage: &Stage, src: &Source<'_>) -> Result<()> {
    src.send(stage, 2000, 20_000)?;
    Ok(())
}

/// One contender's profiled run: the profile and the run's figures; for switcher then a run
/// with the kernel's statistics on (not under perf: they read the clock twice per packet,
/// which the profile would count) for the XDP program's own run time per packet.
fn profiled(stage: &Stage, kind: Kind, feed: Feed, src: &Source<'_>, p: &Params) -> Result<Value> {
    let data = stage
        .dir
        .join(format!("perf-{}-{}.data", feed.key(), kind.key()));
    let cmd = src
        .pacer
        .command(&stage.lab, p.profile_packets, p.pps, src.live);
    let run = run_once(stage, kind, feed, p.profile_packets, || {
        Paced::parse(&profile::record(&cmd, &data)?)
    })?;
    let prof = Profile::read(&data);
    let _ = std::fs::remove_file(&data);
    let prof = prof?;
    let xdp = match stage.edge_xdp()?.and_then(|x| x["prog"]["id"].as_u64()) {
        Some(id) => {
            let stats = BpfStats::enable()?;
            let (t0, c0) = profile::prog_run(id)?;
            src.send(stage, p.profile_packets / 2, p.pps)?;
            let (t1, c1) = profile::prog_run(id)?;
            drop(stats);
            if c1 <= c0 {
                bail!("bpf_stats counted no run of the XDP program (id {id})");
            }
            json!({"runs": c1 - c0, "ns_per_run": (t1 - t0) as f64 / (c1 - c0) as f64})
        }
        None => Value::Null,
    };
    Ok(json!({
        "feed": feed.key(),
        "key": kind.key(),
        "label": kind.label(),
        "forwarded": run.forwarded,
        "cpu_ns_per_forwarded": run.host_ns(),
        "profile": prof.to_json(run.forwarded),
        "bpf_stats_xdp_program": xdp,
    }))
}

/// What sends a contender's test flow in one feed.
struct Source<'a> {
    pacer: &'a Pacer,
    live: Option<&'a std::path::Path>,
}

impl<'a> Source<'a> {
    fn new(pacer: &'a Pacer, feed: Feed, frames: &'a FrameSource) -> Source<'a> {
        Source {
            pacer,
            live: (feed == Feed::XdpFrames).then_some(frames.pin.as_path()),
        }
    }

    fn send(&self, stage: &Stage, count: u64, pps: u64) -> Result<Paced> {
        self.pacer.send(&stage.lab, count, pps, self.live)
    }
}

pub fn run(opts: &Opts) -> Result<Value> {
    let p = Params::new(opts.quick);
    let mut stage = Stage::up("fwd")?;
    install_backend_counters(&stage.lab, &stage.dir)?;
    install_offered_counter(&stage.lab, &stage.dir)?;
    let via_vip = Pacer::new(&stage.lab, &stage.dir, VIP_V4)?;
    let direct = Pacer::new(&stage.lab, &stage.dir, BLUE_V4)?;
    let mut frames = FrameSource::load(stage.lab.prefix())?;
    let pacer = |kind: Kind| {
        if kind == Kind::Direct {
            &direct
        } else {
            &via_vip
        }
    };
    println!(
        "\nForwarding: one UDP flow paced at {} kpps (1 ms ticks), {} packets per run, {} rounds, contenders interleaved",
        p.pps / 1000,
        p.packets,
        p.rounds
    );

    let mut runs: BTreeMap<(&'static str, &'static str), Vec<Run>> = BTreeMap::new();
    for round in 0..p.rounds {
        for feed in Feed::ALL {
            let mut line = format!("  round {} {}:", round + 1, feed.key());
            for i in 0..KINDS.len() {
                let kind = KINDS[(i + round) % KINDS.len()];
                frames.aim(pacer(kind))?;
                let src = Source::new(pacer(kind), feed, &frames);
                stage
                    .start(kind)
                    .with_context(|| format!("starting {}", kind.label()))?;
                let r = warm(&stage, &src).and_then(|()| {
                    run_once(&stage, kind, feed, p.packets, || {
                        src.send(&stage, p.packets, p.pps)
                    })
                });
                stage.stop()?;
                let r = r.with_context(|| {
                    format!("round {}, {}: {}", round + 1, feed.key(), kind.label())
                })?;
                line += &format!(" {} {:.0} ns", kind.key(), r.host_ns());
                runs.entry((feed.key(), kind.key())).or_default().push(r);
            }
            println!("{line}");
        }
    }

    let mut profiles = Vec::new();
    for feed in Feed::ALL {
        for kind in KINDS {
            frames.aim(pacer(kind))?;
            let src = Source::new(pacer(kind), feed, &frames);
            stage.start(kind)?;
            let r = warm(&stage, &src).and_then(|()| profiled(&stage, kind, feed, &src, &p));
            stage.stop()?;
            profiles
                .push(r.with_context(|| format!("profiling {} ({})", kind.label(), feed.key()))?);
        }
    }
    drop(frames);
    drop(stage);

    let feeds = Feed::ALL
        .into_iter()
        .map(|feed| summarize(feed, &runs, &profiles))
        .collect::<Result<Vec<_>>>()?;
    let v = json!({
        "method": "CPU per forwarded packet: host busy CPU over a paced run (wall time × CPUs − idle − iowait from /proc/stat; the kernel stamps idle entry and exit, unlike the tick-sampled busy fields), divided by the packets counted at the backend (nft netdev ingress counter, dropped there). Added over direct: minus the same figure of the direct run (client → backend, the edge only routes) of the same round and feed. Contenders interleaved, the order rotating per round; medians and ranges over rounds",
        "generator": "frame-pacer pinned to the last CPU: the frames due every 1 ms; feed skb: AF_PACKET socket with PACKET_QDISC_BYPASS, sendmmsg batches; feed xdp_frames: bench_tx (XDP_TX) under BPF_PROG_TEST_RUN live-frames mode with the client's veth as ingress. One UDP flow, 142-byte frames",
        "offered_counted": "skb: test-flow datagrams that left the client (interface tx counter less other traffic an nft egress hook saw); xdp_frames: frames injected (a frame the edge's ring refused counts as lost)",
        "pps": p.pps,
        "packets_per_run": p.packets,
        "rounds": p.rounds,
        "max_loss_pct": MAX_LOSS_PCT,
        "feeds": feeds,
    });
    let png = opts.out.join("forwarding.png");
    plot::bars(&png, &chart(&v))?;
    println!("  plot: {}", png.display());
    for f in v["feeds"].as_array().into_iter().flatten() {
        println!("  {}", f["label"].as_str().unwrap_or("?"));
        print!("{}", table(f).text("    "));
        print!("{}", ratio_line(f));
        print!("{}", profile_table(f).text("    "));
    }
    Ok(v)
}

fn spread_of(runs: &[Run], f: impl Fn(&Run) -> f64) -> Spread {
    Spread::of(&runs.iter().map(f).collect::<Vec<_>>())
}

fn summarize(
    feed: Feed,
    runs: &BTreeMap<(&str, &str), Vec<Run>>,
    profiles: &[Value],
) -> Result<Value> {
    let of = |k: Kind| -> Result<&Vec<Run>> {
        runs.get(&(feed.key(), k.key()))
            .with_context(|| format!("no runs of {} ({})", k.label(), feed.key()))
    };
    let direct = of(Kind::Direct)?;
    // Added over plain routing, per round: each round's direct run is the reference.
    let added = |k: Kind| -> Result<Vec<f64>> {
        Ok(of(k)?
            .iter()
            .zip(direct)
            .map(|(r, d)| r.host_ns() - d.host_ns())
            .collect())
    };
    let mut rows = Vec::new();
    for kind in KINDS {
        let rs = of(kind)?;
        rows.push(json!({
            "key": kind.key(),
            "label": kind.label(),
            "runs": rs.len(),
            "packets_forwarded": rs.iter().map(|r| r.forwarded).sum::<u64>(),
            "offered_pps": spread_of(rs, |r| r.paced.pps).json(),
            "pacer_sent": rs.iter().map(|r| r.paced.sent).sum::<u64>(),
            "pacer_refused": rs.iter().map(|r| r.paced.refused).sum::<u64>(),
            "loss_pct": spread_of(rs, Run::loss_pct).json(),
            "late_ticks_pct": spread_of(rs, |r| 100.0 * r.paced.late_ticks as f64 / r.paced.ticks.max(1) as f64).json(),
            "cpu_ns_per_forwarded": spread_of(rs, Run::host_ns).json(),
            "added_over_direct_ns": Spread::of(&added(kind)?).json(),
            "datapath_verdicts": rs.iter().map(|r| r.verdicts.clone()).collect::<Vec<_>>(),
        }));
    }
    // switcher's added CPU over nftables', per round.
    let ratio = |k: Kind| -> Result<Value> {
        let (a, b) = (added(k)?, added(Kind::Nft)?);
        let v: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        let s = Spread::of(&v);
        let mut j = s.json();
        j["verdict"] = json!(s.verdict("switcher adds less", "switcher adds more"));
        Ok(j)
    };
    Ok(json!({
        "feed": feed.key(),
        "label": feed.label(),
        "contenders": rows,
        "ratio_to_nft": {
            "switcher_redirect": ratio(Kind::SwitcherRedirect)?,
            "switcher_pass": ratio(Kind::SwitcherPass)?,
        },
        "profiles": profiles.iter().filter(|p| p["feed"] == feed.key()).collect::<Vec<_>>(),
    }))
}

/// One panel per feed: CPU per forwarded packet of each contender, plain routing drawn across.
fn chart(v: &Value) -> Vec<plot::BarPanel> {
    v["feeds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|feed| {
            let rows: Vec<&Value> = feed["contenders"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            let direct = rows
                .iter()
                .find(|r| r["key"] == Kind::Direct.key())
                .map_or(f64::NAN, |r| f(&r["cpu_ns_per_forwarded"], "median"));
            plot::BarPanel {
                title: format!("Feed: {}", feed["label"].as_str().unwrap_or("?")),
                y_desc: "CPU ns per forwarded packet".into(),
                bars: rows
                    .iter()
                    .map(|r| {
                        let c = &r["cpu_ns_per_forwarded"];
                        plot::Bar {
                            label: r["label"]
                                .as_str()
                                .unwrap_or("?")
                                .replace(" (no switch)", "")
                                .replace(['(', ')'], ""),
                            median: f(c, "median"),
                            min: f(c, "min"),
                            max: f(c, "max"),
                        }
                    })
                    .collect(),
                reference: Some((direct, "plain routing (direct)".into())),
            }
        })
        .collect()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

/// "median (min–max)" of a spread object.
fn spread_text(v: &Value, decimals: usize) -> String {
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        f(v, "median"),
        f(v, "min"),
        f(v, "max"),
        d = decimals
    )
}

fn table(v: &Value) -> Table {
    let mut t = Table::new(&[
        "contender",
        "offered kpps",
        "loss %",
        "CPU/pkt ns",
        "added over direct ns",
    ]);
    for r in v["contenders"].as_array().into_iter().flatten() {
        let added = if r["key"] == Kind::Direct.key() {
            "–".to_string()
        } else {
            spread_text(&r["added_over_direct_ns"], 0)
        };
        t.row(vec![
            r["label"].as_str().unwrap_or("?").to_string(),
            format!("{:.0}", f(&r["offered_pps"], "median") / 1000.0),
            format!("{:.2}", f(&r["loss_pct"], "max")),
            spread_text(&r["cpu_ns_per_forwarded"], 0),
            added,
        ]);
    }
    t
}

fn ratio_line(v: &Value) -> String {
    let r = &v["ratio_to_nft"];
    let one = |k: &str, what: &str| {
        format!(
            "  {what} added / nftables added: {} → {}\n",
            spread_text(&r[k], 2),
            r[k]["verdict"].as_str().unwrap_or("?")
        )
    };
    one("switcher_redirect", "switcher (XDP redirect)")
        + &one("switcher_pass", "switcher (XDP pass)")
}

/// ns per forwarded packet of every stage, one column per contender.
fn profile_table(v: &Value) -> Table {
    let profiles: Vec<&Value> = v["profiles"].as_array().into_iter().flatten().collect();
    let mut stages: Vec<String> = profiles
        .iter()
        .flat_map(|p| {
            p["profile"]["stages_ns_per_packet"]
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys().cloned())
        })
        .collect();
    stages.sort();
    stages.dedup();
    let mut headers = vec!["stage (perf, ns per forwarded packet)".to_string()];
    headers.extend(
        profiles
            .iter()
            .map(|p| p["label"].as_str().unwrap_or("?").to_string()),
    );
    let mut t = Table {
        headers,
        rows: Vec::new(),
    };
    for s in &stages {
        let mut row = vec![s.clone()];
        for p in &profiles {
            row.push(format!(
                "{:.0}",
                p["profile"]["stages_ns_per_packet"][s]
                    .as_f64()
                    .unwrap_or(0.0)
            ));
        }
        t.row(row);
    }
    let mut total = vec!["all busy CPU (perf)".to_string()];
    let mut stat = vec!["all busy CPU (/proc/stat idle, same run)".to_string()];
    let mut bpf = vec!["XDP program, kernel's bpf_stats".to_string()];
    for p in &profiles {
        total.push(format!("{:.0}", f(&p["profile"], "busy_ns_per_packet")));
        stat.push(format!("{:.0}", f(p, "cpu_ns_per_forwarded")));
        bpf.push(match p["bpf_stats_xdp_program"]["ns_per_run"].as_f64() {
            Some(x) => format!("{x:.0}"),
            None => "–".into(),
        });
    }
    t.row(total);
    t.row(stat);
    t.row(bpf);
    t
}

/// Markdown for results.md.
pub fn markdown(v: &Value) -> String {
    let mut s = format!(
        "One UDP flow paced at {:.0} kpps in 1 ms ticks (frame-pacer, pinned to one CPU), {} packets per run, {} rounds with the contenders interleaved (order rotating). \
         CPU per forwarded packet = host busy CPU (wall × CPUs − idle, from /proc/stat) over the run / packets counted at the backend; \"added over direct\" subtracts the \
         direct run (the edge only routes) of the same round. Median (min–max) over rounds. Two feeds: from a packet socket (the edge's veth receives skbs) \
         and as XDP frames (live-frames mode: the edge's veth receives buffers, as from a NIC driver).\n",
        f(v, "pps") / 1000.0,
        v["packets_per_run"],
        v["rounds"],
    );
    for feed in v["feeds"].as_array().into_iter().flatten() {
        s += &format!(
            "\n#### Feed: {}\n\n{}\n{}\n\
             Where the time goes, one profiled run per contender (`perf record -a -e cpu-clock`, every sample {} µs of CPU, folded by symbol):\n\n{}",
            feed["label"].as_str().unwrap_or("?"),
            table(feed).markdown(),
            ratio_line(feed).replace("  ", "- "),
            profile::PERIOD_NS as f64 / 1000.0,
            profile_table(feed).markdown()
        );
    }
    s
}

/// Headlines for the final summary.
pub fn summary(v: &Value) -> Vec<[String; 2]> {
    let mut out = Vec::new();
    for feed in v["feeds"].as_array().into_iter().flatten() {
        let fk = feed["feed"].as_str().unwrap_or("?");
        for r in feed["contenders"].as_array().into_iter().flatten() {
            out.push([
                format!("{fk}: {} CPU/pkt", r["label"].as_str().unwrap_or("?")),
                format!(
                    "{} ns, added over direct {} ns",
                    spread_text(&r["cpu_ns_per_forwarded"], 0),
                    spread_text(&r["added_over_direct_ns"], 0)
                ),
            ]);
        }
        let r = &feed["ratio_to_nft"]["switcher_redirect"];
        out.push([
            format!("{fk}: switcher redirect added / nftables added"),
            format!(
                "{} ({})",
                spread_text(r, 2),
                r["verdict"].as_str().unwrap_or("?")
            ),
        ]);
    }
    out
}
