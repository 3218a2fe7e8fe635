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
            protocol: Protocol::Tcp,
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
        Some(&report(4, 1000.0, 0, 1000)),
    );
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn load_failures_name_the_threshold() {
    let serving = report(4, 1000.0, 0, 1000);
    let f = load(&cfg(), &report(30, 990.0, 0, 1000), Some(&serving));
    assert!(f.iter().any(|m| m.contains("> 20 ms")), "{f:?}");
    assert!(f.iter().any(|m| m.contains("1.5 x serving")), "{f:?}");
    let f = load(&cfg(), &report(5, 400.0, 3, 1000), Some(&serving));
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
        Some(&report(4, 1000.0, 0, 1000)),
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
        !traffic_dropped(0.0, 0.0, 0.5),
        "no traffic yet: no baseline"
    );
    assert!(!traffic_dropped(900.0, 1000.0, 0.5));
    assert!(traffic_dropped(400.0, 1000.0, 0.5));
    assert!(traffic_dropped(0.0, 10.0, 0.5));
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
    // Traffic fell under half the best round (1000/s): the second failure in a row.
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
