//! Human output of the CLI: what the daemon answered, as lines an operator reads. Scripts use
//! `--json`, which prints the daemon's documents unchanged.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use crate::{
    config::{describe, Member},
    controller::{Event, MemberView, StatusView},
    deploy::{Deployment, Phase},
    domain::{fmt_time, Color},
};

/// `status`: each service, its two colours (the active one starred), the last flip and the
/// deployment in progress; then the flow table and the datapath's reasons.
pub fn status(v: &StatusView) -> String {
    let mut out = String::new();
    for s in &v.services {
        let vip = match s.vip.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, s.port).to_string(),
            Err(_) => format!("{}:{}", s.vip, s.port),
        };
        let _ = writeln!(
            out,
            "{}  {vip}/{}  active={} (generation {})",
            s.name, s.protocol, s.active, s.generation
        );
        for c in Color::BOTH {
            let t = s.color(c);
            let mark = if c == s.active { "*" } else { " " };
            // A pool of one is its backend; a larger pool is listed member by member below.
            let pool = (t.members.len() > 1).then(|| format!("{} members", t.members.len()));
            let _ = writeln!(
                out,
                "  {mark}{c:<6} {:<26} {:<10} {:<9} packets={:<9} new_flows={:<6} pin_misses={:<4} resets={:<4} unreachables={}",
                pool.as_deref().or(t.backend.as_deref()).unwrap_or("-"),
                t.version.as_deref().unwrap_or("-"),
                if t.trusted { "validated" } else { "unproven" },
                t.packets,
                t.new_flows,
                t.pin_misses,
                t.resets,
                t.unreachables
            );
            if t.members.len() > 1 {
                for m in &t.members {
                    out.push_str(&member_line(m));
                }
            }
        }
        if let Some(f) = &s.last_flip {
            let fmt = |v: Option<u64>| {
                v.map_or("-".to_string(), |ns| format!("{:.1} µs", ns as f64 / 1e3))
            };
            let _ = writeln!(
                out,
                "   last flip: generation {}, first packet after it: blue {}, green {}",
                f.generation,
                fmt(f.blue_first_after_ns),
                fmt(f.green_first_after_ns)
            );
        }
        if let Some(r) = &s.retiring {
            let _ = writeln!(out, "   {}", r.describe(fmt_time));
        }
        if let Some(d) = &s.deployment {
            let _ = writeln!(
                out,
                "   deployment {}: {} {} {} is {} since {} ({}: {})",
                d.id,
                d.color,
                d.backend,
                d.version.as_deref().unwrap_or(""),
                d.phase,
                fmt_time(d.since_ms),
                d.actor,
                d.reason
            );
            if let Some(w) = d.watch_until_ms.filter(|_| d.phase == Phase::Promoted) {
                let _ = writeln!(out, "   watching until {}", fmt_time(w));
            }
            if let Some(w) = d.warm_until_ms.filter(|_| d.phase == Phase::Stable) {
                let _ = writeln!(
                    out,
                    "   {} kept warm for rollback until {}",
                    d.color.other(),
                    fmt_time(w)
                );
            }
        }
    }
    let _ = writeln!(out, "flows tracked: {}", v.flows);
    let nonzero: Vec<String> = v
        .reasons
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "reasons: {}",
        if nonzero.is_empty() {
            "-".into()
        } else {
            nonzero.join(" ")
        }
    );
    out
}

/// `flows`: one line per connection, then how many there are.
pub fn flows(v: &crate::controller::flows::FlowsView) -> String {
    let mut out = format!(
        "{:<16} {:<6} {:<40} {:<40} {:<8} {:>10} {:>9}\n",
        "SERVICE", "COLOR", "CLIENT", "MEMBER", "STATE", "AGE", "IDLE"
    );
    for f in &v.flows {
        let _ = writeln!(
            out,
            "{:<16} {:<6} {:<40} {:<40} {:<8} {:>9.1}s {:>8.1}s",
            f.service,
            f.color.to_string(),
            f.client.to_string(),
            f.member.to_string(),
            f.state,
            f.age_seconds,
            f.idle_seconds
        );
    }
    let _ = writeln!(
        out,
        "{} connection(s){}",
        v.total,
        if v.truncated {
            format!(", the oldest {} shown (--limit)", v.flows.len())
        } else {
            String::new()
        }
    );
    out
}

