//! Retiring a colour that long-lived shippers still use: real rsyslog forwarders on the client
//! (`omfwd` over TCP, and `omrelp`, both with a queue and endless retries) send through the
//! switch to rsyslog collectors. After green's promotion their connections stay on blue by design;
//! status says blue is retiring, with how many connections and since when, and reports it
//! ready to stop at the service's `retire_after_ms`. Blue's collector is then stopped
//! gracefully: the forwarders reconnect to the VIP and land on green. Counted per protocol:
//! RELP loses nothing (it resends what was not acknowledged); plain TCP loses what was in
//! flight when the collector closed (reported). Needs root.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::privileged;
use switcher::{
    api::Request,
    config::Member,
    controller::{retiring::Retiring, StatusView},
    deploy::{Deployment, Phase},
    domain::Color,
};
use switcher_tests::{
    lab::{Host, Proc, Shipping, GREEN_V4},
    rig::{self, Received, Rig, RELP_PORT, TCP_PORT},
};

const WAIT: Duration = Duration::from_secs(20);
const LINES: u64 = 3000;

/// A TCP service on the VIP at `port`, each colour one rsyslog node at the same port, with a
/// short drain window, a 4 s retirement deadline, health and a 1 s watch.
fn service(name: &str, port: u16) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
vip = "198.18.10.10"
port = {port}
protocol = "tcp"
drain_ms = 1000
retire_after_ms = 4000
blue  = {{ backend = "198.18.1.2:{port}" }}
green = {{ backend = "198.18.2.2:{port}" }}
[service.health]
tcp_port = {port}
successes = 1
interval_ms = 100
deadline_ms = 3000
[service.watch]
window_ms = 1000
interval_ms = 250
"#
    )
}

/// A forwarder shipping to `port` on the VIP, fed `LINES` lines of `stream` at 150 lines/s.
fn shipper(
    rig: &Rig,
    shipping: Shipping,
    port: u16,
    input_port: u16,
    stream: &str,
) -> (Proc, Proc) {
    rig.ship(shipping, port, input_port, stream, LINES, 150)
        .expect("start the shipper")
}

fn retiring(st: &StatusView, service: &str) -> Option<Retiring> {
    st.services
        .iter()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("{service} in status"))
        .retiring
        .clone()
}

