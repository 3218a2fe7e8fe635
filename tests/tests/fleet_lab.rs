//! Fleet mode end to end (issue 10): several edge hosts, each a lab of its own with a real
//! switcher daemon, XDP on its client-facing interface and its own blue and green sinks, all
//! coordinated through a real etcd (Debian's) on a control net. Real traffic through every
//! edge while the fleet flips, rolls back, loses etcd, or loses one host to a partition.
//! Needs root; in CI a missing privilege fails instead of skipping.

mod support;

use std::time::{Duration, Instant};

use support::privileged;
use switcher::{
    domain::Color,
    fleet::{AuditEntry, FleetFlip, FleetStatus},
};
use switcher_tests::{
    fleet::{self, FleetLab},
    lab::{Host, GREEN_V4},
    poll,
    rig::{self, Rig, STANDARD_CHECKS, UDP_PORT},
};

/// How long any one condition may take to come true.
const WAIT: Duration = Duration::from_secs(30);

/// `n` hosts and an etcd of `members` members, in sync.
fn fleet(tag: &str, n: usize, members: usize) -> FleetLab {
    fleet_with(tag, n, members, "")
}

/// [`fleet`] with `checks` appended to every service.
fn fleet_with(tag: &str, n: usize, members: usize, checks: &str) -> FleetLab {
    FleetLab::up(tag, n, members, checks).expect("fleet up")
}

fn fleet_status(rig: &Rig) -> FleetStatus {
    fleet::status(rig).expect("fleet status")
}

fn wait_in_sync(rig: &Rig, n: usize) -> Duration {
    fleet::wait_in_sync(rig, n, WAIT).expect("fleet in sync")
}

/// The CLI on `rig` with `args` (and `--json`): the fleet's reply, or the error it printed.
fn fleet_cli(rig: &Rig, args: &[&str]) -> Result<FleetFlip, String> {
    let mut all = args.to_vec();
    all.push("--json");
    let (_, out) = rig.cli(&all).expect("cli");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("fleet reply json"))
    } else {
        // Under --json the error is a JSON object on stdout.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON error ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        Err(v["error"].as_str().unwrap_or_default().to_owned())
    }
}

fn active(rig: &Rig, service: &str) -> Color {
    rig.status()
        .expect("status")
        .services
        .into_iter()
        .find(|s| s.name == service)
        .map(|s| s.active)
        .expect("service listed")
}

/// Restarts host `i`'s daemon (it adopts its pinned datapath) and waits until the fleet is in
/// sync with `service` on `colour` there.
fn restart_converges(rigs: &mut [Rig], i: usize, service: &str, colour: Color) {
    rigs[i].start_daemon().expect("restart the daemon");
    wait_in_sync(&rigs[(i + 1) % rigs.len()], rigs.len());
    assert_eq!(
        active(&rigs[i], service),
        colour,
        "the restarted host converged"
    );
}

fn all_applied(r: &FleetFlip, n: usize) {
    assert_eq!(r.hosts.len(), n, "{r:?}");
    for h in &r.hosts {
        assert_eq!(h.result, "applied", "{r:?}");
        assert_eq!(h.active, Some(r.to), "{r:?}");
    }
}

