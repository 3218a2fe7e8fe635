//! Datapath cost and flip latency as the maps grow: 1, 64 and 256 services, then (with 256
//! services) the flow table filled from userspace to 10% and 100% of its capacity with
//! synthetic TCP flows. One private datapath grows step by step, so each row adds services to
//! the last.
//!
//! Each row's flow table must hold its target fill while its per-packet cases run, or the
//! section fails: the table is counted after filling and again after the cases, and both
//! counts must be within a tolerance of the target. The SYN case's pins of earlier rows are
//! removed before a row is filled (they are by-products of a measurement, and 20,000 of them
//! are 7.6% of the table: a "10%" row would otherwise run at 15%); the SYN case then adds its
//! own pins during its row, which `flow_entries_after_syn` reports.
//!
//! The tolerance, [`fill_tolerance`]: 1% of the capacity, or 2 x 128 entries per CPU this
//! process may run on if that is more. 100% means the table's capacity, but an LRU hash
//! (common LRU list, as FLOWS is) never shows exactly that many entries once it evicts: a CPU
//! that finds no free node evicts a batch of up to 128 (the kernel's LOCAL_FREE_TARGET) into
//! its own free list, and free nodes parked on other CPUs' lists are not reused meanwhile, so
//! a full table holds up to about 128 fewer entries per CPU that inserted (172 fewer in the
//! run of BENCHMARKS.md). Below the target, an unfilled or half-filled table fails; above it,
//! left-over pins of other measurements.
//!
//! Flip latency here is the map write alone, `BpfDatapath::flip` timed in this process (read the
//! active word, write the flip mark, write the active word), not through the daemon: the
//! daemon's API path is the flip latency section's.

use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use switcher::domain::Color;

use crate::{
    datapath_cost::{self as cost, Case, Check},
    report::{latency_us, num, Table},
    synthetic, Opts,
};

use switcher_common::FLOW_TABLE_SIZE;
use switcher_tests::loaded::LoadedDatapath;

/// `count` services: the three the cases use, then UDP fillers on other ports of the VIP.
fn services(count: usize) -> String {
    let mut s = String::new();
    // With one service only the UDP case can hit; the TCP rows report "–".
    let base: Vec<&str> = cost::SERVICES.split("[[service]]").skip(1).collect();
    for b in base.iter().take(count) {
        s += "[[service]]";
        s += b;
    }
    for i in base.len()..count {
        s += &format!(
            "[[service]]\nname = \"fill-{i}\"\nvip = \"198.18.10.10\"\nport = {}\nprotocol = \"udp\"\n\
             forward = \"pass\"\nblue = {{ backend = \"198.18.10.10:{}\" }}\n",
            20_000 + i,
            20_000 + i
        );
    }
    s
}

struct Step {
    label: String,
    services: usize,
    /// Target share of the flow table filled with synthetic flows, in %.
    flow_fill_pct: u32,
}

/// Entries the kernel's LRU lists move per CPU at once (LOCAL_FREE_TARGET).
const LRU_BATCH: usize = 128;

/// How far a row's flow table may be from its target fill, in entries (see the module doc).
fn fill_tolerance() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (FLOW_TABLE_SIZE as usize / 100).max(2 * LRU_BATCH * cpus)
}

/// Fails unless `entries` is within `tol` of `target`.
fn check_fill(step: &Step, entries: usize, target: usize, tol: usize, when: &str) -> Result<()> {
    if entries.abs_diff(target) > tol {
        bail!(
            "step \"{}\": the flow table holds {entries} entries {when}, its target is {target} \
             ({}% of {FLOW_TABLE_SIZE}) within {tol}: the row would not measure the fill it \
             names; the measurement is invalid",
            step.label,
            step.flow_fill_pct
        );
    }
    Ok(())
}