/// Polls status until `cond` holds for both services' retiring colour.
fn wait_retiring(rig: &Rig, what: &str, cond: impl Fn(&Retiring) -> bool) -> Vec<Retiring> {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = rig.status().expect("status");
        let r: Vec<Option<Retiring>> = ["syslog-tcp", "syslog-relp"]
            .iter()
            .map(|s| retiring(&st, s))
            .collect();
        if r.iter().all(|r| r.as_ref().is_some_and(&cond)) {
            return r.into_iter().flatten().collect();
        }
        assert!(Instant::now() < deadline, "{what}: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn more_at(rig: &Rig, stream: &str, color: Color, since: &Received, n: usize) -> Received {
    let pick = |r: &Received| match color {
        Color::Blue => r.blue.len(),
        Color::Green => r.green.len(),
    };
    let base = pick(since);
    rig.wait_received(
        stream,
        &format!("{n} more of {stream} at {color}"),
        WAIT,
        |r| pick(r) >= base + n,
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn long_lived_shippers_move_to_green_when_blue_is_retired_and_relp_loses_nothing() {
    if !privileged() {
        return;
    }
    let services = service("syslog-tcp", TCP_PORT) + &service("syslog-relp", RELP_PORT);
    let rig = Rig::up_pools("rt", &services, 1).expect("rig up");
    let blue = rig.nodes(Host::Blue)[0];
    let (_ft, st) = shipper(&rig, Shipping::Tcp, TCP_PORT, 10601, "rtt");
    let (_fr, sr) = shipper(&rig, Shipping::Relp, RELP_PORT, 10602, "rtr");
    let streams = ["rtt", "rtr"];
    for s in streams {
        rig.wait_received(s, "lines at blue", WAIT, |r| r.blue.len() >= 200)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert!(
        st.try_wait().expect("wait").is_none(),
        "the run is long enough"
    );
    // Promote green (a new version on its node) for both services.
    let mut flipped_ms = Vec::new();
    for (svc, port) in [("syslog-tcp", TCP_PORT), ("syslog-relp", RELP_PORT)] {
        rig.call(&Request::Deploy {
            service: svc.into(),
            color: Color::Green,
            members: vec![Member::new(SocketAddr::new(GREEN_V4.into(), port))],
            version: Some("v2".into()),
            force: false,
        })
        .expect("deploy");
        let v = rig
            .call(&Request::Promote {
                service: svc.into(),
                wait: true,
            })
            .expect("promote");
        let d: Deployment = serde_json::from_value(v).expect("deployment");
        assert!(matches!(d.phase, Phase::Promoted | Phase::Stable), "{d:?}");
        flipped_ms.push(switcher::domain::now_ms());
    }
    // Pinned: the shippers' one connection each stays on blue, which is retiring.
    let now: Vec<Received> = streams
        .iter()
        .map(|s| rig.received(s).expect("read"))
        .collect();
    for (s, r) in streams.iter().zip(&now) {
        let after = more_at(&rig, s, Color::Blue, r, 100);
        assert!(
            after.green.is_empty(),
            "{s} moved before its collector was stopped"
        );
    }
    let draining = wait_retiring(&rig, "blue retiring with its connection", |r| {
        r.color == Color::Blue && r.connections == 1
    });
    for (r, flipped) in draining.iter().zip(&flipped_ms) {
        assert!(
            r.since_ms.abs_diff(*flipped) < 2_000,
            "since {} vs flip at {flipped}",
            r.since_ms
        );
        assert_eq!(r.deadline_ms, Some(r.since_ms + 4_000));
    }
    // At the deadline blue is reported ready to stop, connections and all.
    wait_retiring(&rig, "blue ready to stop at its deadline", |r| {
        r.ready_to_stop && r.connections == 1
    });
    let text = String::from_utf8_lossy(&rig.cli(&["status"]).expect("switcher status").1.stdout)
        .into_owned();
    assert!(
        text.contains("blue retiring since") && text.contains("deadline passed with 1 connection"),
        "{text}"
    );

    // Retire blue: its collector stops gracefully; the shippers reconnect to the VIP.
    let before: Vec<Received> = streams
        .iter()
        .map(|s| rig.received(s).expect("read"))
        .collect();
    rig.stop_node(blue).expect("stop blue's collector");
    for (s, r) in streams.iter().zip(&before) {
        more_at(&rig, s, Color::Green, r, 100);
    }
    for p in [&st, &sr] {
        assert_eq!(
            rig::finish_sender(p, Duration::from_secs(60)).expect("sender"),
            LINES
        );
    }
    let mut lost_by = Vec::new();
    for s in streams {
        let got = rig
            .wait_stream(s, LINES as usize, Duration::from_secs(30))
            .expect("read");
        let (lost, dup) = got.loss_and_duplicates(LINES);
        eprintln!(
            "{s}: blue {} green {} lost {} duplicated {} (first lost {:?})",
            got.blue.len(),
            got.green.len(),
            lost.len(),
            dup.len(),
            &lost[..lost.len().min(10)]
        );
        lost_by.push(lost.len());
    }
    assert_eq!(
        lost_by[1], 0,
        "RELP must lose nothing when its collector is retired"
    );
    assert!(
        lost_by[0] < 100,
        "plain TCP lost {} lines: more than what is in flight at a close",
        lost_by[0]
    );
    // With its connections gone, blue is drained.
    wait_retiring(&rig, "blue drained", |r| {
        r.connections == 0 && r.ready_to_stop
    });
}
