//! Per-packet cost of the XDP datapath, measured with BPF_PROG_TEST_RUN loops in one process:
//! every case and the floor (`bench_floor`: count and pass) alternate within each round, and
//! the median round is reported (the machines are shared and noisy, so ratios to the floor from
//! one run mean more than absolute numbers).
//!
//! BPF_PROG_TEST_RUN repeats on the same buffer, so a rewritten packet would stop hitting the
//! service after the first iteration. The benchmark services therefore use the VIP:port itself
//! as backend: every iteration does the full lookup, decision, rewrite and checksum work and
//! hits again. Counters prove it after every call: a service case must add exactly `repeat`
//! packets to its colour, a non-service case `repeat` not_service reasons, the floor `repeat`
//! packets; anything else fails the run.
//!
//! A SYN that pins a new flow cannot be repeated on one buffer (the second iteration finds the
//! pin). It is measured as single-iteration calls, each with a new source tuple, next to the
//! floor measured the same way: the difference is the new-pin cost, the timer and call
//! overhead of a single iteration cancel.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use etherparse::{PacketBuilder, VlanId};
use serde_json::{json, Value};
use switcher::domain::Color;
use switcher_common::Reason;
use switcher_tests::loaded::{LoadedDatapath, Program};

use crate::{
    plot,
    report::{num, Spread, Table},
    Opts,
};

/// The three services every case needs; scale.rs adds fillers after them.
pub const SERVICES: &str = r#"
[[service]]
name = "bench-udp4"
vip = "198.18.10.10"
port = 514
protocol = "udp"
forward = "pass"
blue = { backend = "198.18.10.10:514" }
# Only for the flips of scale.rs; the cases measure blue.
green = { backend = "198.18.10.11:514" }

[[service]]
name = "bench-tcp4"
vip = "198.18.10.10"
port = 601
protocol = "tcp"
forward = "pass"
blue = { backend = "198.18.10.10:601" }

[[service]]
name = "bench-udp6"
vip = "2001:2:0:10::10"
port = 514
protocol = "udp"
forward = "pass"
blue = { backend = "[2001:2:0:10::10]:514" }
"#;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const VIP4: [u8; 4] = [198, 18, 10, 10];
const CLIENT4: [u8; 4] = [198, 18, 0, 1];
const PAYLOAD: &[u8] = b"<14>1 2026-11-24T00:00:00Z host app - - - a typical short syslog line";
const XDP_PASS: u32 = 2;

/// Which program a case runs and what its counters must show afterwards.
#[derive(Clone, Copy)]
pub enum Check {
    /// `bench_floor`: BENCH_PACKETS grows by the repeat count.
    Floor,
    /// `bench_call`, the floor counting in a BPF-to-BPF call: BENCH_PACKETS as for the floor.
    Call,
    /// switcher_ingress hits this service's blue colour every iteration; `established`
    /// also requires no new flow and no pin miss (the flow entry was found each time).
    Hit {
        service: &'static str,
        established: bool,
    },
    /// switcher_ingress passes it as not_service every iteration.
    NotService,
}

pub struct Case {
    pub name: &'static str,
    pub packet: Vec<u8>,
    pub check: Check,
}

pub fn udp4(sport: u16, dport: u16, vlan: Option<u16>) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    match vlan {
        Some(id) => eth
            .single_vlan(VlanId::try_new(id).context("VLAN id")?)
            .ipv4(CLIENT4, VIP4, 64)
            .udp(sport, dport)
            .write(&mut v, PAYLOAD)?,
        None => eth
            .ipv4(CLIENT4, VIP4, 64)
            .udp(sport, dport)
            .write(&mut v, PAYLOAD)?,
    }
    Ok(v)
}

pub fn udp6() -> Result<Vec<u8>> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(
            "2001:2::1".parse::<std::net::Ipv6Addr>()?.octets(),
            "2001:2:0:10::10".parse::<std::net::Ipv6Addr>()?.octets(),
            64,
        )
        .udp(40000, 514)
        .write(&mut v, PAYLOAD)?;
    Ok(v)
}