#[test]
fn five_hosts_flip_and_roll_back_together_losing_no_line_and_keeping_tcp_pinned() {
    if !privileged() {
        return;
    }
    const N: usize = 5;
    let FleetLab { rigs, etcd: _etcd } = fleet("fl5", N, 1);
    // Per host: a UDP stream across both changes, a TCP connection opened before the flip
    // (stays on blue), and later one opened after it (goes to green).
    let (udp_count, tcp_count) = (4000u64, 2500u64);
    let mut senders = Vec::new();
    for r in &rigs {
        let u = r.stream("udp", "u", udp_count, 400).expect("udp sender");
        let a = r.stream("tcp", "a", tcp_count, 250).expect("tcp sender");
        senders.push((u, a));
    }
    for r in &rigs {
        r.wait_received("u", "udp at blue", WAIT, |g| g.blue.len() >= 200)
            .expect("udp flowing");
        r.wait_received("a", "tcp at blue", WAIT, |g| g.blue.len() >= 200)
            .expect("tcp flowing");
    }
    let udp = fleet_cli(
        &rigs[2],
        &[
            "flip",
            "udp4",
            "--to",
            "green",
            "--force",
            "--reason",
            "fleet test",
        ],
    )
    .expect("fleet flip udp4");
    all_applied(&udp, N);
    let tcp = fleet_cli(
        &rigs[3],
        &[
            "flip",
            "tcp4",
            "--to",
            "green",
            "--force",
            "--reason",
            "fleet test",
        ],
    )
    .expect("fleet flip tcp4");
    all_applied(&tcp, N);
    eprintln!(
        "fleet flip acknowledged by {N} hosts in {:.1} / {:.1} ms",
        udp.ack_ms, tcp.ack_ms
    );
    let mut fresh = Vec::new();
    for r in &rigs {
        assert_eq!(
            (active(r, "udp4"), active(r, "tcp4")),
            (Color::Green, Color::Green)
        );
        fresh.push(r.stream("tcp", "b", 300, 300).expect("new tcp sender"));
    }
    for r in &rigs {
        r.wait_received("u", "udp at green", WAIT, |g| g.green.len() >= 200)
            .expect("udp on green");
    }
    let back = fleet_cli(&rigs[4], &["rollback", "udp4"]).expect("fleet rollback");
    assert_eq!((back.from, back.to), (Color::Green, Color::Blue));
    all_applied(&back, N);
    for r in &rigs {
        assert_eq!(active(r, "udp4"), Color::Blue);
    }
    for (i, (r, ((u, a), b))) in rigs.iter().zip(senders.iter().zip(&fresh)).enumerate() {
        assert_eq!(
            rig::finish_sender(u, Duration::from_secs(60)).expect("udp"),
            udp_count
        );
        assert_eq!(
            rig::finish_sender(a, Duration::from_secs(60)).expect("tcp"),
            tcp_count
        );
        assert_eq!(
            rig::finish_sender(b, Duration::from_secs(60)).expect("tcp b"),
            300
        );
        let got = r.wait_stream("u", udp_count as usize, WAIT).expect("sinks");
        assert_eq!(
            got.loss_and_duplicates(udp_count),
            (vec![], vec![]),
            "host {i} udp"
        );
        assert!(
            !got.green.is_empty() && !got.blue.is_empty(),
            "host {i}: udp went both ways"
        );
        let a = r.wait_stream("a", tcp_count as usize, WAIT).expect("sinks");
        assert_eq!(
            a.loss_and_duplicates(tcp_count),
            (vec![], vec![]),
            "host {i} tcp"
        );
        assert!(
            a.green.is_empty(),
            "host {i}: the established connection stayed on blue"
        );
        let b = r.wait_stream("b", 300, WAIT).expect("sinks");
        assert_eq!(
            b.loss_and_duplicates(300),
            (vec![], vec![]),
            "host {i} new tcp"
        );
        assert!(
            b.blue.is_empty(),
            "host {i}: the new connection went to green"
        );
    }
    let st = fleet_status(&rigs[1]);
    assert_eq!((st.in_drift, st.hosts.len()), (0, N), "{st:?}");
    // The audit trail, read on a host that changed nothing: who, where, what, why.
    let (_, out) = rigs[1]
        .cli(&["fleet", "history", "udp4", "--json"])
        .expect("cli");
    let trail: Vec<AuditEntry> = serde_json::from_slice(&out.stdout).expect("history json");
    let flip = trail
        .iter()
        .find(|e| e.action == "flip")
        .expect("the flip is recorded");
    assert_eq!(
        (flip.host.as_str(), flip.to, flip.reason.as_str()),
        ("edge-2", Color::Green, "fleet test")
    );
    assert!(
        flip.actor.starts_with("cli:root") && flip.actor.ends_with("@edge-2"),
        "{flip:?}"
    );
    let rb = trail
        .iter()
        .find(|e| e.action == "rollback")
        .expect("the rollback is recorded");
    assert_eq!((rb.host.as_str(), rb.to), ("edge-4", Color::Blue));
}

