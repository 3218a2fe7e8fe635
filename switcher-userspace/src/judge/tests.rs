//! The judges against hand-made measurements: thresholds named in the failures, no data
//! failing, rounds counted.

use std::collections::BTreeMap;

use super::*;
use crate::{
    config::MetricRule,
    probe::{health::HealthRounds, load::LoadSpec, metrics::Sample, Percentiles},
};

fn cfg() -> LoadCheck {
    LoadCheck {
        port: None,
        run: LoadSpec {
            protocol: crate::probe::load::LoadProtocol::Tcp,
            lines: 1000,
            rate: 1000,
            line_size: 100,
            connections: 1,
            ack: true,
            timeout: Duration::from_secs(5),
        },
        max_p99_ms: Some(20.0),
        min_throughput: Some(500.0),
        max_error_ratio: 0.0,
        max_p99_ratio: Some(1.5),
        min_throughput_ratio: Some(0.8),
    }
}

fn report(p99_ms: u64, lps: f64, errors: u64, samples: u64) -> LoadReport {
    LoadReport {
        target: "198.18.2.2:601".parse().expect("addr"),
        sent: 1000,
        acked: 1000 - errors,
        errors,
        first_error: (errors > 0).then(|| "reset".to_string()),
        elapsed_ms: 1000,
        throughput_lps: lps,
        latency_kind: "write_to_ack".into(),
        latency: Percentiles {
            p50_us: p99_ms * 500,
            p90_us: p99_ms * 900,
            p99_us: p99_ms * 1000,
            max_us: p99_ms * 1000,
            count: samples,
        },
    }
}