pub const TCP_CLIENT_PORT: u16 = 40001;

pub fn tcp_ack() -> Result<Vec<u8>> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(TCP_CLIENT_PORT, 601, 1, 64240)
        .ack(1)
        .write(&mut v, PAYLOAD)?;
    Ok(v)
}

/// The SYN case's clients: 198.19.0.0/16 (never a synthetic flow's or the lab's).
pub const SYN_CLIENTS: [u8; 2] = [198, 19];

/// Whether `key` is a flow the SYN case pinned.
pub fn is_syn_case_flow(key: &switcher_common::FlowKey) -> bool {
    key.family == switcher_common::FAMILY_V4 && key.src[..2] == SYN_CLIENTS
}

/// A SYN from client number `k`: a distinct (address, port) per `k` inside 198.19.0.0/16.
pub fn tcp_syn(k: u32) -> Result<Vec<u8>> {
    let src = [
        SYN_CLIENTS[0],
        SYN_CLIENTS[1],
        (k >> 16) as u8,
        (k >> 8) as u8,
    ];
    let sport = 1024 + (k & 0xff) as u16;
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, VIP4, 64)
        .tcp(sport, 601, 0, 64240)
        .syn()
        .write(&mut v, b"")?;
    Ok(v)
}

/// Pins the TCP flow the established case uses (one SYN from its tuple).
pub fn pin_established(b: &mut LoadedDatapath) -> Result<()> {
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(TCP_CLIENT_PORT, 601, 0, 64240)
        .syn()
        .write(&mut syn, b"")?;
    test_run(b, None, &syn, 1)?;
    Ok(())
}

/// The standard cases, floor first.
pub fn cases() -> Result<Vec<Case>> {
    let hit = |service, established| Check::Hit {
        service,
        established,
    };
    Ok(vec![
        Case {
            name: "floor (count + XDP_PASS)",
            packet: udp4(40000, 514, None)?,
            check: Check::Floor,
        },
        Case {
            name: "floor + one BPF-to-BPF call",
            packet: udp4(40000, 514, None)?,
            check: Check::Call,
        },
        Case {
            name: "udp4 service hit (rewrite)",
            packet: udp4(40000, 514, None)?,
            check: hit("bench-udp4", false),
        },
        Case {
            name: "tcp4 established (pinned flow)",
            packet: tcp_ack()?,
            check: hit("bench-tcp4", true),
        },
        Case {
            name: "udp6 service hit",
            packet: udp6()?,
            check: hit("bench-udp6", false),
        },
        Case {
            name: "udp4 VLAN-tagged service hit",
            packet: udp4(40000, 514, Some(10))?,
            check: hit("bench-udp4", false),
        },
        Case {
            name: "udp4 non-service (other port)",
            packet: udp4(40000, 9999, None)?,
            check: Check::NotService,
        },
    ])
}

/// One BPF_PROG_TEST_RUN call of switcher_ingress (`program` None) or a reference program;
/// returns the kernel's mean time per iteration in ns.
fn test_run(b: &mut LoadedDatapath, program: Option<&str>, pkt: &[u8], repeat: u32) -> Result<f64> {
    let program = program.map_or(Program::Ingress, Program::Reference);
    let r = b.run(program, pkt, repeat)?;
    if r.action != XDP_PASS {
        bail!("unexpected XDP action {}", r.action);
    }
    Ok(r.duration.as_nanos() as f64)
}

/// The counter a case's check reads.
fn counter(b: &mut LoadedDatapath, check: Check) -> Result<(u64, u64)> {
    Ok(match check {
        Check::Floor | Check::Call => (b.reference_packets()?, 0),
        Check::NotService => (b.reason(Reason::NotService)?, 0),
        Check::Hit { service, .. } => {
            let c = b.counters(b.id(service)?, Color::Blue)?;
            (c.packets, c.new_flows + c.pin_misses)
        }
    })
}

