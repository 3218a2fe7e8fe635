//! Shadow traffic in the lab: while green is validated with `[service.shadow]`, a copy of the
//! live UDP stream goes to green's shadow port (the sinks' second UDP input) and blue keeps
//! every original. The copies end cleanly whether the step passes, fails, is aborted, or the
//! daemon is killed (the datapath's own deadline). Needs root.

mod support;

use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use support::privileged;
use switcher::{
    api::Request,
    config::Member,
    datapath,
    deploy::{Deployment, Phase},
    domain::Color,
};
use switcher_common::{names, ShadowCounters, ShadowValue};
use switcher_tests::{
    lab::{Host, Proc, EDGE_TO_CLIENT, GREEN_V4},
    rig::{self, Received, Rig, SHADOW_PORT, UDP_PORT},
};

const WAIT: Duration = Duration::from_secs(20);

/// udp4 shadowed for `duration_ms`, judged by green's health and error counter.
fn services(duration_ms: u64) -> String {
    let extra = format!(
        r#"
[service.health]
http = "http://{{addr}}:8080/health"
successes = 1
interval_ms = 100
deadline_ms = 3000
[service.metrics]
url = "http://{{addr}}:8080/metrics"
[[service.metrics.check]]
name = "ingest_errors_total"
max_increase = 0
[service.shadow]
percent = 100
duration_ms = {duration_ms}
port = {SHADOW_PORT}
"#
    );
    // Only udp4 gets the checks; the standard services' others stay plain.
    rig::standard_services("redirect", "").replacen(
        "green = { backend = \"198.18.2.2:514\" }\n",
        &format!("green = {{ backend = \"198.18.2.2:514\" }}\n{extra}"),
        1,
    )
}

fn map(rig: &Rig, name: &str) -> Map {
    let pin = datapath::maps_dir(&rig.bpffs).join(name);
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    Map::from_map_data(data).expect("map type")
}

/// The shadowing entries that are on (share set), by service id.
fn shadowing(rig: &Rig) -> Vec<(u32, ShadowValue)> {
    let a: Array<MapData, ShadowValue> = Array::try_from(map(rig, names::SHADOW)).expect("SHADOW");
    (0..a.len())
        .filter_map(|i| a.get(&i, 0).ok().map(|v| (i, v)))
        .filter(|(_, v)| v.share != 0)
        .collect()
}

/// Copies made so far, over every service.
fn copies(rig: &Rig) -> ShadowCounters {
    let a: PerCpuArray<MapData, ShadowCounters> =
        PerCpuArray::try_from(map(rig, names::SHADOW_COUNTERS)).expect("SHADOW_COUNTERS");
    let mut total = ShadowCounters::default();
    for i in 0..a.len() {
        for c in a.get(&i, 0).expect("read").iter() {
            total.add(c);
        }
    }
    total
}

fn deploy(rig: &Rig, version: &str) {
    rig.call(&Request::Deploy {
        service: "udp4".into(),
        color: Color::Green,
        members: vec![Member::new(std::net::SocketAddr::new(
            GREEN_V4.into(),
            UDP_PORT,
        ))],
        version: Some(version.into()),
        force: false,
    })
    .expect("deploy");
}