#[test]
fn load_within_thresholds_passes() {
    let f = load(
        &cfg(),
        &report(5, 990.0, 0, 1000),
        Some(Reference::of(&report(4, 1000.0, 0, 1000))),
    );
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn load_failures_name_the_threshold() {
    let serving = Some(Reference::of(&report(4, 1000.0, 0, 1000)));
    let f = load(&cfg(), &report(30, 990.0, 0, 1000), serving);
    assert!(f.iter().any(|m| m.contains("> 20 ms")), "{f:?}");
    assert!(f.iter().any(|m| m.contains("1.5 x serving")), "{f:?}");
    let f = load(&cfg(), &report(5, 400.0, 3, 1000), serving);
    assert!(
        f.iter()
            .any(|m| m.contains("3 errors") && m.contains("reset")),
        "{f:?}"
    );
    assert!(f.iter().any(|m| m.contains("< 500")), "{f:?}");
    assert!(f.iter().any(|m| m.contains("0.8 x serving")), "{f:?}");
}

#[test]
fn load_without_data_fails() {
    let f = load(
        &cfg(),
        &report(0, 990.0, 0, 0),
        Some(Reference::of(&report(4, 1000.0, 0, 1000))),
    );
    assert!(f.iter().any(|m| m.contains("no latency samples")), "{f:?}");
    let f = load(&cfg(), &report(5, 990.0, 0, 1000), None);
    assert!(f.iter().any(|m| m.contains("no serving backend")), "{f:?}");
}

fn sample(name: &str, v: f64) -> Sample {
    Sample {
        name: name.into(),
        labels: BTreeMap::new(),
        value: v,
    }
}

#[test]
fn metrics_checks_use_the_delta_and_missing_data_fails() {
    let m = MetricsCheck {
        url: "http://x/metrics".into(),
        timeout: Duration::from_secs(1),
        rules: vec![
            MetricRule {
                name: "errors_total".into(),
                labels: BTreeMap::new(),
                max_increase: Some(0.0),
                min_rate: None,
            },
            MetricRule {
                name: "lines_total".into(),
                labels: BTreeMap::new(),
                max_increase: None,
                min_rate: Some(100.0),
            },
        ],
    };
    let secs = Duration::from_secs(2);
    let ok = metrics(
        &m,
        Ok(vec![
            sample("errors_total", 7.0),
            sample("lines_total", 0.0),
        ]),
        Ok(vec![
            sample("errors_total", 7.0),
            sample("lines_total", 400.0),
        ]),
        secs,
    );
    assert!(ok.0.is_empty(), "{:?}", ok.0);
    let bad = metrics(
        &m,
        Ok(vec![
            sample("errors_total", 7.0),
            sample("lines_total", 0.0),
        ]),
        Ok(vec![
            sample("errors_total", 9.0),
            sample("lines_total", 100.0),
        ]),
        secs,
    );
    assert_eq!(bad.0.len(), 2, "{:?}", bad.0);
    let missing = metrics(&m, Ok(vec![]), Ok(vec![]), secs);
    assert_eq!(missing.0.len(), 2, "{:?}", missing.0);
    assert!(
        missing.0.iter().all(|f| f.contains("not exported")),
        "{:?}",
        missing.0
    );
    let down = metrics(&m, Err("refused".into()), Ok(vec![]), secs);
    assert_eq!(
        down.0,
        ["metrics: scraping http://x/metrics failed: refused"]
    );
}

#[test]
fn a_sudden_drop_needs_a_baseline() {
    assert!(
        !traffic_dropped(0.0, None, 0.5),
        "no traffic yet: no baseline"
    );
    assert!(!traffic_dropped(900.0, Some(1000.0), 0.5));
    assert!(traffic_dropped(400.0, Some(1000.0), 0.5));
    assert!(traffic_dropped(0.0, Some(10.0), 0.5));
    assert!(
        !traffic_dropped(0.0, Some(9.0), 0.5),
        "a trickle under the floor is not judged"
    );
}

/// Issue 11: one remote sender's burst, then silence, must not roll a deployment back. The
/// baseline is the median of the rounds, which a burst does not move.
#[test]
fn a_burst_then_silence_is_not_a_drop() {
    let mut j = WatchJudge::new(policy(2));
    let mut n = 0;
    let mut step = |j: &mut WatchJudge, packets: u64| {
        let before = n;
        n += packets;
        j.round(round((before, 0), (n, 0), None))
    };
    for _ in 0..5 {
        assert_eq!(step(&mut j, 100), Round::Passed, "steady 100/s");
    }
    assert_eq!(step(&mut j, 50_000), Round::Passed, "a burst");
    for _ in 0..5 {
        assert_eq!(step(&mut j, 100), Round::Passed, "back to usual: no drop");
    }
    // A quiet service: only a few packets, then none. Under the floor, never a drop.
    let mut q = WatchJudge::new(policy(2));
    let mut m = 0;
    for packets in [5, 5, 5, 0, 0, 0] {
        let before = m;
        m += packets;
        assert_eq!(q.round(round((before, 0), (m, 0), None)), Round::Passed);
    }
    // A real drop of the usual traffic still fails.
    assert!(matches!(step(&mut j, 10), Round::Failed { .. }));
}

#[test]
fn urls_and_probe_targets_are_the_candidates_own() {
    let v6: SocketAddr = "[2001:2:0:2::2]:601".parse().expect("addr");
    assert_eq!(
        expand_url("http://{addr}:8080/health?p={port}", v6),
        "http://[2001:2:0:2::2]:8080/health?p=601"
    );
    let h = HealthCheck {
        tcp_port: None,
        http: Some("http://{addr}:8080/h".into()),
        rounds: HealthRounds::default(),
    };
    let v4: SocketAddr = "198.18.2.2:514".parse().expect("addr");
    let tcp = health_spec(&h, Protocol::Tcp, v4);
    assert_eq!(tcp.tcp, Some(v4), "a TCP service's own port is probed");
    assert_eq!(tcp.http_url.as_deref(), Some("http://198.18.2.2:8080/h"));
    assert_eq!(health_spec(&h, Protocol::Udp, v4).tcp, None);
    let with_port = HealthCheck {
        tcp_port: Some(601),
        ..h
    };
    assert_eq!(
        health_spec(&with_port, Protocol::Udp, v4).tcp,
        Some("198.18.2.2:601".parse().expect("addr"))
    );
    let mut l = cfg();
    assert_eq!(load_target(&l, v4), v4);
    l.port = Some(6514);
    assert_eq!(
        load_target(&l, v4),
        "198.18.2.2:6514".parse().expect("addr")
    );
}

fn counters(packets: u64, new_flows: u64, resets: u64, unreachables: u64) -> ColorCounters {
    ColorCounters {
        packets,
        new_flows,
        resets,
        unreachables,
        ..Default::default()
    }
}

#[test]
fn canary_needs_traffic_and_no_backend_errors() {
    assert_eq!(canary_share(10.0), 6554);
    assert_eq!(canary_share(0.0), 1, "never a silent canary");
    assert_eq!(canary_share(100.0), 65535, "never all new flows");
    let d = Duration::from_secs(5);
    let (ok, ev) = canary(10.0, d, &counters(10, 1, 0, 0), &counters(50, 4, 0, 0), 0);
    assert!(ok.is_empty(), "{ok:?}");
    assert_eq!(
        (ev["packets"].as_u64(), ev["new_flows"].as_u64()),
        (Some(40), Some(3))
    );
    let (silent, _) = canary(10.0, d, &counters(10, 1, 0, 0), &counters(10, 1, 0, 0), 0);
    assert_eq!(
        silent,
        ["canary: no traffic reached the candidate in 5 s at 10% of new flows"]
    );
    let (bad, _) = canary(10.0, d, &counters(0, 0, 1, 0), &counters(9, 2, 3, 1), 2);
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad.iter().any(|f| f.contains("reset 2 TCP")), "{bad:?}");
}