/// One member of a pool under its colour's line: address (`*WEIGHT` when not 1), share of
/// the colour's new flows, whether it is in the table and its last probe, its traffic.
fn member_line(m: &MemberView) -> String {
    let addr = Member {
        addr: m.addr,
        weight: m.weight,
    }
    .to_string();
    let (service, probe, error) = match &m.health {
        None => ("in service", "not probed".to_string(), None),
        Some(h) => (
            if h.in_service {
                "in service"
            } else {
                "out of service"
            },
            if h.up {
                format!("up {:.1} ms", h.latency_seconds * 1e3)
            } else {
                "down".to_string()
            },
            h.error.as_deref(),
        ),
    };
    let mut line = format!(
        "      {addr:<30} share={:<6} {service:<14} {probe:<12} packets={:<9} new_flows={:<6} pinned={}",
        format!("{:.1}%", m.share * 100.0),
        m.packets,
        m.new_flows,
        m.pinned
    );
    if let Some(e) = error {
        let _ = write!(line, "  ({e})");
    }
    line.push('\n');
    line
}

/// Every deployment, oldest first, with each transition.
pub fn history(ds: &[Deployment]) -> String {
    let mut out = String::new();
    if ds.is_empty() {
        out.push_str("no deployments yet\n");
    }
    for d in ds {
        let _ = writeln!(
            out,
            "deployment {}: {} {} {} -> {}",
            d.id,
            d.color,
            describe(&d.members),
            d.version.as_deref().unwrap_or(""),
            d.phase
        );
        for t in &d.transitions {
            let _ = writeln!(
                out,
                "  {}  {:<20} {:<24} {}",
                fmt_time(t.at_ms),
                t.to.to_string(),
                t.actor,
                t.reason
            );
        }
    }
    out
}

/// One line for a deployment the daemon returned (deploy, promote --wait, rollback, abort).
pub fn deployment_line(v: &serde_json::Value) -> Result<String> {
    let d: Deployment = serde_json::from_value(v.clone()).context("decoding deployment")?;
    let last = d.last().map(|t| t.reason.clone()).unwrap_or_default();
    Ok(format!(
        "{}: deployment {} ({} {} {}) is {}: {last}\n",
        d.service,
        d.id,
        d.color,
        describe(&d.members),
        d.version.as_deref().unwrap_or(""),
        d.phase
    ))
}

