//! Chunked GELF end to end in the netns lab: a GELF sender on the client (zlib messages, each
//! sent as four chunks spread over its interval, as client libraries send big messages) →
//! the switch → sinks that put chunks together as a GELF collector does (by message id,
//! dropping a message incomplete after 5 s). Counted at both backends: every message complete
//! exactly once across 20 flips and during a canary, and the same stream on a service with
//! `gelf = false` loses messages (so the check can see a split). Needs root.

mod support;

use std::time::{Duration, Instant};

use support::privileged;
use switcher::{
    api::Request,
    config::Member,
    deploy::{Deployment, Phase},
    domain::Color,
};
use switcher_tests::{
    lab::{Host, Proc, GREEN_V4, VIP_V4},
    rig::{self, Received, Rig, GELF_PORT, GELF_PORT_2, HTTP_PORT, STANDARD_CHECKS},
};

const WAIT: Duration = Duration::from_secs(20);
/// The sinks drop an incomplete message 5 s after its first chunk and look every 0.5 s.
const SINK_EXPIRY: Duration = Duration::from_millis(6000);

/// `count` GELF messages of `stream` at `rate` per second, four zlib chunks each, to `port`.
fn gelf_stream(rig: &Rig, port: u16, stream: &str, count: u64, rate: u64) -> Proc {
    let target = format!("{VIP_V4}:{port}");
    let shape = ["--gelf-chunks", "4", "--size", "1200"];
    rig.send_lines(&target, "gelf", stream, count, rate, &shape)
        .expect("start the GELF sender")
}

/// Messages each sink dropped as incomplete (`ingest_errors_total{reason="gelf_incomplete"}`).
fn incomplete(rig: &Rig, host: Host) -> u64 {
    let url = format!("http://{}:{HTTP_PORT}/metrics", host.v4());
    let (status, text) = rig.http("GET", &url, None, None).expect("sink metrics");
    assert_eq!(status, 200, "{url}: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("ingest_errors_total{reason=\"gelf_incomplete\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no gelf_incomplete counter in {url}:\n{text}")) as u64
}

fn assert_running(p: &Proc, what: &str) {
    assert!(
        p.try_wait().expect("try_wait").is_none(),
        "{what}: the sender already finished; stderr: {}",
        p.stderr_tail(5)
    );
}

fn reason(rig: &Rig, label: &str) -> u64 {
    rig.status()
        .expect("status")
        .reasons
        .iter()
        .find(|(r, _)| r == label)
        .map_or(0, |(_, n)| *n)
}

#[test]
fn gelf_messages_stay_whole_across_twenty_flips() {
    if !privileged() {
        return;
    }
    let services = rig::standard_services("redirect", "") + &rig::gelf_services("redirect", "");
    let rig = Rig::up("gf", &services).expect("rig up");
    let count: u64 = 3000;
    // Kept whole (`gelf4`) and, as the control, steered chunk by chunk (`gelf4-plain`).
    let kept = gelf_stream(&rig, GELF_PORT, "g", count, 250);
    let plain = gelf_stream(&rig, GELF_PORT_2, "n", count, 250);
    for s in ["g", "n"] {
        rig.wait_received(s, "the stream reaches blue", WAIT, |r| r.blue.len() >= 100)
            .expect("GELF arrives");
    }
    let mut to = Color::Green;
    for i in 0..20 {
        assert_running(&kept, &format!("flip {i}"));
        assert_running(&plain, &format!("flip {i}"));
        for svc in ["gelf4", "gelf4-plain"] {
            assert!(rig.flip(svc, to).expect("flip").changed, "{svc} flip {i}");
        }
        to = to.other();
        std::thread::sleep(Duration::from_millis(250));
    }
    for p in [&kept, &plain] {
        let sent = rig::finish_sender(p, Duration::from_secs(40)).expect("sender");
        assert_eq!(sent, count);
    }
    let g = rig
        .wait_stream("g", count as usize, Duration::from_secs(10))
        .expect("read sinks");
    // Whatever is still incomplete is dropped (and counted) 5 s after its first chunk.
    std::thread::sleep(SINK_EXPIRY);
    let n = rig.received("n").expect("read sinks");
    let (lost, dup) = g.loss_and_duplicates(count);
    assert!(
        lost.is_empty() && dup.is_empty(),
        "gelf4: {} messages lost (first {:?}), {} duplicated",
        lost.len(),
        &lost[..lost.len().min(10)],
        dup.len()
    );
    assert!(
        !g.blue.is_empty() && !g.green.is_empty(),
        "both colours got messages"
    );
    let (split, _) = n.loss_and_duplicates(count);
    let dropped = incomplete(&rig, Host::Blue) + incomplete(&rig, Host::Green);
    assert!(
        !split.is_empty(),
        "the control (gelf = false) lost no message in 20 flips: the test cannot see a split"
    );
    // Each split message left parts at both sinks; gelf4's messages left none.
    assert!(
        dropped >= split.len() as u64 && dropped <= 2 * split.len() as u64,
        "sinks dropped {dropped} incomplete messages; the control lost {}",
        split.len()
    );
    assert!(reason(&rig, "gelf_chunk_followed") >= 3 * count);
    eprintln!(
        "20 flips: gelf4 {count} messages whole ({} blue, {} green); gelf = false lost {}",
        g.blue.len(),
        g.green.len(),
        split.len()
    );
}