/// Runs `case` once with `repeat` iterations and proves every iteration did what it should.
pub fn measure(b: &mut LoadedDatapath, case: &Case, repeat: u32) -> Result<f64> {
    let before = counter(b, case.check)?;
    let program = match case.check {
        Check::Floor => Some("bench_floor"),
        Check::Call => Some("bench_call"),
        _ => None,
    };
    let ns = test_run(b, program, &case.packet, repeat)?;
    let after = counter(b, case.check)?;
    let hits = after.0 - before.0;
    if hits != u64::from(repeat) {
        bail!(
            "{}: {hits} of {repeat} iterations took the measured path: the measurement is invalid",
            case.name
        );
    }
    if let Check::Hit {
        established: true, ..
    } = case.check
    {
        if after.1 != before.1 {
            bail!("{}: the pinned flow was not found every time", case.name);
        }
    }
    Ok(ns)
}

/// Medians over `rounds` rounds in which every case runs once, in order.
pub fn alternate(
    b: &mut LoadedDatapath,
    cases: &[Case],
    repeat: u32,
    rounds: usize,
) -> Result<Vec<f64>> {
    Ok(rounds_of(b, cases, repeat, rounds)?
        .iter()
        .map(|s| Spread::of(s).median)
        .collect())
}

/// ns of every case (outer) in every round (inner); each round runs every case once, in order.
fn rounds_of(
    b: &mut LoadedDatapath,
    cases: &[Case],
    repeat: u32,
    rounds: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut samples = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (i, c) in cases.iter().enumerate() {
            samples[i].push(measure(b, c, repeat)?);
        }
    }
    Ok(samples)
}

/// Median ns of single-iteration SYN calls that each pin a new flow, and of the floor measured
/// the same way in between. `next` numbers the clients, so later calls never reuse a tuple.
pub fn syn_new_pin(b: &mut LoadedDatapath, calls: u32, next: &mut u32) -> Result<(f64, f64)> {
    let id = b.id("bench-tcp4")?;
    let before = b.counters(id, Color::Blue)?.new_flows;
    let floor_pkt = udp4(40000, 514, None)?;
    let (mut syn, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..calls {
        let pkt = tcp_syn(*next)?;
        *next += 1;
        syn.push(test_run(b, None, &pkt, 1)?);
        floor.push(test_run(b, Some("bench_floor"), &floor_pkt, 1)?);
    }
    let pinned = b.counters(id, Color::Blue)?.new_flows - before;
    if pinned != u64::from(calls) {
        bail!("tcp4 SYN: {pinned} of {calls} calls pinned a new flow: the measurement is invalid");
    }
    Ok((
        crate::report::percentile(&mut syn, 50.0),
        crate::report::percentile(&mut floor, 50.0),
    ))
}

/// A datapath ready for the cases: `object` (None: the current build) loaded, the services
/// programmed, the TCP flow pinned.
fn prepared(object: Option<&[u8]>) -> Result<LoadedDatapath> {
    let mut b = LoadedDatapath::load_object("bench-cost", object)?;
    b.apply(SERVICES)?;
    pin_established(&mut b)?;
    Ok(b)
}

/// Each case on the current build (`b`) and on `baseline`, back to back within every round:
/// per case the median ns of each, each one's ratio to its own floor, and the median and
/// range over rounds of the per-round ratio current/baseline. A range that crosses 1.0 is
/// reported as no difference.
fn side_by_side(
    b: &mut LoadedDatapath,
    baseline: &mut LoadedDatapath,
    cases: &[Case],
    opts: &Opts,
) -> Result<Value> {
    let n = cases.len();
    let (mut cur, mut base, mut ratio) = (
        vec![Vec::new(); n],
        vec![Vec::new(); n],
        vec![Vec::new(); n],
    );
    for round in 0..opts.rounds {
        for (i, c) in cases.iter().enumerate() {
            // Alternate which build goes first, so neither always runs on a warmer cache.
            let (x, y) = if round % 2 == 0 {
                let x = measure(b, c, opts.repeat)?;
                (x, measure(baseline, c, opts.repeat)?)
            } else {
                let y = measure(baseline, c, opts.repeat)?;
                (measure(b, c, opts.repeat)?, y)
            };
            cur[i].push(x);
            base[i].push(y);
            ratio[i].push(x / y);
        }
    }
    let medians = |v: &mut [Vec<f64>]| -> Vec<f64> {
        v.iter_mut()
            .map(|s| crate::report::percentile(s, 50.0))
            .collect()
    };
    let (cur, base) = (medians(&mut cur), medians(&mut base));
    // cases()[0] is the floor.
    let (floor_cur, floor_base) = (cur[0], base[0]);
    let rows: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let r = Spread::of(&ratio[i]);
            let (x, y) = (cur[i], base[i]);
            json!({
                "case": c.name, "ns": x, "baseline_ns": y,
                "x_floor": x / floor_cur, "baseline_x_floor": y / floor_base,
                "ratio": r.median, "ratio_min": r.min, "ratio_max": r.max,
                "verdict": r.verdict("faster", "slower"),
            })
        })
        .collect();
    Ok(json!({ "rounds": opts.rounds, "repeat": opts.repeat, "cases": rows }))
}