pub fn run(opts: &Opts) -> Result<Value> {
    let steps =
        [(1, 0), (64, 0), (256, 0), (256, 10), (256, 100)].map(|(services, flow_fill_pct)| Step {
            label: if services == 1 {
                "1 service".to_string()
            } else if flow_fill_pct == 0 {
                format!("{services} services")
            } else {
                format!("{services} services, flows {flow_fill_pct}%")
            },
            services,
            flow_fill_pct,
        });
    let mut b = LoadedDatapath::load("bench-scale")?;
    let mut next_client = 0;
    // Index of the next synthetic flow, so no key is written twice.
    let mut next_synthetic = 0u32;
    let mut rows = Vec::new();
    let tol = fill_tolerance();
    for step in &steps {
        b.apply(&services(step.services))?;
        // The SYN case's pins of earlier steps are no part of this step's fill.
        let syn_pins_removed = synthetic::remove_flows(&b.maps_dir(), cost::is_syn_case_flow)?;
        // Top up to the target (100% is the capacity: the LRU table evicts near it).
        let target = (u64::from(FLOW_TABLE_SIZE) * u64::from(step.flow_fill_pct) / 100) as usize;
        let have = flow_entries(&mut b)?;
        if target > have {
            let add = (target - have) as u32;
            let tcp4 = b.id("bench-tcp4")?;
            let tcp4: Vec<_> = synthetic::services(&b.maps_dir())?
                .into_iter()
                .filter(|(id, _)| *id == tcp4)
                .collect();
            crate::synthetic::fill_flows(
                &b.maps_dir(),
                &tcp4,
                next_synthetic,
                next_synthetic + add,
            )?;
            next_synthetic += add;
        }
        let tcp = step.services >= 2;
        if tcp {
            // Re-pin after filling: the LRU table may have evicted the established flow.
            cost::pin_established(&mut b)?;
        }
        let filled = flow_entries(&mut b)?;
        check_fill(step, filled, target, tol, "after filling")?;
        let mut cases: Vec<Case> = cost::cases()?
            .into_iter()
            .filter(|c| match c.check {
                Check::Floor | Check::NotService => true,
                Check::Call => false,
                Check::Hit { service, .. } => {
                    service == "bench-udp4" || (tcp && service == "bench-tcp4")
                }
            })
            .filter(|c| !c.name.contains("VLAN"))
            .collect();
        cases.sort_by_key(|c| matches!(c.check, Check::NotService));
        let medians = cost::alternate(&mut b, &cases, opts.repeat, opts.rounds)?;
        let floor = medians[0];
        let entries = flow_entries(&mut b)?;
        check_fill(step, entries, target, tol, "after the per-packet cases")?;
        let mut row = json!({
            "step": step.label,
            "services": step.services,
            "flow_fill_pct": step.flow_fill_pct,
            "flow_target": target,
            "flow_entries_after_fill": filled,
            "flow_entries": entries,
            "syn_pins_removed": syn_pins_removed,
            "floor_ns": floor,
        });
        for (c, m) in cases.iter().zip(&medians).skip(1) {
            row[key(c)] = json!({ "ns": m, "x_floor": m / floor });
        }
        if tcp {
            let (syn, syn_floor) = cost::syn_new_pin(&mut b, opts.syn_calls, &mut next_client)?;
            row["tcp4_syn_new_pin"] = json!({
                "ns": syn,
                "x_floor": syn / syn_floor,
                "floor_single_ns": syn_floor,
            });
            row["flow_entries_after_syn"] = json!(flow_entries(&mut b)?);
        }
        row["flip_us"] = flip_latency(&mut b, opts.scale_flips)?;
        rows.push(row);
    }
    let v = json!({
        "repeat": opts.repeat,
        "rounds": opts.rounds,
        "flow_table_size": FLOW_TABLE_SIZE,
        "flow_fill_tolerance": tol,
        "flips_per_step": opts.scale_flips,
        "steps": rows,
    });
    println!(
        "\n== Scale: ns/packet (x floor), {} iterations x {} rounds; flip = Datapath::flip map writes, {} flips ==",
        opts.repeat, opts.rounds, opts.scale_flips
    );
    print!("{}", table(&v).text("  "));
    Ok(v)
}

fn key(c: &Case) -> &'static str {
    match c.check {
        Check::Hit {
            service: "bench-tcp4",
            ..
        } => "tcp4_established",
        Check::Hit { .. } => "udp4_hit",
        Check::NotService => "non_service",
        Check::Floor => "floor",
        Check::Call => "call",
    }
}

fn flow_entries(b: &mut LoadedDatapath) -> Result<usize> {
    Ok(b.dp()?.reader().census_now()?.entries as usize)
}

/// `n` flips of bench-udp4 back and forth, each timed around `BpfDatapath::flip`.
fn flip_latency(b: &mut LoadedDatapath, n: u32) -> Result<Value> {
    let id = b.id("bench-udp4")?;
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let to = if i % 2 == 0 {
            Color::Green
        } else {
            Color::Blue
        };
        let t0 = Instant::now();
        let out = b.dp()?.flip(id, to)?;
        samples.push(t0.elapsed().as_nanos() as f64);
        if !out.changed {
            bail!("flip {i} did not change the colour");
        }
    }
    // Back to blue, so the cases keep hitting the colour they check.
    b.dp()?.flip(id, Color::Blue)?;
    Ok(latency_us(&mut samples))
}

fn table(v: &Value) -> Table {
    let mut t = Table::new(&[
        "step",
        "flows",
        "floor",
        "udp4 hit",
        "tcp4 established",
        "tcp4 SYN new pin",
        "non-service",
        "flip p50/p99/max µs",
    ]);
    let cell = |c: &Value| {
        if c.is_null() {
            "–".to_string()
        } else {
            format!("{} ({}x)", num(&c["ns"], 0), num(&c["x_floor"], 1))
        }
    };
    for s in v["steps"].as_array().into_iter().flatten() {
        let f = &s["flip_us"];
        t.row(vec![
            s["step"].as_str().unwrap_or("?").to_string(),
            s["flow_entries"].to_string(),
            num(&s["floor_ns"], 0),
            cell(&s["udp4_hit"]),
            cell(&s["tcp4_established"]),
            cell(&s["tcp4_syn_new_pin"]),
            cell(&s["non_service"]),
            format!(
                "{}/{}/{}",
                num(&f["p50"], 1),
                num(&f["p99"], 1),
                num(&f["max"], 1)
            ),
        ]);
    }
    t
}

pub fn markdown(v: &Value) -> String {
    format!(
        "ns/packet (ratio to the floor of the same round), BPF_PROG_TEST_RUN {} iterations x {} \
         rounds; the flow table ({} entries) is filled with synthetic TCP flows from userspace to each \
         step's target (flows: entries while the cases ran, checked within {} of the target; an \
         LRU table holds a little less than its capacity once it evicts). \
         Flip = `BpfDatapath::flip` (map writes only, not through the daemon), {} flips per step.\
         \n\n{}",
        v["repeat"],
        v["rounds"],
        v["flow_table_size"],
        v["flow_fill_tolerance"],
        v["flips_per_step"],
        table(v).markdown()
    )
}
