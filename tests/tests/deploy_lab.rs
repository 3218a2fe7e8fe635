//! The deployment controller in the lab, with real backends and real traffic: bad candidates
//! are never promoted, a good one is promoted with zero lost lines, a candidate that degrades
//! after the flip is rolled back automatically, kill -9 of the daemon loses nothing, and an
//! invalid reload changes nothing. Needs root.

mod support;

use std::time::{Duration, Instant};

use support::privileged;
use switcher::{
    api::Request,
    config::Color,
    deploy::{Deployment, Phase},
};
use switcher_tests::{
    lab::{Host, GREEN_V4},
    rig::{self, Rig, TCP_PORT, UDP_PORT},
};

use switcher_tests::services::STANDARD_CHECKS as CHECKS;

/// Green's ingest address for a standard service.
fn green_backend(service: &str) -> std::net::SocketAddr {
    let port = if service.starts_with("udp") {
        UDP_PORT
    } else {
        TCP_PORT
    };
    std::net::SocketAddr::new(GREEN_V4.into(), port)
}

fn deploy(rig: &Rig, service: &str, version: &str) -> Deployment {
    let v = rig
        .call(&Request::Deploy {
            service: service.into(),
            color: Color::Green,
            backend: green_backend(service),
            version: Some(version.into()),
            force: false,
        })
        .expect("deploy");
    serde_json::from_value(v).expect("deployment")
}

fn promote_wait(rig: &Rig, service: &str) -> anyhow::Result<Deployment> {
    let v = rig.call(&Request::Promote {
        service: service.into(),
        wait: true,
    })?;
    Ok(serde_json::from_value(v)?)
}

fn history(rig: &Rig, service: &str) -> Vec<Deployment> {
    let v = rig
        .call(&Request::History {
            service: service.into(),
        })
        .expect("history");
    serde_json::from_value(v).expect("history")
}

fn active(rig: &Rig, service: &str) -> Color {
    rig.status()
        .expect("status")
        .services
        .into_iter()
        .find(|s| s.name == service)
        .expect("service")
        .active
}

/// A continuous stream of `count` numbered lines to the IPv4 VIP over `proto` ("udp" or "tcp").
fn stream(rig: &Rig, proto: &str, name: &str, count: u64, rate: u64) -> switcher_tests::lab::Proc {
    rig.stream(proto, name, count, rate).expect("sender")
}

fn tcp_stream(rig: &Rig, name: &str, count: u64, rate: u64) -> switcher_tests::lab::Proc {
    stream(rig, "tcp", name, count, rate)
}

fn udp_stream(rig: &Rig, name: &str, count: u64, rate: u64) -> switcher_tests::lab::Proc {
    stream(rig, "udp", name, count, rate)
}

/// Waits for a sender and checks every line arrived exactly once; returns (blue, green).
fn assert_no_loss(
    rig: &Rig,
    p: &switcher_tests::lab::Proc,
    stream: &str,
    count: u64,
) -> (usize, usize) {
    let sent = rig::finish_sender(p, Duration::from_secs(70))
        .unwrap_or_else(|e| panic!("sender {stream}: {e:#}"));
    assert_eq!(sent, count, "sender {stream} sent everything");
    let got = rig
        .wait_stream(stream, count as usize, Duration::from_secs(10))
        .expect("sinks");
    let (lost, dup) = got.loss_and_duplicates(count);
    assert!(
        lost.is_empty(),
        "{stream}: {} lines lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        dup.is_empty(),
        "{stream}: duplicated {:?}",
        &dup[..dup.len().min(10)]
    );
    (got.blue.len(), got.green.len())
}