fn ab_table(v: &Value) -> Table {
    let mut t = Table::new(&[
        "case",
        "ns",
        "x floor",
        "baseline ns",
        "x floor",
        "current/baseline (min-max)",
        "",
    ]);
    for c in v["cases"].as_array().into_iter().flatten() {
        t.row(vec![
            c["case"].as_str().unwrap_or("?").to_string(),
            num(&c["ns"], 1),
            num(&c["x_floor"], 2),
            num(&c["baseline_ns"], 1),
            num(&c["baseline_x_floor"], 2),
            format!(
                "{} ({}-{})",
                num(&c["ratio"], 3),
                num(&c["ratio_min"], 3),
                num(&c["ratio_max"], 3)
            ),
            c["verdict"].as_str().unwrap_or("?").to_string(),
        ]);
    }
    t
}

/// An eBPF object from a file, or None (`path` None: the build in the bench).
fn object_file(path: Option<&PathBuf>, what: &str) -> Result<Option<Vec<u8>>> {
    path.map(|p| {
        std::fs::read(p).with_context(|| format!("reading the {what} object {}", p.display()))
    })
    .transpose()
}

pub fn run(opts: &Opts) -> Result<Value> {
    let current = object_file(opts.object.as_ref(), "current")?;
    let mut b = prepared(current.as_deref())?;
    let cases = cases()?;
    if let Some(path) = &opts.baseline_object {
        let object = object_file(Some(path), "baseline")?;
        let mut baseline = prepared(object.as_deref())
            .with_context(|| format!("loading the baseline object {}", path.display()))?;
        // The call case measures a reference program, not the build: it would only compare
        // the program with itself (and an older object may lack it).
        let cases: Vec<Case> = cases
            .into_iter()
            .filter(|c| !matches!(c.check, Check::Call))
            .collect();
        let v = side_by_side(&mut b, &mut baseline, &cases, opts)?;
        println!(
            "\n== Datapath cost, {} vs {}: {} iterations x {} rounds, both builds in every round (median) ==",
            opts.object.as_ref().map_or("this build".into(), |p| p.display().to_string()),
            path.display(),
            opts.repeat,
            opts.rounds
        );
        print!("{}", ab_table(&v).text("  "));
        return Ok(json!({ "baseline_object": path.display().to_string(), "side_by_side": v }));
    }
    let samples = rounds_of(&mut b, &cases, opts.repeat, opts.rounds)?;
    let mut next = 0;
    let (syn, syn_floor) = syn_new_pin(&mut b, opts.syn_calls, &mut next)?;
    // cases()[0] is the floor; each case's ratio to it is taken per round.
    let floor = &samples[0];
    let mut rows: Vec<Value> = cases
        .iter()
        .zip(&samples)
        .map(|(c, s)| {
            let ns = Spread::of(s);
            let x: Vec<f64> = s.iter().zip(floor).map(|(a, f)| a / f).collect();
            let x = Spread::of(&x);
            json!({
                "case": c.name,
                "ns": ns.median, "ns_min": ns.min, "ns_max": ns.max,
                "x_floor": x.median, "x_floor_min": x.min, "x_floor_max": x.max,
            })
        })
        .collect();
    rows.push(json!({
        "case": "tcp4 SYN, new pin (single-iteration calls)",
        "ns": syn,
        "x_floor": syn / syn_floor,
        "floor_single_ns": syn_floor,
        "new_pin_minus_floor_ns": syn - syn_floor,
    }));
    let v = json!({
        "repeat": opts.repeat,
        "rounds": opts.rounds,
        "syn_calls": opts.syn_calls,
        "cases": rows,
    });
    println!(
        "\n== Datapath cost: BPF_PROG_TEST_RUN, {} iterations x {} alternating rounds (median, min–max over rounds) ==",
        opts.repeat, opts.rounds
    );
    print!("{}", table(&v).text("  "));
    let png = opts.out.join("datapath_cost.png");
    plot::bars(&png, &[chart(&v, floor)])?;
    println!("  plot: {}", png.display());
    println!(
        "  (SYN: {} single-iteration calls, each a new tuple; its ratio is to the floor measured \
         the same way, {syn_floor:.0} ns: the timer overhead of one iteration is in both)",
        opts.syn_calls
    );
    Ok(v)
}

