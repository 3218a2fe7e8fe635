//! Section 2, forwarding: one UDP flow from trafgen on the client, through each contender on
//! the edge, to a backend that counts and drops it at its ingress hook.
//!
//! On 2 vCPUs the generator saturates first, so packets per second barely separate the
//! contenders. CPU time does: the host's busy time (/proc/stat) over a run at a fixed offered
//! rate, minus a baseline run in which the edge drops every packet at XDP ingress
//! (`bench_drop`: generator and veth cost only), divided by the packets the backend got. Each
//! contender's baseline is measured right before it, to follow drifting background load.
//! Then the highest offered rate with zero loss, by binary search (RFC 2544 style), up to what
//! the generator can offer.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use aya::programs::{xdp::XdpLinkId, XdpMode};
use serde_json::{json, Value};
use switcher::datapath::{self, Datapath};
use switcher_tests::lab::{in_netns, Host, BLUE_V4, EDGE_TO_CLIENT, HOST_IF, VIP_V4};

use crate::{
    contenders::{Kind, Stage},
    traffic::{
        backend_packets, install_backend_counters, link_packets, netns_pids, Cpu, Generator,
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
/// while a baseline runs.
struct EdgeDrop {
    dp: Option<Datapath>,
    pins: PathBuf,
    ns: String,
}

impl EdgeDrop {
    fn load(stage: &Stage) -> Result<EdgeDrop> {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/switcher-bench-fwd-{}",
            std::process::id()
        ));
        let dp = Datapath::load(&dir)?;
        // The guard first: its Drop unpins even if loading the program fails.
        let mut guard = EdgeDrop {
            pins: dp.dir().to_path_buf(),
            dp: Some(dp),
            ns: stage.lab.ns(Host::Edge).to_owned(),
        };
        guard.dp()?.bench_program("bench_drop")?;
        Ok(guard)
    }

    fn dp(&mut self) -> Result<&mut Datapath> {
        self.dp.as_mut().context("bench datapath already released")
    }

    fn attach(&mut self) -> Result<XdpLinkId> {
        let ns = self.ns.clone();
        let dp = self.dp()?;
        // The interface name resolves in the namespace of the attaching thread.
        in_netns(&ns, || -> Result<XdpLinkId> {
            dp.bench_program("bench_drop")?
                .attach(EDGE_TO_CLIENT, XdpMode::Driver)
                .context("attaching bench_drop to the edge")
        })?
    }

    fn detach(&mut self, link: XdpLinkId) -> Result<()> {
        let ns = self.ns.clone();
        let dp = self.dp()?;
        in_netns(&ns, || -> Result<()> {
            dp.bench_program("bench_drop")?
                .detach(link)
                .context("detaching bench_drop")
        })?
    }
}