#[test]
fn a_partitioned_host_is_excluded_keeps_serving_and_converges_on_rejoin() {
    if !privileged() {
        return;
    }
    let FleetLab { rigs, etcd } = fleet("flp", 3, 1);
    let cut = &rigs[2];
    let stream = cut
        .stream("udp", "p", 6000, 500)
        .expect("sender on the cut host");
    cut.wait_received("p", "udp at blue", WAIT, |g| g.blue.len() >= 200)
        .expect("flowing");
    etcd.partition(&cut.lab).expect("partition");
    // The others see its lease expire; it sees itself disconnected (fail static).
    poll::until_state_every(
        "edge-2 disconnected",
        WAIT,
        Duration::from_millis(100),
        || {
            let s = fleet_status(&rigs[0]);
            let gone = s.hosts.iter().any(|h| h.host == "edge-2" && !h.connected);
            Ok(if gone && !fleet_status(cut).connected {
                Ok(())
            } else {
                Err(format!("{:?}", s.hosts))
            })
        },
    )
    .expect("partition seen");
    let metrics = cut.metrics().expect("metrics");
    assert!(metrics.contains("switcher_fleet_connected 0"), "{metrics}");
    let r = fleet_cli(
        &rigs[0],
        &[
            "flip",
            "udp4",
            "--to",
            "green",
            "--force",
            "--reason",
            "partition test",
        ],
    )
    .expect("the connected hosts flip");
    all_applied(&r, 2);
    assert_eq!(r.excluded, vec!["edge-2".to_string()], "{r:?}");
    // A fleet change asked on the cut host is refused, naming the way out.
    let refused = fleet_cli(
        cut,
        &["flip", "udp4", "--to", "green", "--force", "--reason", "x"],
    )
    .expect_err("no fleet write from a cut host");
    assert!(refused.contains("disconnected from etcd"), "{refused}");
    assert_eq!(active(cut, "udp4"), Color::Blue, "fail static");
    let healed = Instant::now();
    etcd.heal(&cut.lab).expect("heal");
    let converged = wait_in_sync(&rigs[0], 3);
    assert_eq!(
        active(cut, "udp4"),
        Color::Green,
        "converged without an operator"
    );
    eprintln!(
        "rejoined and converged {:?} after the partition healed",
        healed.elapsed().min(converged + Duration::from_millis(50))
    );
    assert_eq!(
        rig::finish_sender(&stream, Duration::from_secs(60)).expect("sender"),
        6000
    );
    let got = cut.wait_stream("p", 6000, WAIT).expect("sinks");
    assert_eq!(
        got.loss_and_duplicates(6000),
        (vec![], vec![]),
        "traffic never stopped"
    );
    let metrics = cut.metrics().expect("metrics");
    assert!(metrics.contains("switcher_fleet_connected 1"), "{metrics}");
    assert!(
        metrics.contains("switcher_fleet_hosts_in_drift 0"),
        "{metrics}"
    );
}