/// One line per event of `switcher watch`.
pub fn event(ev: &Event) -> String {
    format!(
        "{}  {:<12} {:<10} {}",
        fmt_time(ev.at_ms),
        ev.service,
        ev.kind,
        ev.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{BackendHealth, ColorView, DeploymentView, FlipStatus, ServiceView};

    fn color(backend: &str, trusted: bool, packets: u64) -> ColorView {
        ColorView {
            backend: Some(backend.into()),
            version: None,
            trusted,
            packets,
            bytes: 0,
            new_flows: 1,
            pin_misses: 0,
            resets: 0,
            unreachables: 0,
            pinned: 0,
            health: None,
            members: Vec::new(),
        }
    }

    #[test]
    fn status_stars_the_active_colour_and_shows_the_deployment() {
        let v = StatusView {
            services: vec![ServiceView {
                name: "tcp4".into(),
                vip: "198.18.10.10".into(),
                port: 601,
                protocol: "tcp".into(),
                active: Color::Green,
                generation: 1,
                blue: color("198.18.1.2:601", true, 1146),
                green: color("198.18.2.2:601", false, 0),
                last_flip: Some(FlipStatus {
                    generation: 1,
                    flip_ns: 5,
                    blue_first_after_ns: Some(345_300),
                    green_first_after_ns: None,
                }),
                retiring: Some(crate::controller::retiring::Retiring::judge(
                    Color::Blue,
                    1_795_478_400_000,
                    3,
                    0,
                    Some(600_000),
                    1_795_478_401_000,
                )),
                deployment: Some(DeploymentView {
                    id: 1,
                    phase: Phase::Stable,
                    color: Color::Green,
                    backend: "198.18.2.2:601".into(),
                    version: Some("v2.0".into()),
                    since_ms: 1_795_478_400_000,
                    actor: "auto".into(),
                    reason: "watch window passed".into(),
                    watch_until_ms: None,
                    warm_until_ms: Some(1_795_479_000_000),
                }),
            }],
            reasons: vec![("passed".into(), 3), ("malformed".into(), 0)],
            flows: 2,
        };
        let text = status(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "tcp4  198.18.10.10:601/tcp  active=green (generation 1)"
        );
        assert!(
            lines[1].starts_with("   blue   198.18.1.2:601"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("validated") && lines[1].contains("packets=1146"));
        assert!(
            lines[2].starts_with("  *green  198.18.2.2:601"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("unproven"), "{}", lines[2]);
        assert!(lines[3].contains("first packet after it: blue 345.3 µs, green -"));
        assert_eq!(
            lines[4],
            "   blue retiring since 2026-11-24T00:00:00.000Z: draining 3 connections (ready at \
             2026-11-24T00:10:00.000Z at the latest)"
        );
        assert!(lines[5].contains("deployment 1: green 198.18.2.2:601 v2.0 is stable since 2026-11-24T00:00:00.000Z (auto: watch window passed)"), "{}", lines[5]);
        assert_eq!(
            lines[6],
            "   blue kept warm for rollback until 2026-11-24T00:10:00.000Z"
        );
        assert_eq!(lines[7], "flows tracked: 2");
        assert_eq!(lines[8], "reasons: passed=3");
    }

    fn member(addr: &str, weight: u8, share: f64, health: Option<BackendHealth>) -> MemberView {
        MemberView {
            addr: addr.parse().expect("addr"),
            weight,
            share,
            packets: 100,
            bytes: 6000,
            new_flows: 4,
            pinned: 2,
            health,
        }
    }

    fn probe(up: bool, in_service: bool) -> BackendHealth {
        BackendHealth {
            backend: String::new(),
            up,
            latency_seconds: 0.00042,
            checked_at_ms: 1,
            error: (!up).then(|| "connection refused".into()),
            ok_total: 1,
            failed_total: 0,
            in_service,
            streak: 1,
        }
    }

    #[test]
    fn a_pool_is_listed_member_by_member_and_a_pool_of_one_keeps_its_line() {
        let mut blue = color(
            "198.18.1.2:514, 198.18.1.3:514*2, 198.18.1.4:514",
            true,
            300,
        );
        blue.members = vec![
            member("198.18.1.2:514", 1, 0.25, Some(probe(true, true))),
            member("198.18.1.3:514", 2, 0.75, None),
            member("198.18.1.4:514", 1, 0.0, Some(probe(false, false))),
        ];
        let mut green = color("198.18.2.2:514", false, 7);
        green.members = vec![member("198.18.2.2:514", 1, 1.0, Some(probe(true, true)))];
        let v = StatusView {
            services: vec![ServiceView {
                name: "udp4".into(),
                vip: "198.18.10.10".into(),
                port: 514,
                protocol: "udp".into(),
                active: Color::Blue,
                generation: 0,
                blue,
                green,
                last_flip: None,
                retiring: None,
                deployment: None,
            }],
            reasons: Vec::new(),
            flows: 0,
        };
        let text = status(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "  *blue   3 members                  -          validated packets=300       new_flows=1      pin_misses=0    resets=0    unreachables=0"
        );
        assert_eq!(
            lines[2],
            "      198.18.1.2:514                 share=25.0%  in service     up 0.4 ms    packets=100       new_flows=4      pinned=2"
        );
        assert_eq!(
            lines[3],
            "      198.18.1.3:514*2               share=75.0%  in service     not probed   packets=100       new_flows=4      pinned=2"
        );
        assert_eq!(
            lines[4],
            "      198.18.1.4:514                 share=0.0%   out of service down         packets=100       new_flows=4      pinned=2  (connection refused)"
        );
        // A pool of one: the one line scripts and tests read, as before pools.
        assert_eq!(
            lines[5],
            "   green  198.18.2.2:514             -          unproven  packets=7         new_flows=1      pin_misses=0    resets=0    unreachables=0"
        );
        assert_eq!(lines[6], "flows tracked: 0");
    }

    #[test]
    fn history_and_deployment_lines() {
        assert_eq!(history(&[]), "no deployments yet\n");
        let mut d = Deployment::new(
            4,
            "syslog",
            Color::Green,
            vec![crate::config::Member::new(
                "198.18.2.2:514".parse().expect("addr"),
            )],
            Some("v2".into()),
            "cli:root (pid 7)",
            1_795_478_400_000,
        );
        d.apply(
            crate::deploy::Step::Abort,
            "cli:root (pid 8)",
            "aborted by operator",
            None,
            1_795_478_401_000,
        )
        .expect("abort");
        let h = history(std::slice::from_ref(&d));
        assert!(
            h.starts_with("deployment 4: green 198.18.2.2:514 v2 -> aborted\n"),
            "{h}"
        );
        assert!(h.contains("2026-11-24T00:00:01.000Z  aborted              cli:root (pid 8)         aborted by operator"), "{h}");
        let line = deployment_line(&serde_json::to_value(&d).expect("json")).expect("line");
        assert_eq!(
            line,
            "syslog: deployment 4 (green 198.18.2.2:514 v2) is aborted: aborted by operator\n"
        );
        assert!(deployment_line(&serde_json::json!({"id": 1})).is_err());
    }
}