#[test]
fn bad_candidates_are_rejected_and_a_good_one_is_promoted_without_loss() {
    if !privileged() {
        return;
    }
    let rig = Rig::up("dp", &rig::standard_services("redirect", CHECKS)).expect("rig");
    let tcp = tcp_stream(&rig, "t", 6000, 300);
    let udp = udp_stream(&rig, "u", 12000, 600);

    // Each fault makes one check reject the candidate; blue keeps serving.
    for (fault, version, rejected_by) in [
        // Unhealthy: /health answers 503.
        (r#"{"health_ok": false}"#, "v2-unhealthy", "health"),
        // Slow: acknowledgements take 60 ms, over the 25 ms p99 threshold.
        (
            r#"{"health_ok": true, "ack_delay_ms": 60}"#,
            "v2-slow",
            "p99",
        ),
        // Reports errors in its own metrics.
        (
            r#"{"ack_delay_ms": 0, "errors_per_sec": 50}"#,
            "v2-erroring",
            "ingest_errors_total",
        ),
    ] {
        rig.fault(Host::Green, fault).expect("fault");
        deploy(&rig, "tcp4", version);
        let e = promote_wait(&rig, "tcp4").expect_err("must be rejected");
        assert!(e.to_string().contains(rejected_by), "{version}: {e:#}");
        assert_eq!(active(&rig, "tcp4"), Color::Blue);
    }

    // A good one: validated, flipped, watched, stable.
    rig.fault(Host::Green, r#"{"errors_per_sec": 0}"#)
        .expect("fault");
    deploy(&rig, "udp4", "v2");
    let d = promote_wait(&rig, "udp4").expect("promoted");
    assert_eq!(d.phase, Phase::Promoted);
    assert_eq!(active(&rig, "udp4"), Color::Green);
    let evidence = d
        .transitions
        .iter()
        .find(|t| t.to == Phase::Ready)
        .and_then(|t| t.evidence.clone())
        .expect("validation evidence recorded");
    assert!(
        evidence["load"]["candidate"]["latency"]["count"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{evidence}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while history(&rig, "udp4").last().map(|d| d.phase) != Some(Phase::Stable)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        history(&rig, "udp4").last().map(|d| d.phase),
        Some(Phase::Stable)
    );

    let rejected: Vec<Phase> = history(&rig, "tcp4").iter().map(|d| d.phase).collect();
    assert_eq!(
        rejected,
        [Phase::Rejected, Phase::Rejected, Phase::Rejected]
    );
    for d in history(&rig, "tcp4") {
        let t = d.last().expect("transition");
        assert_eq!(t.actor, "auto");
        assert!(
            t.evidence.is_some(),
            "the evidence that decided is recorded"
        );
    }

    let (blue, green) = assert_no_loss(&rig, &tcp, "t", 6000);
    assert_eq!(
        (blue, green),
        (6000, 0),
        "the established TCP connection never moved"
    );
    let (blue, green) = assert_no_loss(&rig, &udp, "u", 12000);
    assert!(
        blue > 0 && green > 0,
        "udp moved to green after the promotion: {blue}/{green}"
    );
}

#[test]
fn a_candidate_that_degrades_after_the_flip_is_rolled_back() {
    if !privileged() {
        return;
    }
    let checks = CHECKS.replace("window_ms = 3000", "window_ms = 20000");
    let rig = Rig::up("rb", &rig::standard_services("redirect", &checks)).expect("rig");
    let udp = udp_stream(&rig, "u", 8000, 800);
    deploy(&rig, "udp4", "v2");
    promote_wait(&rig, "udp4").expect("promoted");
    assert_eq!(active(&rig, "udp4"), Color::Green);
    std::thread::sleep(Duration::from_millis(1500));
    let broke = Instant::now();
    rig.fault(Host::Green, r#"{"health_ok": false}"#)
        .expect("fault");
    let deadline = Instant::now() + Duration::from_secs(10);
    while active(&rig, "udp4") != Color::Blue && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        active(&rig, "udp4"),
        Color::Blue,
        "rolled back within the watch window"
    );
    let took = broke.elapsed();
    assert!(took < Duration::from_secs(5), "rollback took {took:?}");
    let d = history(&rig, "udp4").pop().expect("deployment");
    assert_eq!(d.phase, Phase::RolledBack);
    let t = d.last().expect("transition");
    assert_eq!(t.actor, "auto");
    assert!(t.reason.contains("health"), "{}", t.reason);
    let (blue, green) = assert_no_loss(&rig, &udp, "u", 8000);
    assert!(blue > 0 && green > 0);
    // A failed colour needs --force to get traffic again.
    let e = rig.flip("udp4", Color::Green).expect_err("unvalidated");
    assert!(e.to_string().contains("--force"), "{e:#}");
}

#[test]
fn kill_9_during_traffic_and_deployment_loses_nothing() {
    if !privileged() {
        return;
    }
    let checks = CHECKS
        .replace("lines = 300", "lines = 3000")
        .replace("window_ms = 3000", "window_ms = 6000");
    let mut rig = Rig::up("k9", &rig::standard_services("redirect", &checks)).expect("rig");
    let udp = udp_stream(&rig, "u", 15000, 1000);

    // Killed while validating (the load run takes ~3 s): the restarted daemon marks it aborted.
    deploy(&rig, "udp4", "v2");
    rig.call(&Request::Promote {
        service: "udp4".into(),
        wait: false,
    })
    .expect("promote");
    std::thread::sleep(Duration::from_millis(800));
    rig.kill_daemon().expect("kill -9");
    std::thread::sleep(Duration::from_millis(500));
    rig.start_daemon().expect("restart");
    let d = history(&rig, "udp4").pop().expect("deployment");
    assert_eq!(d.phase, Phase::Aborted);
    assert!(d
        .last()
        .expect("t")
        .reason
        .contains("restarted during validation"));
    assert_eq!(active(&rig, "udp4"), Color::Blue);

    // Killed while watching: the restarted daemon resumes the watch and finishes it.
    deploy(&rig, "udp4", "v2");
    promote_wait(&rig, "udp4").expect("promoted");
    rig.kill_daemon().expect("kill -9");
    std::thread::sleep(Duration::from_millis(500));
    rig.start_daemon().expect("restart");
    assert_eq!(
        active(&rig, "udp4"),
        Color::Green,
        "the flip survived the crash"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while history(&rig, "udp4").last().map(|d| d.phase) != Some(Phase::Stable)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let d = history(&rig, "udp4").pop().expect("deployment");
    assert_eq!(d.phase, Phase::Stable, "{:?}", d.transitions);
    let (blue, green) = assert_no_loss(&rig, &udp, "u", 15000);
    assert!(blue > 0 && green > 0);
}

#[test]
fn invalid_reload_changes_nothing_and_flip_refuses_unvalidated() {
    if !privileged() {
        return;
    }
    let rig = Rig::up("rl", &rig::standard_services("redirect", CHECKS)).expect("rig");
    let good = std::fs::read_to_string(&rig.config).expect("config");
    let before = rig.status().expect("status");

    std::fs::write(&rig.config, good.replacen("port = 514", "port = 99999", 1)).expect("write");
    let e = rig.call(&Request::Reload).expect_err("invalid");
    assert!(e.to_string().contains("service[0].port"), "{e:#}");
    // SIGHUP with the same bad file: logged, nothing changes, the daemon keeps serving.
    let pid = rig.daemon().expect("daemon").pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("hup");
    std::thread::sleep(Duration::from_millis(300));
    let after = rig.status().expect("status");
    assert_eq!(before.services.len(), after.services.len());
    assert!(
        rig.daemon()
            .expect("daemon")
            .try_wait()
            .expect("wait")
            .is_none(),
        "daemon alive"
    );

    // A valid reload applies (a fifth service appears).
    let extra = "\n[[service]]\nname = \"extra\"\nvip = \"198.18.10.11\"\nport = 514\nprotocol = \"udp\"\nblue = { backend = \"198.18.1.2:1514\" }\n";
    std::fs::write(&rig.config, format!("{good}{extra}")).expect("write");
    rig.call(&Request::Reload).expect("reload");
    assert_eq!(
        rig.status().expect("status").services.len(),
        before.services.len() + 1
    );

    // A deployed but unvalidated colour: flip refuses without --force, needs a reason with it.
    deploy(&rig, "tcp4", "v2");
    let e = rig.flip("tcp4", Color::Green).expect_err("refused");
    assert!(e.to_string().contains("not been validated"), "{e:#}");
    let e = rig
        .call(&Request::Flip {
            service: "tcp4".into(),
            to: Color::Green,
            force: true,
            reason: None,
        })
        .expect_err("reason needed");
    assert!(e.to_string().contains("--reason"), "{e:#}");
    rig.call(&Request::Flip {
        service: "tcp4".into(),
        to: Color::Green,
        force: true,
        reason: Some("hotfix, validated by hand".into()),
    })
    .expect("forced flip");
    let d = history(&rig, "tcp4").pop().expect("deployment");
    assert_eq!(d.phase, Phase::Promoted);
    assert_eq!(d.last().expect("t").reason, "hotfix, validated by hand");
    // A connection opened while green serves stays pinned to green after the rollback...
    let pinned = tcp_stream(&rig, "p", 1000, 200);
    std::thread::sleep(Duration::from_millis(500));
    rig.call(&Request::Rollback {
        service: "tcp4".into(),
    })
    .expect("rollback");
    assert_eq!(active(&rig, "tcp4"), Color::Blue);
    // ... so replacing green's backend now would break it: refused without --force.
    let e = rig
        .call(&Request::Deploy {
            service: "tcp4".into(),
            color: Color::Green,
            backend: green_backend("tcp4"),
            version: Some("v3".into()),
            force: false,
        })
        .expect_err("draining connection protects the slot");
    assert!(e.to_string().contains("still pinned to green"), "{e:#}");
    let (blue, green) = assert_no_loss(&rig, &pinned, "p", 1000);
    assert_eq!((blue, green), (0, 1000), "the connection drained on green");
}

/// The canary sends a share of real traffic to the candidate before the flip; the datapath
/// counters must show it arrived (no traffic at all is a failure, not a pass). Also checks
/// that `switcher watch` streams the events.
#[test]
fn canary_share_reaches_the_candidate_and_silence_fails() {
    if !privileged() {
        return;
    }
    let checks = format!("{CHECKS}\n[service.canary]\npercent = 25\nduration_ms = 1500\n");
    let rig = Rig::up("cn", &rig::standard_services("redirect", &checks)).expect("rig");
    let sw = switcher_tests::rig::bin("switcher").expect("switcher binary");
    let watcher = std::process::Command::new(&sw)
        .args([
            "--socket",
            &rig.socket.display().to_string(),
            "watch",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("switcher watch");
    let mut watcher = KillOnDrop(watcher, false);
    std::thread::sleep(Duration::from_millis(200));

    // No traffic: the canary sees nothing and the candidate is rejected.
    deploy(&rig, "udp4", "v2");
    let e = promote_wait(&rig, "udp4").expect_err("silent canary must fail");
    assert!(e.to_string().contains("canary: no traffic"), "{e:#}");

    // With traffic: about a quarter of the packets reach green during the canary, then the flip.
    let udp = udp_stream(&rig, "u", 6000, 1000);
    std::thread::sleep(Duration::from_millis(300));
    deploy(&rig, "udp4", "v2");
    let d = promote_wait(&rig, "udp4").expect("promoted");
    let canary = d
        .transitions
        .iter()
        .find(|t| t.to == Phase::Ready)
        .and_then(|t| t.evidence.clone())
        .expect("evidence")["canary"]
        .clone();
    let packets = canary["packets"].as_u64().unwrap_or(0);
    assert!(
        (100..=900).contains(&packets),
        "canary packets {packets} of ~1500: {canary}"
    );
    assert_no_loss(&rig, &udp, "u", 6000);

    // The watcher saw the transitions and the flip as JSON lines.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watcher.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut out = String::new();
    if let Some(mut s) = watcher.0.stdout.take() {
        use std::io::Read as _;
        let _ = s.read_to_string(&mut out);
    }
    assert!(
        out.lines().any(|l| l.contains("\"kind\":\"flip\"")),
        "watch output:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("\"phase\":\"rejected\"")),
        "watch output:\n{out}"
    );
    let _ = watcher.0.wait();
    watcher.1 = true;
}

/// Kills the child on drop unless marked done (a failed assertion must not leak it).
struct KillOnDrop(std::process::Child, bool);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The watch notices when the traffic the switch delivers to the candidate suddenly drops
/// (clients backing off from a broken backend) and rolls back.
#[test]
fn a_sudden_traffic_drop_after_the_flip_rolls_back() {
    if !privileged() {
        return;
    }
    let checks = CHECKS
        .replace("window_ms = 3000", "window_ms = 15000")
        .replace("failures = 2", "failures = 2\nmin_rate_ratio = 0.5");
    let rig = Rig::up("td", &rig::standard_services("redirect", &checks)).expect("rig");
    let udp = udp_stream(&rig, "u", 30000, 1000);
    deploy(&rig, "udp4", "v2");
    promote_wait(&rig, "udp4").expect("promoted");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        active(&rig, "udp4"),
        Color::Green,
        "steady traffic keeps it promoted"
    );
    udp.stop().expect("stop the sender");
    let deadline = Instant::now() + Duration::from_secs(5);
    while active(&rig, "udp4") != Color::Blue && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(active(&rig, "udp4"), Color::Blue);
    let d = history(&rig, "udp4").pop().expect("deployment");
    assert_eq!(d.phase, Phase::RolledBack);
    assert!(
        d.last().expect("t").reason.contains("fell to"),
        "{:?}",
        d.last()
    );
}