#[test]
fn etcd_lost_fails_static_and_a_killed_host_daemon_converges_after_restart() {
    if !privileged() {
        return;
    }
    let FleetLab { mut rigs, mut etcd } = fleet("fle", 3, 3);
    // One member of three down: the fleet still flips.
    etcd.stop_member(0).expect("stop a member");
    // Hosts that were talking to it move to another member: every host, as it sees itself
    // (one still reconnecting refuses a fleet flip, rightly, while the others see it in sync
    // until its lease runs out).
    for r in &rigs {
        wait_in_sync(r, 3);
    }
    let r = fleet_cli(
        &rigs[1],
        &[
            "flip",
            "tcp4",
            "--to",
            "green",
            "--force",
            "--reason",
            "member down",
        ],
    )
    .expect("flip with two of three members");
    all_applied(&r, 3);
    etcd.start_member(0).expect("restart the member");
    // All of etcd gone: every host keeps serving what it applied, and says so.
    etcd.stop_all().expect("stop etcd");
    poll::until_state_every(
        "every host disconnected",
        WAIT,
        Duration::from_millis(100),
        || {
            let down = rigs.iter().filter(|r| !fleet_status(r).connected).count();
            Ok(if down == 3 {
                Ok(())
            } else {
                Err(format!("{down} of 3 disconnected"))
            })
        },
    )
    .expect("fail static");
    let e = fleet_cli(
        &rigs[0],
        &["flip", "tcp4", "--to", "blue", "--force", "--reason", "x"],
    )
    .expect_err("no fleet flip without etcd");
    assert!(e.contains("--local --force --reason"), "{e}");
    for r in &rigs {
        assert_eq!(active(r, "tcp4"), Color::Green);
    }
    etcd.start_all().expect("start etcd");
    wait_in_sync(&rigs[0], 3);
    // A host whose daemon dies as the fleet flips: its lease runs out while the driver
    // waits, so it is named lost (not waited for); restarted, it converges on its own.
    rigs[2].kill_daemon().expect("kill -9");
    let r = fleet_cli(
        &rigs[0],
        &[
            "flip", "udp4", "--to", "green", "--force", "--reason", "kill",
        ],
    )
    .expect("the live hosts flip");
    let lost: Vec<&str> = r
        .hosts
        .iter()
        .filter(|h| h.result != "applied")
        .map(|h| h.host.as_str())
        .collect();
    assert!(lost.is_empty() || lost == ["edge-2"], "{r:?}");
    assert!(
        r.hosts
            .iter()
            .any(|h| h.host == "edge-2" && h.result == "lost")
            || r.excluded == ["edge-2"],
        "the dead host is named: {r:?}"
    );
    for r in &rigs[..2] {
        assert_eq!(active(r, "udp4"), Color::Green);
    }
    restart_converges(&mut rigs, 2, "udp4", Color::Green);
}

/// The desired deployment phase of `service` as `rig` reads it.
fn fleet_phase(rig: &Rig, service: &str) -> Option<String> {
    let s = fleet_status(rig);
    let d = s.desired.get(service)?.desired.deployment.clone()?;
    Some(serde_json::to_value(d.phase).ok()?.as_str()?.to_string())
}

#[test]
fn a_candidate_unhealthy_from_one_host_only_flips_nobody_and_that_host_is_named() {
    if !privileged() {
        return;
    }
    let FleetLab { rigs, etcd: _etcd } = fleet_with("flu", 3, 1, STANDARD_CHECKS);
    // edge-1's green environment fails its health check; the others' pass.
    rigs[1]
        .fault(Host::Green, r#"{"health_ok": false}"#)
        .expect("fault");
    let green = format!("{GREEN_V4}:{}", rig::TCP_PORT);
    let d = fleet_cli(
        &rigs[0],
        &["deploy", "tcp4", "--green", &green, "--version", "v2"],
    )
    .expect("fleet deploy");
    all_applied(&d, 3);
    let (_, out) = rigs[2].cli(&["promote", "tcp4", "--wait"]).expect("cli");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "promote must fail: {err}");
    assert!(
        err.contains("failed on 1 host(s): edge-1") && err.contains("health"),
        "{err}"
    );
    for r in &rigs {
        assert_eq!(active(r, "tcp4"), Color::Blue, "nobody flipped");
    }
    assert_eq!(fleet_phase(&rigs[0], "tcp4").as_deref(), Some("rejected"));
}