/// Deploys green (its standard sink) as the candidate of `service` on `port`, then promotes
/// it and waits for the outcome.
fn deploy_and_promote(rig: &Rig, service: &str, port: u16) -> Deployment {
    rig.call(&Request::Deploy {
        service: service.into(),
        color: Color::Green,
        members: vec![Member::new(std::net::SocketAddr::new(
            GREEN_V4.into(),
            port,
        ))],
        version: Some("v2".into()),
        force: false,
    })
    .expect("deploy");
    let v = rig
        .call(&Request::Promote {
            service: service.into(),
            wait: true,
        })
        .expect("promote");
    serde_json::from_value(v).expect("deployment")
}

#[test]
fn gelf_messages_stay_whole_during_a_canary() {
    if !privileged() {
        return;
    }
    let checks = format!("{STANDARD_CHECKS}\n[service.canary]\npercent = 10\nduration_ms = 3000\n");
    let services =
        rig::standard_services("redirect", "") + &rig::gelf_services("redirect", &checks);
    let rig = Rig::up("gc", &services).expect("rig up");
    // Longer than validation, canary (3 s), flip and watch together: the stream runs through
    // every step.
    let count: u64 = 6000;
    let sender = gelf_stream(&rig, GELF_PORT, "g", count, 400);
    rig.wait_received("g", "the stream reaches blue", WAIT, |r| {
        r.blue.len() >= 100
    })
    .expect("GELF arrives");
    let started = Instant::now();
    let d = deploy_and_promote(&rig, "gelf4", GELF_PORT);
    assert_running(&sender, "after the promotion");
    assert!(matches!(d.phase, Phase::Promoted | Phase::Stable), "{d:?}");
    let canary = d
        .transitions
        .iter()
        .find_map(|t| t.evidence.as_ref().and_then(|e| e.get("canary")).cloned())
        .unwrap_or_else(|| panic!("no canary evidence: {d:?}"));
    let packets = canary["packets"].as_u64().unwrap_or(0);
    assert!(packets > 0, "the canary sent green nothing: {canary}");
    let sent = rig::finish_sender(&sender, Duration::from_secs(40)).expect("sender");
    assert_eq!(sent, count);
    let got: Received = rig
        .wait_stream("g", count as usize, Duration::from_secs(10))
        .expect("read sinks");
    std::thread::sleep(SINK_EXPIRY);
    let (lost, dup) = got.loss_and_duplicates(count);
    assert!(
        lost.is_empty() && dup.is_empty(),
        "{} messages lost during the canary (first {:?}), {} duplicated",
        lost.len(),
        &lost[..lost.len().min(10)],
        dup.len()
    );
    for h in [Host::Blue, Host::Green] {
        assert_eq!(incomplete(&rig, h), 0, "{h:?} dropped incomplete messages");
    }
    eprintln!(
        "canary 10% for 3 s ({} packets to green), promoted after {:?}: {count} messages whole",
        packets,
        started.elapsed()
    );
}
