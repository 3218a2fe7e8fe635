//! Syslog over TLS (RFC 5425, port 6514) through the switch: rsyslog with rsyslog-gnutls on
//! both colours presents a certificate for `ingest.lab`; rsyslog forwarders on the client
//! verify it (CA and name) through the VIP. The switch never terminates TLS: it rewrites
//! addresses and ports only, so the handshake and every record are the collector's, and a TLS
//! connection is pinned like any TCP connection. Needs root.

mod support;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use support::privileged;
use switcher::domain::Color;
use switcher_tests::{
    lab::{Certs, Proc, RsyslogExtras, Shipping},
    rig::{self, Received, Rig},
};

const TLS_PORT: u16 = 6514;
const NAME: &str = "ingest.lab";
const WAIT: Duration = Duration::from_secs(20);

const SERVICES: &str = r#"
[[service]]
name = "syslog-tls"
vip = "198.18.10.10"
port = 6514
protocol = "tcp"
blue  = { backend = "198.18.1.2:6514" }
green = { backend = "198.18.2.2:6514" }
"#;

/// Removes the test's certificate folder however the test ends.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A forwarder on the client verifying the collectors as `peer`, fed `count` lines of
/// `stream` at 100 lines/s on `input_port`.
fn ship(
    rig: &Rig,
    certs: &Certs,
    peer: &str,
    input_port: u16,
    stream: &str,
    count: u64,
) -> (Proc, Proc) {
    let tls = Shipping::Tls {
        ca: certs.ca.clone(),
        peer: peer.into(),
    };
    rig.ship(tls, TLS_PORT, input_port, stream, count, 100)
        .expect("start the TLS shipper")
}

fn wait_for(rig: &Rig, stream: &str, what: &str, cond: impl Fn(&Received) -> bool) -> Received {
    rig.wait_received(stream, what, WAIT, cond)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn assert_whole(got: &Received, count: u64, on: Color, stream: &str) {
    let (lost, dup) = got.loss_and_duplicates(count);
    assert!(
        lost.is_empty() && dup.is_empty(),
        "{stream}: lost {lost:?}, duplicated {dup:?}"
    );
    let elsewhere = match on {
        Color::Blue => &got.green,
        Color::Green => &got.blue,
    };
    assert!(
        elsewhere.is_empty(),
        "{stream}: {} lines left its colour {on} (pinned TLS connection moved)",
        elsewhere.len()
    );
}

#[test]
fn tls_syslog_passes_through_pinned_across_flips_and_verified_end_to_end() {
    if !privileged() {
        return;
    }
    let dir = Dir(std::env::temp_dir().join(format!("switcher-tls-{}", std::process::id())));
    let certs = Certs::make(&dir.0, NAME).expect("certificates");
    let rig = Rig::up_pools_with(
        "tls",
        SERVICES,
        1,
        RsyslogExtras {
            tls: Some(certs.input(TLS_PORT)),
            ..RsyslogExtras::default()
        },
    )
    .expect("rig up");

    // A connection made while blue is active, verified as ingest.lab.
    let (_fa, sa) = ship(&rig, &certs, NAME, 10601, "ta", 1500);
    let before = wait_for(&rig, "ta", "TLS lines at blue", |r| r.blue.len() >= 100);
    assert!(before.green.is_empty());
    assert!(rig.flip("syslog-tls", Color::Green).expect("flip").changed);
    // Its lines keep going to blue: the connection is pinned.
    let n = before.blue.len();
    wait_for(&rig, "ta", "more of ta at blue after the flip", |r| {
        r.blue.len() >= n + 100
    });

    // A new connection after the flip: green, verified the same way.
    let (_fb, sb) = ship(&rig, &certs, NAME, 10602, "tb", 500);
    wait_for(&rig, "tb", "TLS lines at green", |r| r.green.len() >= 50);
    // Flipping back moves neither connection.
    assert!(
        rig.flip("syslog-tls", Color::Blue)
            .expect("flip back")
            .changed
    );

    // A forwarder that expects another name refuses the collector's certificate: nothing of
    // its stream arrives, while the others keep flowing.
    let (fc, sc) = ship(&rig, &certs, "other.lab", 10603, "tc", 100);

    for s in [&sa, &sb, &sc] {
        rig::finish_sender(s, Duration::from_secs(40)).expect("sender");
    }
    let ta = rig
        .wait_stream("ta", 1500, Duration::from_secs(20))
        .expect("read");
    let tb = rig
        .wait_stream("tb", 500, Duration::from_secs(20))
        .expect("read");
    assert_whole(&ta, 1500, Color::Blue, "ta");
    assert_whole(&tb, 500, Color::Green, "tb");
    // The refused forwarder retried every second for as long as the others took, and more.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let tc = rig.received("tc").expect("read");
        assert!(
            tc.blue.is_empty() && tc.green.is_empty(),
            "a client verifying another name delivered: the certificate was not checked"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It refused for the right reason, having seen the collector's own certificate through
    // the switch.
    let refusal = fc
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("peer name not authorized"))
        .unwrap_or_else(|| panic!("no refusal logged: {}", fc.stderr_tail(10)));
    assert!(refusal.contains("DNSname: ingest.lab"), "{refusal}");
    let status = rig.status().expect("status");
    let svc = status
        .services
        .iter()
        .find(|s| s.name == "syslog-tls")
        .expect("service");
    eprintln!(
        "TLS: ta {} lines on blue across 2 flips, tb {} on green; pinned now blue {} green {}",
        ta.blue.len(),
        tb.green.len(),
        svc.blue.pinned,
        svc.green.pinned
    );
}