#[test]
fn kill_9_of_the_driving_daemon_mid_promote_another_host_finishes_and_the_killed_one_converges() {
    if !privileged() {
        return;
    }
    // A 3 s canary keeps the validation going long enough to kill its driver in the middle.
    let checks = format!("{STANDARD_CHECKS}[service.canary]\npercent = 20\nduration_ms = 3000\n");
    let FleetLab {
        mut rigs,
        etcd: _etcd,
    } = fleet_with("flk", 3, 1, &checks);
    let count = 6000u64;
    let senders: Vec<_> = rigs
        .iter()
        .map(|r| r.stream("udp", "k", count, 500).expect("udp sender"))
        .collect();
    for r in &rigs {
        r.wait_received("k", "udp at blue", WAIT, |g| g.blue.len() >= 200)
            .expect("flowing");
    }
    let green = format!("{GREEN_V4}:{UDP_PORT}");
    fleet_cli(&rigs[0], &["deploy", "udp4", "--green", &green]).expect("fleet deploy");
    let (_, out) = rigs[0].cli(&["promote", "udp4"]).expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll::until_state_every("validating", WAIT, Duration::from_millis(50), || {
        Ok(match fleet_phase(&rigs[1], "udp4") {
            Some(p) if p == "validating" => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .expect("validation under way");
    rigs[0].kill_daemon().expect("kill -9 the driver");
    let killed = Instant::now();
    poll::until_state_every(
        "another driver finishes",
        WAIT,
        Duration::from_millis(100),
        || {
            Ok(match fleet_phase(&rigs[1], "udp4") {
                Some(p) if p == "promoted" => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .expect("finished by another host");
    eprintln!(
        "the deployment was finished {:?} after its driver was killed",
        killed.elapsed()
    );
    for r in &rigs[1..] {
        assert_eq!(active(r, "udp4"), Color::Green);
    }
    restart_converges(&mut rigs, 0, "udp4", Color::Green);
    for (i, (r, s)) in rigs.iter().zip(&senders).enumerate() {
        assert_eq!(
            rig::finish_sender(s, Duration::from_secs(60)).expect("sender"),
            count
        );
        let got = r.wait_stream("k", count as usize, WAIT).expect("sinks");
        assert_eq!(got.loss_and_duplicates(count), (vec![], vec![]), "host {i}");
    }
}

#[test]
fn fleet_promote_wait_returns_when_every_host_is_stable_and_exits_6_when_one_rolls_back() {
    if !privileged() {
        return;
    }
    let FleetLab { rigs, etcd: _etcd } = fleet_with("flw", 2, 1, STANDARD_CHECKS);

    // Every host's watch window passes: exit 0, and only then.
    let green = format!("{GREEN_V4}:{UDP_PORT}");
    fleet_cli(&rigs[0], &["deploy", "udp4", "--green", &green]).expect("fleet deploy");
    let (_, out) = rigs[0].cli(&["promote", "udp4", "--wait"]).expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = fleet_status(&rigs[1]);
    for h in &s.hosts {
        let d = h.services["udp4"]
            .report
            .deployment
            .as_ref()
            .expect("host's side");
        assert_eq!(
            d.phase,
            switcher::deploy::Phase::Stable,
            "{}: {d:?}",
            h.host
        );
    }

    // edge-1's green turns unhealthy inside the watch window: its watch rolls the fleet back,
    // and the waiting promote exits 6.
    let green = format!("{GREEN_V4}:{}", rig::TCP_PORT);
    fleet_cli(&rigs[0], &["deploy", "tcp4", "--green", &green]).expect("fleet deploy");
    let waiting = std::thread::scope(|sc| {
        let cli = sc.spawn(|| rigs[0].cli(&["promote", "tcp4", "--wait", "--json"]));
        poll::until_state_every("tcp4 promoted", WAIT, Duration::from_millis(50), || {
            Ok(match fleet_phase(&rigs[1], "tcp4") {
                Some(p) if p == "promoted" => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .expect("flipped");
        rigs[1]
            .fault(Host::Green, r#"{"health_ok": false}"#)
            .expect("fault");
        cli.join().expect("cli thread").expect("cli")
    });
    let (_, out) = waiting;
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    assert_eq!(out.status.code(), Some(6), "{e}");
    assert_eq!(e["kind"], "rolled_back", "{e}");
    for r in &rigs {
        assert_eq!(active(r, "tcp4"), Color::Blue, "the fleet rolled back");
    }
}
