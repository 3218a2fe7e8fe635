use std::{net::SocketAddr, sync::Arc};

use switcher_common::MemberCounters;

use super::*;
use crate::{
    config::Member,
    datapath::{read::MemberReading, Census},
    state::Slot,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn slot(members: Vec<Member>) -> Slot {
    Slot {
        members,
        deployed: false,
        version: None,
        trusted: true,
    }
}

fn health(backend: &str, up: bool, in_service: bool) -> BackendHealth {
    BackendHealth {
        backend: backend.into(),
        up,
        latency_seconds: 0.002,
        checked_at_ms: 1,
        error: (!up).then(|| "connection refused".into()),
        ok_total: 3,
        failed_total: 2,
        in_service,
        streak: 2,
    }
}

/// Blue: a pool of three (one weighted 2, one out of service, one not yet in the maps);
/// green: a pool of one, never probed.
fn scrape() -> String {
    scrape_with(None)
}

fn scrape_with(fleet: Option<FleetSample>) -> String {
    let catalog = vec![CatalogEntry {
        name: "udp4".into(),
        id: 3,
        vip: "198.18.10.10".into(),
        port: 514,
        protocol: "udp".into(),
        blue: slot(vec![
            Member::new(addr("198.18.1.2:514")),
            Member {
                addr: addr("198.18.1.3:514"),
                weight: 2,
            },
            Member::new(addr("198.18.1.4:514")),
        ]),
        green: slot(vec![Member::new(addr("[2001:db8::2]:514"))]),
        health: [Vec::new(), Vec::new()],
        current: None,
        recent: Vec::new(),
    }];
    let counters = |packets, bytes, new_flows| MemberCounters {
        packets,
        bytes,
        new_flows,
    };
    let mut readings = Readings::default();
    readings.services.insert(3, ServiceReading::default());
    readings.members.insert(
        (3, Color::Blue.index()),
        vec![
            MemberReading {
                addr: addr("198.18.1.2:514"),
                slot: 7,
                share: 1.0,
                counters: counters(10, 1000, 2),
            },
            MemberReading {
                addr: addr("198.18.1.3:514"),
                slot: 8,
                share: 0.0,
                counters: counters(40, 4000, 5),
            },
        ],
    );
    readings.members.insert(
        (3, Color::Green.index()),
        vec![MemberReading {
            addr: addr("[2001:db8::2]:514"),
            slot: 9,
            share: 1.0,
            counters: counters(0, 0, 0),
        }],
    );
    readings.census = Census {
        pinned: [(3, [4, 0])].into(),
        member_pinned: [(7, 1), (8, 3)].into(),
        entries: 4,
    };
    let board = [
        (
            ("udp4".to_string(), Color::Blue, addr("198.18.1.2:514")),
            health("198.18.1.2:514", true, true),
        ),
        (
            ("udp4".to_string(), Color::Blue, addr("198.18.1.3:514")),
            health("198.18.1.3:514", false, false),
        ),
    ]
    .into();
    let data = ScrapeData {
        catalog: Arc::new(catalog),
        readings,
        health: board,
        mono_ns: 0,
        wall: SystemTime::now(),
        previous_scrape_seconds: 0.0,
        fleet,
        xdp: vec![("eth0".into(), Attached::Generic)],
    };
    encode(data, &Recorded::default()).expect("encode")
}

/// The samples of metric `name` (a sample name), each as `{labels} value`.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .collect()
}

const B2: &str = r#"service="udp4",color="blue",backend="198.18.1.2:514""#;
const B3: &str = r#"service="udp4",color="blue",backend="198.18.1.3:514""#;
const B4: &str = r#"service="udp4",color="blue",backend="198.18.1.4:514""#;
const G: &str = r#"service="udp4",color="green",backend="[2001:db8::2]:514""#;

