//! The load step against real rsyslog over RELP (imrelp from Debian's rsyslog-relp): every
//! message is answered by the collector itself, so write-to-rsp latency and throughput are the
//! collector's own figures. The shipped example config validates and promotes against stock
//! rsyslog nodes; a frozen (SIGSTOP) and an overloaded rsyslog (a main queue that cannot keep
//! up) are rejected by the load step with the measured figures in the evidence. Needs root.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::privileged;
use switcher::{
    api::Request,
    config::Member,
    deploy::{Deployment, Phase},
    domain::Color,
};
use switcher_tests::{
    lab::{send_flows, FlowProto, Flows, Host, Node, RsyslogExtras, CLIENT_V4, VIP_V4},
    rig::{Rig, RELP_PORT, TCP_PORT},
};

/// The `[[service]]` part of the shipped example, verbatim: its addresses are the lab's.
fn shipped_services() -> String {
    let text = include_str!("../../switcher-userspace/dist/switcher.toml");
    let at = text.find("[[service]]").expect("the example has services");
    text[at..].to_string()
}

fn deploy(rig: &Rig, service: &str, color: Color, nodes: &[Node], version: &str) {
    let members = nodes
        .iter()
        .map(|n| Member::new(SocketAddr::new(n.v4().into(), TCP_PORT)))
        .collect();
    rig.call(&Request::Deploy {
        service: service.into(),
        color,
        members,
        version: Some(version.into()),
        force: false,
    })
    .expect("deploy");
}

fn promote(rig: &Rig, service: &str) -> anyhow::Result<Deployment> {
    let v = rig.call(&Request::Promote {
        service: service.into(),
        wait: true,
    })?;
    Ok(serde_json::from_value(v)?)
}

/// The latest deployment of `service` (after a rejected promote, which returns only an error).
fn latest(rig: &Rig, service: &str) -> Deployment {
    let v = rig
        .call(&Request::History {
            service: service.into(),
        })
        .expect("history");
    let mut all: Vec<Deployment> = serde_json::from_value(v).expect("history");
    all.sort_by_key(|d| d.id);
    all.pop().expect("a deployment")
}

/// The load reports of one side (`candidate` or `serving`) in a deployment's evidence.
fn load_reports(d: &Deployment, side: &str) -> Vec<Value> {
    let load = d
        .transitions
        .iter()
        .find_map(|t| t.evidence.as_ref().and_then(|e| e.get("load")).cloned())
        .unwrap_or_else(|| panic!("no load evidence in {d:?}"));
    match &load[side] {
        Value::Array(many) => many.clone(),
        Value::Null => panic!("no {side} load report: {load}"),
        one => vec![one.clone()],
    }
}

/// Lines of the load probe in `node`'s rsyslog file.
fn probe_lines(rig: &Rig, node: Node) -> u64 {
    match std::fs::read_to_string(rig.node_file(node)) {
        Ok(t) => t.lines().filter(|l| l.contains("switcher-probe")).count() as u64,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("reading {node}'s file: {e}"),
    }
}

fn p99_ms(r: &Value) -> f64 {
    r["latency"]["p99_us"].as_u64().unwrap_or(0) as f64 / 1000.0
}

#[test]
fn the_shipped_example_validates_and_promotes_against_stock_rsyslog() {
    if !privileged() {
        return;
    }
    let rig = Rig::up_pools("rx", &shipped_services(), 3).expect("rig up");
    let green = rig.nodes(Host::Green);
    deploy(&rig, "syslog-tcp", Color::Green, &green, "v2");
    // The example's canary needs real new connections: short TCP sessions through the VIP
    // from 1500 client ports, about 10 s of them, over the whole validation.
    let flows = Flows {
        proto: FlowProto::Tcp,
        src: CLIENT_V4.into(),
        target: SocketAddr::new(VIP_V4.into(), TCP_PORT),
        ports: 40000..41500,
        lines: 2,
        stream: "rx".into(),
        rate: 300,
        max: Duration::from_secs(40),
    };
    let ns = rig.lab.ns(Host::Client).to_string();
    let (d, sent) = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| send_flows(&ns, &flows));
        let d = promote(&rig, "syslog-tcp");
        (d, traffic.join().expect("traffic thread"))
    });
    let d = d.expect("the example's checks pass on stock rsyslog");
    assert!(matches!(d.phase, Phase::Promoted | Phase::Stable), "{d:?}");
    sent.expect("flows")
        .check_complete(&flows)
        .expect("every connection's lines written");

    let cand = load_reports(&d, "candidate");
    let serving = load_reports(&d, "serving");
    for r in cand.iter().chain(&serving) {
        assert_eq!(r["latency_kind"], "write_to_rsp", "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["acked"], 2000, "every message answered by imrelp: {r}");
        assert!(r["latency"]["count"].as_u64() == Some(2000), "{r}");
    }
    // rsp 200 means taken: every answered probe line is in a green node's file.
    let answered: u64 = cand.iter().filter_map(|r| r["acked"].as_u64()).sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let n: u64 = green.iter().map(|&n| probe_lines(&rig, n)).sum();
        if n >= answered || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(stored, answered, "lines answered vs lines in green's files");
    eprintln!(
        "shipped example: candidate p99 {:?} ms, serving p99 {:?} ms (write-to-rsp, {} nodes each)",
        cand.iter().map(p99_ms).collect::<Vec<_>>(),
        serving.iter().map(p99_ms).collect::<Vec<_>>(),
        cand.len()
    );
}