/// Starts the promotion without waiting and returns once the copies are on.
fn promote_until_shadowing(rig: &Rig) {
    rig.call(&Request::Promote {
        service: "udp4".into(),
        wait: false,
    })
    .expect("promote");
    let deadline = Instant::now() + WAIT;
    while shadowing(rig).is_empty() {
        assert!(Instant::now() < deadline, "shadowing never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn latest(rig: &Rig) -> Deployment {
    let v = rig
        .call(&Request::History {
            service: "udp4".into(),
        })
        .expect("history");
    let mut all: Vec<Deployment> = serde_json::from_value(v).expect("history");
    all.sort_by_key(|d| d.id);
    all.pop().expect("a deployment")
}

fn wait_phase(rig: &Rig, done: impl Fn(Phase) -> bool) -> Deployment {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = latest(rig);
        if done(d.phase) {
            return d;
        }
        assert!(Instant::now() < deadline, "still {:?}", d.phase);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn udp(rig: &Rig, stream: &str, count: u64, rate: u64) -> Proc {
    rig.stream("udp", stream, count, rate).expect("sender")
}

/// Sends traffic for a while and fails if any copy is made meanwhile.
fn assert_no_copies(rig: &Rig, stream: &str, after: &str) {
    let before = copies(rig);
    let s = udp(rig, stream, 300, 300);
    rig::finish_sender(&s, Duration::from_secs(20)).expect("sender");
    rig.wait_stream(stream, 300, Duration::from_secs(10))
        .expect("read");
    assert!(shadowing(rig).is_empty(), "{after}: shadowing still on");
    assert_eq!(
        copies(rig).copies,
        before.copies,
        "{after}: copies kept flowing"
    );
}

/// The program attached at the rig's client-facing TC ingress, and its run statistics.
fn shadow_prog_stats(rig: &Rig) -> Option<(u64, Duration)> {
    let pin = datapath::pins_dir(&rig.bpffs)
        .join("links")
        .join(format!("tc-ingress-{EDGE_TO_CLIENT}"));
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(&pin)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let id = v["prog_id"].as_u64()?;
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| u64::from(p.id()) == id)
        .map(|p| (p.run_count(), p.run_time()))
}

#[test]
fn shadowing_copies_every_line_to_green_and_ends_when_the_step_passes() {
    if !privileged() {
        return;
    }
    let rig = Rig::up("sh", &services(4000)).expect("rig up");
    // Program run times are counted only while this is held.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF stats");
    deploy(&rig, "v2");
    promote_until_shadowing(&rig);
    let stats0 = shadow_prog_stats(&rig);
    let count: u64 = 1000;
    let s = udp(&rig, "sh", count, 500);
    rig::finish_sender(&s, Duration::from_secs(20)).expect("sender");
    let stats1 = shadow_prog_stats(&rig);
    let got: Received = rig
        .wait_received("sh", "originals at blue, copies at green", WAIT, |r| {
            r.blue.len() >= count as usize && r.green.len() >= count as usize
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Every original at blue once; every copy at green's shadow port once (green is not
    // active, so nothing else reaches it).
    let blue = Received {
        blue: got.blue.clone(),
        green: Vec::new(),
    };
    let green = Received {
        blue: Vec::new(),
        green: got.green.clone(),
    };
    for (what, r) in [("originals", &blue), ("copies", &green)] {
        let (lost, dup) = r.loss_and_duplicates(count);
        assert!(
            lost.is_empty() && dup.is_empty(),
            "{what}: lost {lost:?}, dup {dup:?}"
        );
    }
    assert!(
        std::fs::read_to_string(rig.sink_file(Host::Green))
            .expect("green's file")
            .lines()
            .filter(|l| l.contains("stream=sh "))
            .count()
            == count as usize
    );
    let d = wait_phase(&rig, |p| matches!(p, Phase::Promoted | Phase::Stable));
    let shadow = d
        .transitions
        .iter()
        .find_map(|t| t.evidence.as_ref().and_then(|e| e.get("shadow")).cloned())
        .expect("shadow evidence");
    assert!(shadow["copies"].as_u64() >= Some(count), "{shadow}");
    assert_eq!(shadow["failed_copies"], 0, "{shadow}");
    if let (Some((n0, t0)), Some((n1, t1))) = (stats0, stats1) {
        let runs = n1.saturating_sub(n0).max(1);
        eprintln!(
            "shadow program: {runs} runs, {:.0} ns per run (clone and both rewrites included)",
            (t1.saturating_sub(t0)).as_nanos() as f64 / runs as f64
        );
    }
    // Passed: green serves now, and nothing is copied any more.
    assert_no_copies(&rig, "after-pass", "after the pass");
}

#[test]
fn shadowing_ends_on_failure_abort_and_daemon_crash() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::up("sf", &services(3000)).expect("rig up");
    let feed = udp(&rig, "bg", 20_000, 400);

    // Failure: green starts reporting errors under the shadowed load.
    deploy(&rig, "v2");
    promote_until_shadowing(&rig);
    rig.fault(Host::Green, r#"{"errors_per_sec": 20}"#)
        .expect("fault");
    let d = wait_phase(&rig, |p| p == Phase::Rejected);
    let why = d.last().map(|t| t.reason.clone()).unwrap_or_default();
    assert!(why.contains("shadow: "), "{why}");
    assert!(why.contains("ingest_errors_total"), "{why}");
    rig.fault(Host::Green, r#"{"errors_per_sec": 0}"#)
        .expect("fault");
    assert_no_copies(&rig, "after-fail", "after the failure");

    // Abort mid-step.
    deploy(&rig, "v3");
    promote_until_shadowing(&rig);
    rig.call(&Request::Abort {
        service: "udp4".into(),
    })
    .expect("abort");
    assert_no_copies(&rig, "after-abort", "after the abort");

    // kill -9 mid-step: nobody ends the copies, the datapath's deadline does (3 s + 2 s).
    deploy(&rig, "v4");
    promote_until_shadowing(&rig);
    let killed = Instant::now();
    rig.kill_daemon().expect("kill -9");
    assert!(
        feed.try_wait().expect("wait").is_none(),
        "the feed still runs"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let stopped = loop {
        let a = copies(&rig).copies;
        std::thread::sleep(Duration::from_millis(500));
        if copies(&rig).copies == a {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "copies still flowing 10 s after kill -9"
        );
    };
    assert!(
        stopped <= Duration::from_millis(7000),
        "copies stopped {stopped:?} after the crash"
    );
    eprintln!("copies stopped {stopped:?} after kill -9 (step of 3 s + 2 s grace)");
    // The next daemon clears what the dead one left.
    rig.start_daemon().expect("restart");
    assert!(
        shadowing(&rig).is_empty(),
        "a restarted daemon clears the shadowing"
    );
    let _ = feed.stop();
}
