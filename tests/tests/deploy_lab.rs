//! The deployment controller in the lab, with real backends and real traffic: bad candidates
//! are never promoted, a good one is promoted with zero lost lines, a candidate that degrades
//! after the flip is rolled back automatically, kill -9 of the daemon loses nothing, and an
//! invalid reload changes nothing. Needs root.

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
            members: vec![Member::new(green_backend(service))],
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
    // Long enough to still run when tcp4 itself is promoted at the end (checked there).
    let tcp = tcp_stream(&rig, "t", 15000, 300);
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

    // Now tcp4 itself, while its established connection is still sending.
    deploy(&rig, "tcp4", "v2");
    let d = promote_wait(&rig, "tcp4").expect("tcp4 promoted");
    assert_eq!(d.phase, Phase::Promoted);
    assert_eq!(active(&rig, "tcp4"), Color::Green);
    assert!(
        tcp.try_wait().expect("sender state").is_none(),
        "the established connection must still be sending across the flip"
    );
    let fresh = tcp_stream(&rig, "t2", 300, 300);
    assert_eq!(
        assert_no_loss(&rig, &fresh, "t2", 300),
        (0, 300),
        "a connection opened after the flip goes to green"
    );
    let (blue, green) = assert_no_loss(&rig, &tcp, "t", 15000);
    assert_eq!(
        (blue, green),
        (15000, 0),
        "the established TCP connection never moved across its own service's promotion"
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
    let promoted = promote_wait(&rig, "udp4").expect("promoted");
    let watch_until = promoted.watch_until_ms.expect("watch window recorded");
    rig.kill_daemon().expect("kill -9");
    std::thread::sleep(Duration::from_millis(500));
    rig.start_daemon().expect("restart");
    let restarted_ms = switcher::domain::now_ms();
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
    // The resumed watch ran the rest of the same window: it ended no earlier than the window
    // recorded before the crash, and it judged rounds after the restart.
    let stable = d.last().expect("stable transition");
    assert_eq!(d.watch_until_ms, Some(watch_until), "the window was kept");
    assert!(
        stable.at_ms >= watch_until && stable.at_ms >= restarted_ms,
        "stable at {} before the window's end {watch_until} or the restart {restarted_ms}",
        stable.at_ms
    );
    let rounds = stable.evidence.as_ref().expect("evidence")["rounds"]
        .as_u64()
        .unwrap_or(0);
    let left_ms = watch_until.saturating_sub(restarted_ms);
    // 250 ms rounds over what was left of the window (minus one round of slack).
    assert!(
        rounds + 1 >= left_ms / 250,
        "{rounds} rounds for the {left_ms} ms left of the window"
    );
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
    // SIGHUP with the same bad file: refused (the daemon says so), nothing changes, the
    // daemon keeps serving.
    let summary = |v: &switcher::controller::StatusView| -> Vec<(String, String, Option<String>)> {
        v.services
            .iter()
            .map(|s| (s.name.clone(), s.vip.clone(), s.blue.backend.clone()))
            .collect()
    };
    hup(&rig);
    wait_for_log(&rig, "reload on SIGHUP refused", 1);
    let after = rig.status().expect("status");
    assert_eq!(summary(&before), summary(&after), "nothing applied");
    assert!(
        rig.daemon()
            .expect("daemon")
            .try_wait()
            .expect("wait")
            .is_none(),
        "daemon alive"
    );

    // A valid file over SIGHUP applies: a fifth service appears.
    let extra = "\n[[service]]\nname = \"extra\"\nvip = \"198.18.10.11\"\nport = 514\nprotocol = \"udp\"\nblue = { backend = \"198.18.1.2:1514\" }\n";
    std::fs::write(&rig.config, format!("{good}{extra}")).expect("write");
    hup(&rig);
    wait_for_log(&rig, "reloaded on SIGHUP", 1);
    let reloaded = rig.status().expect("status");
    let mut want = summary(&before);
    want.push((
        "extra".into(),
        "198.18.10.11".into(),
        Some("198.18.1.2:1514".into()),
    ));
    assert_eq!(summary(&reloaded), want);
    // And the same over the API: the bad file is refused again, the good one stays.
    std::fs::write(&rig.config, good.replacen("port = 514", "port = 99999", 1)).expect("write");
    rig.call(&Request::Reload).expect_err("invalid");
    assert_eq!(summary(&rig.status().expect("status")), want);
    std::fs::write(&rig.config, format!("{good}{extra}")).expect("write");

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
            local: false,
        })
        .expect_err("reason needed");
    assert!(e.to_string().contains("--reason"), "{e:#}");
    rig.call(&Request::Flip {
        service: "tcp4".into(),
        to: Color::Green,
        force: true,
        reason: Some("hotfix, validated by hand".into()),
        local: false,
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
        local: false,
        force: false,
        reason: None,
    })
    .expect("rollback");
    assert_eq!(active(&rig, "tcp4"), Color::Blue);
    // ... so replacing green's backend now would break it: refused without --force.
    let e = rig
        .call(&Request::Deploy {
            service: "tcp4".into(),
            color: Color::Green,
            members: vec![Member::new(green_backend("tcp4"))],
            version: Some("v3".into()),
            force: false,
        })
        .expect_err("draining connection protects the slot");
    assert!(e.to_string().contains("still pinned to green"), "{e:#}");
    let (blue, green) = assert_no_loss(&rig, &pinned, "p", 1000);
    assert_eq!((blue, green), (0, 1000), "the connection drained on green");
}

