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
//! account of the XDP program (`kernel.bpf_stats_enabled`), reported beside the profile.
//!
//! Each run must have measured the path its label names, or the section fails:
//! - switcher rows: the datapath's reason counters (pinned `REASON_COUNTERS`) are read around
//!   every run. Every packet the datapath rewrites ends with exactly one of `redirected`,
//!   `pass_mode` or `fib_fallback`; the row's own verdict must cover at least
//!   [`checks::ON_PATH_PCT`]%
//!   of those packets and of the packets the backend counted.
//! - the other rows claim the plain skb path: no XDP program may be attached to the edge's
//!   client-facing interface; the switcher rows must show one.
//! - every run: the client's test flow must be quiet before it starts and must not carry more
//!   packets than the run's pacer was asked for; the backend must get nearly all of them
//!   ([`MAX_LOSS_PCT`]): CPU per forwarded packet means little for a path that drops.

mod checks;
mod feed;
mod report;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use switcher_tests::lab::{BLUE_V4, VIP_V4};

use checks::{check_edge_xdp, check_verdicts, Verdicts};
use feed::{Feed, FrameSource};
use report::{chart, profile_table, ratio_line, table};
pub use report::{markdown, summary};

use crate::{
    contenders::{Kind, Stage},
    plot,
    profile::{self, BpfStats, Profile},
    report::Spread,
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

/// Packets above a run's count that can only be other traffic miscounted (see [`Offered`]),
/// not a second generator.
const OFFERED_SLACK: u64 = 10;

/// A run may lose at most this share of the frames asked for.
const MAX_LOSS_PCT: f64 = 2.0;

/// Below this, nftables' added CPU is too small to divide by.
const MIN_NFT_ADDED_NS: f64 = 20.0;

/// A run's generator must reach this share of the rate asked for. Not closer to 1: a run
/// ends with its last tick's sending, and in the XDP-frames feed a tick's frames cross the
/// whole path inside the pacer's call (under perf, a short run ended 5% over its schedule).
const MIN_RATE: f64 = 0.9;

#[derive(Debug, Clone)]
struct Run {
    /// Frames the pacer was asked to send.
    asked: u64,
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

    /// Of the frames asked for: what the client's interface refused is lost too.
    fn loss_pct(&self) -> f64 {
        100.0 * self.asked.saturating_sub(self.forwarded) as f64 / self.asked.max(1) as f64
    }
}

/// The contender's run of `count` packets, with counters and CPU around it. `send` runs the
/// pacer (plainly, or under perf) and returns its report.
fn run_once(
    stage: &Stage,
    kind: Kind,
    feed: Feed,
    count: u64,
    pps: u64,
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
    if paced.sent + paced.refused < count {
        bail!(
            "the pacer was stopped at its time limit after {} of {count} frames: the \
             measurement is invalid",
            paced.sent + paced.refused
        );
    }
    if paced.pps < pps as f64 * MIN_RATE {
        bail!(
            "the pacer reached {:.0} pps of the {pps} asked ({} of {} ticks late): the \
             contenders would not be compared at one rate; the measurement is invalid",
            paced.pps,
            paced.late_ticks,
            paced.ticks
        );
    }
    // The backend can count no more than was sent, unless another generator was sending
    // (for XDP frames the client's egress hook cannot see one).
    if forwarded > count + OFFERED_SLACK {
        bail!(
            "the backends counted {forwarded} test-flow packets in a run of {count}: another \
             generator was sending too; the measurement is invalid"
        );
    }
    let run = Run {
        asked: count,
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
            "{} of {} packets reached the backend ({:.2}% lost; {} left the client, {} refused \
             there): CPU per forwarded packet would measure a path that drops; the \
             measurement is invalid",
            forwarded,
            count,
            run.loss_pct(),
            run.offered,
            paced.refused,
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
    let run = run_once(stage, kind, feed, p.profile_packets, p.pps, || {
        Paced::parse(&profile::record(&cmd, &data)?)
    })?;
    let prof = Profile::read(&data);
    let _ = std::fs::remove_file(&data);
    let prof = prof?;
    // The XDP program must show in a switcher row's profile: with bpf_jit_kallsyms off, perf
    // cannot name it and its time would land nowhere.
    if stage.switcher_maps()?.is_some()
        && prof
            .stages
            .get(profile::SWITCHER_PROGRAM)
            .copied()
            .unwrap_or(0)
            == 0
    {
        bail!(
            "the profile of {} has no sample in the XDP program (is net.core.bpf_jit_kallsyms \
             on?): its breakdown would be wrong",
            kind.label()
        );
    }
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
                    run_once(&stage, kind, feed, p.packets, p.pps, || {
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
            "ticks": spread_of(rs, |r| r.paced.ticks as f64).json(),
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
        // A ratio to next to nothing says nothing (and flips sign with the noise).
        j["verdict"] = if b.iter().any(|y| *y < MIN_NFT_ADDED_NS) {
            json!(format!(
                "undefined: nftables added under {MIN_NFT_ADDED_NS} ns in a round"
            ))
        } else {
            json!(s.verdict("switcher adds less", "switcher adds more"))
        };
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