/// Every case's ns with its range, the floor drawn across.
fn chart(v: &Value, floor: &[f64]) -> plot::BarPanel {
    let bars = v["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .filter(|c| c["ns_min"].is_number())
        .map(|c| plot::Bar {
            // The name up to its first parenthesis keeps the axis readable.
            label: c["case"]
                .as_str()
                .unwrap_or("?")
                .split(" (")
                .next()
                .unwrap_or("?")
                .replace(" service", "")
                .replace("-tagged", ""),
            median: c["ns"].as_f64().unwrap_or(f64::NAN),
            min: c["ns_min"].as_f64().unwrap_or(f64::NAN),
            max: c["ns_max"].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    plot::BarPanel {
        title: "XDP program per packet (BPF_PROG_TEST_RUN), median and range over rounds".into(),
        y_desc: "ns per packet".into(),
        bars,
        reference: Some((Spread::of(floor).median, "floor: count + XDP_PASS".into())),
    }
}

fn table(v: &Value) -> Table {
    let mut t = Table::new(&["case", "ns/packet (min–max)", "x floor (min–max)"]);
    let range = |c: &Value, k: &str, d: usize| match (
        c[format!("{k}_min")].as_f64(),
        c[format!("{k}_max")].as_f64(),
    ) {
        (Some(lo), Some(hi)) => format!("{} ({lo:.d$}–{hi:.d$})", num(&c[k], d)),
        _ => num(&c[k], d),
    };
    for c in v["cases"].as_array().into_iter().flatten() {
        t.row(vec![
            c["case"].as_str().unwrap_or("?").to_string(),
            range(c, "ns", 1),
            range(c, "x_floor", 2),
        ]);
    }
    t
}

pub fn markdown(v: &Value) -> String {
    if let Some(ab) = v.get("side_by_side") {
        return format!(
            "BPF_PROG_TEST_RUN, {} iterations per call, {} rounds, the current build and {} \
             back to back in every round; ratio current/baseline per round, median (min-max).\n\n{}",
            ab["repeat"],
            ab["rounds"],
            v["baseline_object"],
            ab_table(ab).markdown()
        );
    }
    format!(
        "BPF_PROG_TEST_RUN, {} iterations per call, {} alternating rounds, median (min–max over rounds; \
         a case's ratio to the floor is taken per round). The SYN \
         case is {} single-iteration calls (each pins a new tuple), its ratio is to the floor \
         measured the same way.\n\n{}",
        v["repeat"],
        v["rounds"],
        v["syn_calls"],
        table(v).markdown()
    )
}