#[test]
fn every_member_has_its_counters_connections_and_share() {
    let text = scrape();
    let expect = |name: &str, want: &[String]| {
        assert_eq!(samples(&text, name), want, "{name} in:\n{text}");
    };
    let series = |values: [&str; 4]| -> Vec<String> {
        [B2, B3, B4, G]
            .iter()
            .zip(values)
            .map(|(l, v)| format!("{{{l}}} {v}"))
            .collect()
    };
    expect(
        "switcher_member_packets_total",
        &series(["10", "40", "0", "0"]),
    );
    expect(
        "switcher_member_bytes_total",
        &series(["1000", "4000", "0", "0"]),
    );
    expect(
        "switcher_member_new_flows_total",
        &series(["2", "5", "0", "0"]),
    );
    expect(
        "switcher_member_pinned_flows",
        &series(["1", "3", "0", "0"]),
    );
    // Out of service (B3) and not yet in the table (B4): no share of new flows.
    expect(
        "switcher_member_share",
        &series(["1.0", "0.0", "0.0", "1.0"]),
    );
    for (family, kind) in [
        ("switcher_member_packets", "counter"),
        ("switcher_member_bytes", "counter"),
        ("switcher_member_new_flows", "counter"),
        ("switcher_member_pinned_flows", "gauge"),
        ("switcher_member_share", "gauge"),
        ("switcher_member_in_service", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} {kind}:\n{text}"
        );
    }
    assert!(
        text.contains("# UNIT switcher_member_bytes bytes\n"),
        "{text}"
    );
}

#[test]
fn in_service_comes_from_the_health_board_and_only_for_probed_members() {
    let text = scrape();
    assert_eq!(
        samples(&text, "switcher_member_in_service"),
        [format!("{{{B2}}} 1"), format!("{{{B3}}} 0")],
        "{text}"
    );
    // The probe series stay one per probed member, with the same backend label.
    assert_eq!(
        samples(&text, "switcher_backend_up"),
        [format!("{{{B2}}} 1"), format!("{{{B3}}} 0")],
        "{text}"
    );
    assert_eq!(
        samples(&text, "switcher_backend_probes_total"),
        [
            format!("{{{B2},result=\"ok\"}} 3"),
            format!("{{{B2},result=\"failed\"}} 2"),
            format!("{{{B3},result=\"ok\"}} 3"),
            format!("{{{B3},result=\"failed\"}} 2"),
        ],
        "{text}"
    );
    // The per-colour series are unchanged by pools: one per colour.
    assert_eq!(
        samples(&text, "switcher_pinned_flows"),
        [
            r#"{service="udp4",color="blue"} 4"#,
            r#"{service="udp4",color="green"} 0"#
        ],
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}

/// The shipped alert rules and Grafana dashboard name only series the daemon exports: every
/// `switcher_*` name in them is a family of a scrape (fleet mode included), or one of its
/// samples (`_total`, `_bucket`, `_sum`, `_count`).
#[test]
fn the_monitoring_kit_uses_only_exported_metrics() {
    let text = scrape_with(Some(FleetSample {
        connected: true,
        reconnects: 1,
        revisions: [("udp4".to_string(), (5, 5))].into(),
        hosts: Some((3, 0)),
    }));
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let exported = |name: &str| {
        families.iter().any(|f| {
            name == *f
                || ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f))
        })
    };
    for (file, body) in [
        (
            "switcher-alerts.yml",
            include_str!("../../../dist/monitoring/switcher-alerts.yml"),
        ),
        (
            "grafana-switcher.json",
            include_str!("../../../dist/monitoring/grafana-switcher.json"),
        ),
    ] {
        let mut names: Vec<&str> = body
            .match_indices("switcher_")
            .map(|(i, _)| {
                let rest = &body[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() > 5, "{file}: only {names:?}");
        for n in names {
            assert!(
                exported(n),
                "{file} uses {n}, which no scrape exports: {families:?}"
            );
        }
    }
}

#[test]
fn the_xdp_mode_is_one_of_a_state_set_per_interface() {
    let text = scrape();
    let s = samples(&text, "switcher_xdp_attached");
    assert_eq!(s.len(), Attached::ALL.len(), "{s:?}");
    assert!(
        s.contains(&r#"{interface="eth0",mode="generic"} 1"#),
        "{s:?}"
    );
    assert!(
        s.contains(&r#"{interface="eth0",mode="native"} 0"#),
        "{s:?}"
    );
    assert_eq!(s.iter().filter(|l| l.ends_with(" 1")).count(), 1, "{s:?}");
}