/// One node per colour; the load step over RELP with absolute and relative thresholds.
const RELP_SERVICE: &str = r#"
[[service]]
name = "syslog-tcp"
vip = "198.18.10.10"
port = 601
protocol = "tcp"
blue  = { backend = "198.18.1.2:601" }
green = { backend = "198.18.2.2:601" }

[service.health]
tcp_port = 601
successes = 2
interval_ms = 100
deadline_ms = 3000

[service.load]
protocol = "relp"
port = 2514
lines = 1000
rate = 1000
timeout_ms = 10000
max_p99_ms = 50
max_p99_ratio = 3
min_throughput_ratio = 0.8

[service.watch]
window_ms = 1000
interval_ms = 250
"#;

/// Thaws a frozen node's rsyslog however the test ends, so the rig can stop it.
struct Thaw<'a>(&'a Rig, Node);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal_node(self.1, Signal::SIGCONT);
    }
}

#[test]
fn a_frozen_and_an_overloaded_rsyslog_are_rejected_by_the_relp_load_step() {
    if !privileged() {
        return;
    }
    let rig = Rig::up_pools("rf", RELP_SERVICE, 1).expect("rig up");
    let blue = rig.nodes(Host::Blue)[0];
    let green = rig.nodes(Host::Green)[0];

    // Healthy: green passes and is promoted; blue (idle now) is the next candidate.
    deploy(&rig, "syslog-tcp", Color::Green, &[green], "v2");
    let healthy = promote(&rig, "syslog-tcp").expect("a healthy rsyslog passes");
    let ok = &load_reports(&healthy, "candidate")[0];
    assert_eq!(
        (ok["acked"].as_u64(), ok["errors"].as_u64()),
        (Some(1000), Some(0))
    );
    // The watch window (1 s) must end before the next deployment.
    let deadline = Instant::now() + Duration::from_secs(20);
    while latest(&rig, "syslog-tcp").phase != Phase::Stable {
        assert!(
            Instant::now() < deadline,
            "never stable: {:?}",
            latest(&rig, "syslog-tcp")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Frozen: it still completes TCP handshakes (the kernel does), so health passes; RELP
    // gets no answer and the load step fails.
    rig.signal_node(blue, Signal::SIGSTOP).expect("SIGSTOP");
    let thaw = Thaw(&rig, blue);
    deploy(&rig, "syslog-tcp", Color::Blue, &[blue], "v3");
    let e = promote(&rig, "syslog-tcp").expect_err("a frozen rsyslog must be rejected");
    assert!(e.to_string().contains("load:"), "{e:#}");
    let frozen = latest(&rig, "syslog-tcp");
    assert_eq!(frozen.phase, Phase::Rejected);
    let fr = &load_reports(&frozen, "candidate")[0];
    assert_eq!(
        (fr["acked"].as_u64(), fr["errors"].as_u64()),
        (Some(0), Some(1000)),
        "{fr}"
    );
    assert!(
        fr["first_error"].as_str().unwrap_or("").contains("timeout"),
        "{fr}"
    );
    drop(thaw);
    rig.stop_node(blue).expect("stop the thawed rsyslog");

    // Overloaded: its main queue takes one message per 5 ms, so imrelp answers only as fast
    // as the queue drains.
    rig.start_node_with(
        blue,
        &RsyslogExtras {
            relp_port: Some(RELP_PORT),
            main_queue: Some(
                r#"queue.size="64" queue.dequeueBatchSize="1" queue.dequeueSlowdown="5000""#.into(),
            ),
            ..RsyslogExtras::default()
        },
    )
    .expect("start the overloaded rsyslog");
    deploy(&rig, "syslog-tcp", Color::Blue, &[blue], "v4");
    let e = promote(&rig, "syslog-tcp").expect_err("an overloaded rsyslog must be rejected");
    let msg = e.to_string();
    assert!(msg.contains("load: p99"), "{msg}");
    assert!(msg.contains("throughput"), "{msg}");
    let slow = latest(&rig, "syslog-tcp");
    let sl = &load_reports(&slow, "candidate")[0];
    let serving = &load_reports(&slow, "serving")[0];
    assert!(p99_ms(sl) > 50.0, "{sl}");
    assert!(
        sl["throughput_lps"].as_f64().unwrap_or(f64::MAX)
            < 0.8 * serving["throughput_lps"].as_f64().unwrap_or(0.0),
        "candidate {sl} vs serving {serving}"
    );
    eprintln!(
        "RELP write-to-rsp p99: healthy {:.2} ms ({:.0} lines/s); frozen: 0 of 1000 answered in \
         10 s; overloaded {:.1} ms ({:.0} lines/s) against serving {:.2} ms ({:.0} lines/s)",
        p99_ms(ok),
        ok["throughput_lps"].as_f64().unwrap_or(0.0),
        p99_ms(sl),
        sl["throughput_lps"].as_f64().unwrap_or(0.0),
        p99_ms(serving),
        serving["throughput_lps"].as_f64().unwrap_or(0.0),
    );
}