impl Drop for EdgeDrop {
    fn drop(&mut self) {
        // Dropping the programs detaches them; then the maps can be unpinned.
        self.dp.take();
        if let Err(e) = datapath::remove_pins(&self.pins) {
            eprintln!("bench: {e:#}");
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Trial {
    offered: u64,
    forwarded: u64,
    /// Seen by bench_drop on the edge (baselines only).
    edge: u64,
    secs: f64,
    cpu: Cpu,
}

impl Trial {
    fn pps(&self) -> f64 {
        self.offered as f64 / self.secs.max(1e-9)
    }

    fn lost(&self) -> u64 {
        self.offered.saturating_sub(self.forwarded)
    }
}

/// One generator run: counters and CPU around it.
fn trial(
    stage: &Stage,
    gen: &Generator,
    edge: Option<&mut EdgeDrop>,
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
    let e0 = match &edge {
        Some(e) => e.dp.as_ref().map(|d| d.bench_packets()).transpose()?,
        None => None,
    };
    let tx0 = link_packets(lab, Host::Client, HOST_IF, "tx")?;
    let fwd0 = backend_packets(lab)?;
    let pids = netns_pids(lab, Host::Edge)?;
    let cpu0 = Cpu::now(&pids)?;
    let t0 = std::time::Instant::now();
    gen.send(lab, count, pps, limit)?;
    // In the window: what the contender still has queued (nginx) is work for these packets.
    std::thread::sleep(Duration::from_millis(100));
    let secs = t0.elapsed().as_secs_f64() - 0.1;
    let cpu1 = Cpu::now(&pids)?;
    let tx1 = link_packets(lab, Host::Client, HOST_IF, "tx")?;
    let fwd1 = backend_packets(lab)?;
    let e1 = match &edge {
        Some(e) => e.dp.as_ref().map(|d| d.bench_packets()).transpose()?,
        None => None,
    };
    let offered = tx1.saturating_sub(tx0);
    if offered == 0 {
        bail!("trafgen offered nothing (client {HOST_IF} tx counter did not move)");
    }
    Ok(Trial {
        offered,
        forwarded: fwd1.saturating_sub(fwd0),
        edge: e1.unwrap_or(0).saturating_sub(e0.unwrap_or(0)),
        secs,
        cpu: cpu1.since(cpu0),
    })
}

/// A run with the edge dropping everything at XDP ingress.
fn baseline(
    stage: &Stage,
    gen: &Generator,
    edge: &mut EdgeDrop,
    pps: Option<u64>,
    secs: f64,
) -> Result<Trial> {
    let link = edge.attach()?;
    let t = trial(stage, gen, Some(&mut *edge), pps, secs);
    let d = edge.detach(link);
    let t = t?;
    d?;
    if t.edge < t.offered / 2 {
        bail!(
            "baseline invalid: the edge's bench_drop saw {} of {} offered packets",
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
    let mut edge = EdgeDrop::load(&stage)?;
    let via_vip = Generator::new(&stage.lab, &stage.dir, VIP_V4)?;
    let direct = Generator::new(&stage.lab, &stage.dir, BLUE_V4)?;

    let gmax = baseline(&stage, &via_vip, &mut edge, None, p.secs.min(2.0))?;
    let gen_max = gmax.pps() as u64;
    println!(
        "\nForwarding: one UDP flow from trafgen, {} kpps offered for {:.1} s per run; the generator alone reaches {:.0} kpps",
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
        let base = baseline(&stage, gen, &mut edge, Some(p.pps), p.secs)?;
        stage
            .start(kind)
            .with_context(|| format!("starting {}", kind.label()))?;
        let row = measure(&stage, gen, kind, &p, &base, gen_max);
        stage.stop()?;
        rows.push(row?);
    }
    drop(stage);
    print_table(&rows);
    Ok(json!({
        "method": "host busy CPU (/proc/stat) over a run at a fixed offered rate, minus the same run with the edge dropping at XDP ingress (bench_drop), per packet counted at the backend (nft netdev ingress counter, dropped there); *_kernel_and_lab: the same with only the host's kernel time plus the user time of the lab's processes (trafgen, nginx, the daemon), less sensitive to other users of a shared machine",
        "offered_pps_target": p.pps,
        "run_seconds": p.secs,
        "generator": "trafgen -P 1, one UDP flow, 142-byte frames",
        "generator_max_pps": gen_max,
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
) -> Result<Value> {
    // A few packets to warm caches, conntrack, nginx's session and the flow table.
    trial(stage, gen, None, Some(10_000), 0.1)?;
    let t = trial(stage, gen, None, Some(p.pps), p.secs)?;
    if t.forwarded == 0 {
        bail!(
            "{}: nothing reached the backend ({} offered): the measurement is invalid",
            kind.label(),
            t.offered
        );
    }
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
    let top = trial(stage, gen, None, Some(gen_max), p.search_secs)?;
    trials.push(json!({"pps": top.pps(), "lost": top.lost()}));
    if top.lost() == 0 {
        best = Some(top.pps());
        generator_bound = true;
    } else {
        // Paced trafgen may fall short of the rate asked for: search below what it offered.
        hi = hi.min(top.pps() as u64);
        for _ in 0..p.search_steps {
            let mid = (lo + hi) / 2;
            let t = trial(stage, gen, None, Some(mid.max(1000)), p.search_secs)?;
            trials.push(json!({"pps": t.pps(), "lost": t.lost()}));
            if t.lost() == 0 {
                lo = mid;
                best = Some(best.map_or(t.pps(), |b: f64| b.max(t.pps())));
            } else {
                hi = mid;
            }
        }
    }
    Ok(json!({
        "key": kind.key(),
        "label": kind.label(),
        "offered": t.offered,
        "offered_pps": t.pps(),
        "forwarded": t.forwarded,
        "lost": t.lost(),
        "loss_pct": 100.0 * t.lost() as f64 / t.offered as f64,
        "cpu_ns_per_forwarded": cpu_host,
        "cpu_ns_per_forwarded_kernel_and_lab": cpu_lab,
        "busy_ms": t.cpu.host_ns as f64 / 1e6,
        "baseline": {
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

fn print_table(rows: &[Value]) {
    println!(
        "  {:<26} {:>10} {:>12} {:>9} {:>14} {:>18} {:>30}",
        "contender",
        "offered",
        "forwarded",
        "loss",
        "CPU/pkt host",
        "CPU/pkt kern+lab",
        "max loss-free rate"
    );
    for r in rows {
        println!(
            "  {:<26} {:>6.0} kpps {:>12} {:>8.2}% {:>11.0} ns {:>15.0} ns {:>30}",
            r["label"].as_str().unwrap_or("?"),
            f(r, "offered_pps") / 1000.0,
            r["forwarded"],
            f(r, "loss_pct"),
            f(r, "cpu_ns_per_forwarded"),
            f(r, "cpu_ns_per_forwarded_kernel_and_lab"),
            loss_free(r)
        );
    }
}

/// Markdown table of this section's results for results.md.
pub fn markdown(v: &Value) -> String {
    let mut s = format!(
        "One UDP flow from trafgen (the generator alone reaches {:.0} kpps). CPU per forwarded packet = host busy CPU over the run minus a baseline run where the edge \
         drops at XDP ingress, divided by packets counted at the backend; \"kernel + lab\" counts only \
         the host's kernel time and the lab processes' user time.\n\n\
         | contender | offered | loss | CPU per forwarded packet (host) | (kernel + lab) | highest loss-free rate |\n\
         |---|---:|---:|---:|---:|---:|\n",
        f(v, "generator_max_pps") / 1000.0
    );
    for r in v["contenders"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {:.0} kpps | {:.2}% | {:.0} ns | {:.0} ns | {} |\n",
            r["label"].as_str().unwrap_or("?"),
            f(r, "offered_pps") / 1000.0,
            f(r, "loss_pct"),
            f(r, "cpu_ns_per_forwarded"),
            f(r, "cpu_ns_per_forwarded_kernel_and_lab"),
            loss_free(r)
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
                    "{:.0} ns/pkt (kernel+lab {:.0}), loss {:.2}%, loss-free {}",
                    f(r, "cpu_ns_per_forwarded"),
                    f(r, "cpu_ns_per_forwarded_kernel_and_lab"),
                    f(r, "loss_pct"),
                    loss_free(r)
                ),
            ]
        })
        .collect()
}
