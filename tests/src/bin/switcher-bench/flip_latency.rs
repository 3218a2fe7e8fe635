//! Flip latency of switcher through its API, under traffic, in the lab.
//!
//! The section fails when the traffic part does not hold: a flip that changed nothing (no map
//! write was timed), a sender that sent nothing (zero lost of zero sent proves nothing), a line
//! lost or duplicated, or a stream that never reached one of the colours (the flips did not
//! move the traffic they claim to run under).

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use switcher::domain::Color;

use crate::{
    report::{latency_us, num, Table},
    Opts,
};

/// Flip latency as the controller sees it (API request accepted → map written) and as a
/// client sees it (round trip), over `n` flips in the lab while a UDP stream runs through
/// the switch; then every line of the stream must have arrived exactly once.
pub fn run(opts: &Opts) -> Result<Value> {
    let n = opts.flips;
    use switcher_tests::{
        lab::VIP_V4,
        rig::{self, Rig, UDP_PORT},
    };
    let rig = Rig::up("fb", &rig::standard_services("redirect", ""))?;
    let rate = 2000u64;
    // Enough traffic to cover the flips (20 ms apart) with margin; bounded by count and time.
    let count = rate * (u64::from(n) / 50 + 5);
    let sender = rig.send(
        &format!("{VIP_V4}:{UDP_PORT}"),
        &[
            "--proto",
            "udp",
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--stream",
            "f",
            "--max-seconds",
            "60",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let mut api_to_map = Vec::with_capacity(n as usize);
    // Where each flip's time went (FlipStages): route, lock, check, write.
    let mut stages: [Vec<f64>; 4] = Default::default();
    let mut round_trip = Vec::with_capacity(n as usize);
    // Flips whose serving thread was never preempted (their api_to_map), and the others.
    let (mut unpreempted, mut preempted, mut unmeasured) = (Vec::new(), 0u32, 0u32);
    let started = std::time::Instant::now();
    // Spread the flips over the stream: a flip every 20 ms.
    let pace = Duration::from_millis(20);
    for i in 0..n {
        let next = started + pace * i;
        if let Some(d) = next.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(d);
        }
        let to = if i % 2 == 0 {
            Color::Green
        } else {
            Color::Blue
        };
        let t0 = std::time::Instant::now();
        let v = rig.call(&switcher::api::Request::Flip {
            service: "udp4".into(),
            to,
            force: false,
            reason: None,
            local: false,
        })?;
        round_trip.push(t0.elapsed().as_nanos() as f64);
        let ns = v["api_to_map_ns"]
            .as_f64()
            .context("flip reply has no api_to_map_ns")?;
        if v["changed"] != true {
            bail!("flip {i} did not change the colour: {v}");
        }
        api_to_map.push(ns);
        // The scheduler took the serving thread away on the way (None: not measured).
        match v["stages_ns"]["preempted"].as_u64() {
            Some(0) => unpreempted.push(ns),
            Some(_) => preempted += 1,
            None => unmeasured += 1,
        }
        for (i, k) in STAGES.iter().enumerate() {
            stages[i].push(
                v["stages_ns"][k.0]
                    .as_f64()
                    .with_context(|| format!("flip reply has no stages_ns.{}", k.0))?,
            );
        }
    }
    let flip_secs = started.elapsed().as_secs_f64();
    let sent = rig::finish_sender(&sender, Duration::from_secs(70))?;
    let got = rig.wait_stream("f", sent as usize, Duration::from_secs(10))?;
    let (lost, dup) = got.loss_and_duplicates(sent);
    let api = latency_us(&mut api_to_map);
    let api_unpreempted = latency_us(&mut unpreempted);
    let stage_us: serde_json::Map<String, Value> = STAGES
        .iter()
        .zip(stages.iter_mut())
        .map(|(k, v)| (k.0.to_string(), latency_us(v)))
        .collect();
    let rt = latency_us(&mut round_trip);
    println!(
        "\n== Flip latency: {n} flips through the API in {flip_secs:.1} s under {rate} lines/s of UDP through the switch =="
    );
    let v = json!({
        "flips": n,
        "udp_lines_per_s": rate,
        "api_to_map_us": api,
        "stages_us": stage_us,
        "preempted_flips": preempted,
        "unmeasured_flips": unmeasured,
        "api_to_map_unpreempted_us": api_unpreempted,
        "round_trip_us": rt,
        "lines_sent": sent,
        "lines_blue": got.blue.len(),
        "lines_green": got.green.len(),
        "lines_lost": lost.len(),
        "lines_duplicated": dup.len(),
    });
    print!("{}", table(&v).text("  "));
    println!(
        "  lines sent {sent}, blue {} green {}, lost {}, duplicated {}",
        got.blue.len(),
        got.green.len(),
        lost.len(),
        dup.len()
    );
    if sent == 0 {
        bail!("the UDP sender sent nothing: the flips ran without traffic; the measurement is invalid");
    }
    if !lost.is_empty() || !dup.is_empty() {
        bail!("lines were lost or duplicated across the flips");
    }
    if n >= 2 && (got.blue.is_empty() || got.green.is_empty()) {
        bail!(
            "the stream reached only {} across {n} flips (blue {}, green {}): the flips did not move \
             the traffic; the measurement is invalid",
            if got.blue.is_empty() { "green" } else { "blue" },
            got.blue.len(),
            got.green.len()
        );
    }
    Ok(v)
}

/// The stages of `api_to_map` (the reply's `stages_ns`), with what each holds.
const STAGES: [(&str, &str); 4] = [
    ("route", "  of which: parse, route, task scheduling"),
    ("lock", "  of which: waiting for the controller"),
    ("check", "  of which: the flip's checks"),
    ("write", "  of which: the map writes"),
];

fn table(v: &Value) -> Table {
    let mut t = Table::new(&["measured", "p50 µs", "p99 µs", "max µs"]);
    let row = |t: &mut Table, label: &str, l: &Value| {
        t.row(vec![
            label.to_string(),
            num(&l["p50"], 1),
            num(&l["p99"], 1),
            num(&l["max"], 1),
        ]);
    };
    row(
        &mut t,
        "API request accepted -> map written",
        &v["api_to_map_us"],
    );
    for (key, label) in STAGES {
        row(&mut t, label, &v["stages_us"][key]);
    }
    row(
        &mut t,
        &format!(
            "accepted -> written, the flips never preempted ({} preempted, {} not measured)",
            v["preempted_flips"], v["unmeasured_flips"]
        ),
        &v["api_to_map_unpreempted_us"],
    );
    row(
        &mut t,
        "client round trip (incl. state fsync)",
        &v["round_trip_us"],
    );
    t
}

pub fn markdown(v: &Value) -> String {
    format!(
        "{} flips through the daemon's API, 20 ms apart, while {} UDP lines/s run through the \
         switch: {} lines sent, {} lost, {} duplicated.\n\n{}",
        v["flips"],
        v["udp_lines_per_s"],
        v["lines_sent"],
        v["lines_lost"],
        v["lines_duplicated"],
        table(v).markdown()
    )
}