fn policy(failures: u32) -> WatchPolicy {
    WatchPolicy {
        window: Duration::from_secs(30),
        interval: Duration::from_secs(1),
        failures,
        max_resets: Some(0),
        max_unreachables: None,
        min_rate_ratio: Some(0.5),
        min_healthy_share: 0.5,
    }
}

fn round(before: (u64, u64), after: (u64, u64), health_error: Option<&str>) -> RoundObservation {
    RoundObservation {
        health_error: health_error.map(String::from),
        metrics_failures: Vec::new(),
        before: counters(before.0, 0, before.1, 0),
        after: counters(after.0, 0, after.1, 0),
        seconds: 1.0,
    }
}

#[test]
fn the_watch_rolls_back_after_enough_consecutive_failures_only() {
    let mut j = WatchJudge::new(policy(2));
    assert_eq!(j.round(round((0, 0), (1000, 0), None)), Round::Passed);
    // One failed round, then a good one: the streak starts over.
    assert!(matches!(
        j.round(round((1000, 0), (2000, 0), Some("refused"))),
        Round::Failed {
            round: 2,
            consecutive: 1,
            rollback: false,
            ..
        }
    ));
    assert_eq!(j.round(round((2000, 0), (3000, 0), None)), Round::Passed);
    match j.round(round((3000, 0), (4000, 1), None)) {
        Round::Failed {
            failures, rollback, ..
        } => {
            assert!(!rollback);
            assert_eq!(
                failures,
                ["datapath: the candidate reset 1 TCP connections (max 0)"]
            );
        }
        other => panic!("{other:?}"),
    }
    // Traffic fell under half the usual rate (1000/s): the second failure in a row.
    match j.round(round((4000, 1), (4300, 1), None)) {
        Round::Failed {
            round,
            consecutive,
            failures,
            rollback,
            allowed,
        } => {
            assert_eq!((round, consecutive, allowed, rollback), (5, 2, 2, true));
            assert!(
                failures[0].contains("fell to 300 packets/s"),
                "{failures:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(j.rounds(), 5);
}

fn at(r: LoadReport, addr: &str) -> LoadReport {
    LoadReport {
        target: addr.parse().expect("addr"),
        ..r
    }
}

#[test]
fn an_environment_is_judged_per_member_and_as_a_whole() {
    let l = cfg();
    let serving = [
        at(report(10, 900.0, 0, 100), "198.18.1.2:601"),
        at(report(10, 1000.0, 0, 100), "198.18.1.3:601"),
        at(report(10, 1100.0, 0, 100), "198.18.1.4:601"),
    ];
    // A member is held to the serving environment's worst: its slowest p99, its lowest
    // throughput.
    let worst = Reference::worst(&serving).expect("a reference");
    assert_eq!((worst.p99_ms, worst.throughput_lps), (Some(10.0), 900.0));
    assert_eq!(Reference::worst(&[]), None);
    let good = [
        at(report(11, 950.0, 0, 100), "198.18.2.2:601"),
        at(report(12, 1000.0, 0, 100), "198.18.2.3:601"),
    ];
    assert!(load_environment(&l, &good, &serving).is_empty());
    // One slow member fails, named; the healthy one does not.
    let one_slow = [
        at(report(11, 950.0, 0, 100), "198.18.2.2:601"),
        at(report(30, 950.0, 0, 100), "198.18.2.3:601"),
    ];
    let f = load_environment(&l, &one_slow, &serving);
    assert!(
        f.iter().any(|x| x.starts_with("load 198.18.2.3:601: p99")),
        "{f:?}"
    );
    assert!(!f.iter().any(|x| x.contains("198.18.2.2:601")), "{f:?}");
    // Each member fine on its own against the typical node, but the environment as a whole
    // is slower than 0.8 x the serving one's mean per node.
    let mut lenient = cfg();
    lenient.min_throughput = None;
    lenient.min_throughput_ratio = Some(0.8);
    let strong_serving = [
        at(report(10, 900.0, 0, 100), "198.18.1.2:601"),
        at(report(10, 1000.0, 0, 100), "198.18.1.3:601"),
        at(report(10, 1400.0, 0, 100), "198.18.1.4:601"),
    ];
    let weak = [
        at(report(11, 850.0, 0, 100), "198.18.2.2:601"),
        at(report(11, 850.0, 0, 100), "198.18.2.3:601"),
    ];
    let f = load_environment(&lenient, &weak, &strong_serving);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f.iter().any(|x| x.starts_with("load (environment)")),
        "{f:?}"
    );
    assert_eq!(
        load_environment(&l, &[], &serving),
        ["load: the candidate has no member to load"]
    );
}

#[test]
fn the_load_sample_is_spread_over_the_pool() {
    let members: Vec<crate::config::Member> = (0..20u8)
        .map(|i| {
            crate::config::Member::new(format!("198.18.2.{}:601", i + 2).parse().expect("addr"))
        })
        .collect();
    assert_eq!(
        crate::judge::sample(&members[..5], LOAD_SAMPLE).len(),
        5,
        "all of a small pool"
    );
    let s = crate::judge::sample(&members, LOAD_SAMPLE);
    assert_eq!(s.len(), LOAD_SAMPLE);
    assert_eq!(s[0], members[0]);
    assert!(s.contains(&members[17]), "reaches the end: {s:?}");
}

#[test]
fn the_healthy_share_of_an_environment() {
    let m = |i: u8| -> std::net::SocketAddr { format!("198.18.2.{i}:601").parse().expect("addr") };
    let ok = |i| (m(i), None);
    let bad = |i| (m(i), Some("refused".to_string()));
    assert_eq!(healthy_share(&[ok(2), ok(3), bad(4)], 0.5), None);
    let f = healthy_share(&[ok(2), bad(3), bad(4)], 0.5).expect("fails");
    assert!(f.starts_with("1 of 3 members healthy (33% < 50%)"), "{f}");
    assert!(f.contains("198.18.2.3:601: refused"), "{f}");
    // None healthy fails whatever the threshold; one member reads as before.
    assert!(healthy_share(&[bad(2), bad(3)], 0.0).is_some());
    assert_eq!(
        healthy_share(&[bad(2)], 0.5).as_deref(),
        Some("198.18.2.2:601: refused")
    );
    assert_eq!(healthy_share(&[], 0.5), None);
}

/// A load report of member `i` of `side` with p99 `p99_us`, at the configured rate.
fn member(side: u8, i: u8, p99_us: u64) -> LoadReport {
    let mut r = at(
        report(1, 1000.0, 0, 2000),
        &format!("198.18.{side}.{i}:601"),
    );
    r.latency.p99_us = p99_us;
    r.latency.max_us = p99_us;
    r
}

#[test]
fn identical_environments_pass_and_real_regressions_fail() {
    let l = cfg();
    // Eight serving and eight candidate members with the same spread of p99s (as a shared
    // machine gives identical collectors): the slowest candidate is 1.55 x the serving
    // environment's median, which is no regression (it failed when members were held to
    // serving's median node), and passes.
    let spread = [2500, 2600, 2700, 2800, 2930, 3300, 3900, 4550];
    let serving: Vec<LoadReport> = (0u8..8)
        .map(|i| member(1, i + 2, spread[usize::from(i)]))
        .collect();
    let same: Vec<LoadReport> = (0u8..8)
        .map(|i| member(2, i + 2, spread[usize::from(7 - i)]))
        .collect();
    assert!(load_environment(&l, &same, &serving).is_empty());
    // One member far outside serving's spread fails, named, and alone.
    let mut outlier = same.clone();
    outlier[3] = member(2, 5, 7000);
    let f = load_environment(&l, &outlier, &serving);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with(
            "load 198.18.2.5:601: p99 7.00 ms > 1.5 x the slowest serving member's 4.55 ms"
        ),
        "{f:?}"
    );
    // Every member at 5 ms: none beyond 1.5 x serving's worst (6.8 ms), but the medians
    // compared like with like fail.
    let slower: Vec<LoadReport> = (0u8..8).map(|i| member(2, i + 2, 5000)).collect();
    let f = load_environment(&l, &slower, &serving);
    assert_eq!(
        f,
        ["load (environment): median p99 across members 5.00 ms > 1.5 x serving's 2.93 ms"]
    );
    // A serving member without latency samples leaves nothing to compare with: a failure.
    let mut blind = serving.clone();
    blind[0].latency.count = 0;
    let f = load_environment(&l, &same, &blind);
    assert!(
        f.iter()
            .any(|x| x.contains("serving backend yielded no latency samples")),
        "{f:?}"
    );
}