fn hup(rig: &Rig) {
    let pid = rig.daemon().expect("daemon").pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("hup");
}

/// Waits until the daemon has logged `needle` at least `times` times.
fn wait_for_log(rig: &Rig, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = rig.daemon().expect("daemon").stderr_lines();
        if lines.iter().filter(|l| l.contains(needle)).count() >= times {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never logged {needle:?}: {}",
            rig.daemon().expect("daemon").stderr_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    // 25% of a 1000 lines/s stream for 1.5 s is about 375 packets; the window is the
    // controller's, a little longer than the configured duration. A 10% or a 50% share
    // falls outside.
    let packets = canary["packets"].as_u64().unwrap_or(0);
    assert!(
        (250..=520).contains(&packets),
        "canary packets {packets}, expected about 375: {canary}"
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

/// Makes green's own kernel refuse `rule` traffic (nftables in green's namespace): UDP gets
/// ICMP port unreachable, TCP gets a reset, as from a backend whose listener died, while its
/// HTTP health endpoint stays up.
fn refuse_on_green(rig: &Rig, rule: &str) {
    for cmd in [
        "add table inet swtest".to_string(),
        "add chain inet swtest input { type filter hook input priority 0; }".to_string(),
        format!("add rule inet swtest input {rule}"),
    ] {
        let mut args = vec!["nft"];
        args.extend(cmd.split(' '));
        rig.lab.run(Host::Green, &args).expect("nft");
    }
}

/// The watch reads what the egress program counts about the candidate: ICMP unreachables its
/// host sends about packets steered to it, and TCP resets it sends. Either one rolls back,
/// and the metrics show the counts that decided.
#[test]
fn the_watch_rolls_back_on_backend_unreachables_and_resets() {
    if !privileged() {
        return;
    }
    let checks = CHECKS
        .replace("window_ms = 3000", "window_ms = 20000")
        .replace(
            "failures = 2",
            "failures = 1\nmax_resets = 0\nmax_unreachables = 0",
        );
    let rig = Rig::up("ur", &rig::standard_services("redirect", &checks)).expect("rig");

    // UDP: green's port 514 closes after the flip; the stream's datagrams draw unreachables.
    let udp = udp_stream(&rig, "u", 20000, 500);
    deploy(&rig, "udp4", "v2");
    promote_wait(&rig, "udp4").expect("promoted");
    refuse_on_green(&rig, "udp dport 514 reject with icmp type port-unreachable");
    let deadline = Instant::now() + Duration::from_secs(10);
    while active(&rig, "udp4") != Color::Blue && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = history(&rig, "udp4").pop().expect("deployment");
    assert_eq!(d.phase, Phase::RolledBack, "{:?}", d.last());
    let reason = &d.last().expect("transition").reason;
    assert!(
        reason.contains("ICMP unreachables about the candidate"),
        "{reason}"
    );
    udp.stop().expect("stop the sender");

    // TCP: green resets new connections after the flip (validation's own load still passed).
    deploy(&rig, "tcp4", "v2");
    promote_wait(&rig, "tcp4").expect("promoted");
    refuse_on_green(&rig, "tcp dport 601 reject with tcp reset");
    // A shipper that keeps reconnecting: every attempt lands on green and is reset.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    while active(&rig, "tcp4") != Color::Blue && Instant::now() < deadline {
        let p = tcp_stream(&rig, &format!("r{attempts}"), 1, 1);
        let _ = p.wait_timeout(Duration::from_secs(3));
        attempts += 1;
    }
    let d = history(&rig, "tcp4").pop().expect("deployment");
    assert_eq!(d.phase, Phase::RolledBack, "{:?}", d.last());
    let reason = &d.last().expect("transition").reason;
    assert!(reason.contains("the candidate reset"), "{reason}");

    let m = support::metrics::parse(&rig.metrics().expect("GET /metrics")).expect("parse");
    assert!(
        m.value(
            "switcher_backend_unreachables_total",
            &[("service", "udp4"), ("color", "green")]
        ) >= 1.0
    );
    assert!(
        m.value(
            "switcher_backend_resets_total",
            &[("service", "tcp4"), ("color", "green")]
        ) >= 1.0
    );
    // Blue sent neither.
    for (svc, metric) in [
        ("udp4", "switcher_backend_unreachables_total"),
        ("tcp4", "switcher_backend_resets_total"),
    ] {
        assert_eq!(m.value(metric, &[("service", svc), ("color", "blue")]), 0.0);
    }
}
