//! Validation and the watch: verdicts applied, errors handled, canary shares ended.

use super::*;

#[tokio::test]
async fn promote_validates_flips_and_watches_a_healthy_candidate() {
    let TcpSetup {
        ctl,
        dp,
        candidate: cand,
        _dir,
        ..
    } = tcp_setup("[service.watch]\nwindow_ms = 300\ninterval_ms = 50").await;
    let d = deploy_green(&ctl, "t", vec![Member::new(cand)]).await;
    let mut events = ctl.subscribe();
    let p = ctl
        .promote("t", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect("promote");
    let Promotion::Settled(done) = p else {
        panic!("waited: {p:?}")
    };
    assert_eq!(done.phase, Phase::Promoted);
    assert_eq!(dp.maps().active_color("t"), Some(Color::Green));
    let passed = done
        .transitions
        .iter()
        .find(|t| t.to == Phase::Ready)
        .expect("validation passed");
    assert_eq!(passed.actor, AUTO);
    let health = &passed.evidence.as_ref().expect("evidence")["health"];
    assert_eq!(health["passed"], true);
    assert!(health["consecutive"].as_u64() >= Some(3), "{health}");
    until_phase(&ctl, "t", d.id, Phase::Stable).await;
    // The event stream saw the whole way.
    let mut kinds = Vec::new();
    while let Ok(ev) = events.try_recv() {
        kinds.push((ev.kind, ev.phase));
    }
    for want in [
        ("transition".to_string(), Some(Phase::Validating)),
        ("transition".to_string(), Some(Phase::Ready)),
        ("flip".to_string(), None),
        ("transition".to_string(), Some(Phase::Promoted)),
        ("transition".to_string(), Some(Phase::Stable)),
    ] {
        assert!(kinds.contains(&want), "{want:?} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn a_dead_candidate_is_rejected_and_never_gets_traffic() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let (bl, blue) = listener().await;
    let _server = serve(bl);
    let refusing = RefusingPort::bind().expect("bind");
    let dead = refusing.addr;
    let ctl = start(&dir.config(&tcp(blue, "")), &dp).await;
    let d = deploy_green(&ctl, "t", vec![Member::new(dead)]).await;
    let e = ctl
        .promote("t", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect_err("rejected");
    assert!(
        e.to_string().contains(&format!(
            "validation of deployment {} failed: health:",
            d.id
        )),
        "{e}"
    );
    assert_eq!(phase_of(&ctl, "t", d.id).await, Some(Phase::Rejected));
    assert_eq!(dp.maps().active_color("t"), Some(Color::Blue));
    let s = ctl.status(Some("t")).await.expect("status");
    assert!(!s.services[0].green.trusted);
    assert!(s.services[0].deployment.is_none());
}

#[tokio::test]
async fn a_candidate_failing_after_the_flip_is_rolled_back_automatically() {
    let TcpSetup {
        ctl,
        dp,
        candidate: cand,
        green: green_server,
        _dir,
        ..
    } = tcp_setup("[service.watch]\nwindow_ms = 20000\ninterval_ms = 50\nfailures = 2").await;
    let d = deploy_green(&ctl, "t", vec![Member::new(cand)]).await;
    ctl.promote("t", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect("promoted");
    // The candidate dies: its port stops answering.
    green_server.abort();
    let _ = green_server.await;
    until_phase(&ctl, "t", d.id, Phase::RolledBack).await;
    assert_eq!(dp.maps().active_color("t"), Some(Color::Blue));
    let h = ctl.history("t").await.expect("history");
    let last = h[0].last().expect("transition");
    assert_eq!(last.actor, AUTO);
    assert!(
        last.reason.starts_with("automatic rollback: health:"),
        "{}",
        last.reason
    );
    assert_eq!(
        last.evidence.as_ref().expect("evidence")["consecutive_failures"],
        2
    );
}

#[tokio::test]
async fn a_silent_canary_rejects_and_leaves_no_share_behind() {
    let TcpSetup {
        ctl,
        dp,
        candidate: cand,
        _dir,
        ..
    } = tcp_setup("[service.canary]\npercent = 10\nduration_ms = 200").await;
    deploy_green(&ctl, "t", vec![Member::new(cand)]).await;
    let e = ctl
        .promote("t", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect_err("no canary traffic in the fake");
    assert!(
        e.to_string()
            .contains("canary: no traffic reached the candidate"),
        "{e}"
    );
    // The share was really given, then taken back.
    let id = dp.maps().id("t").expect("id");
    let writes: Vec<u32> = dp
        .maps()
        .canary_writes
        .iter()
        .filter(|(i, _)| *i == id)
        .map(|(_, s)| *s)
        .collect();
    let given = writes
        .iter()
        .position(|s| *s != 0)
        .expect("a share was given");
    assert_eq!(writes[given], crate::judge::canary_share(10.0));
    assert!(
        writes[given + 1..].iter().all(|s| *s == 0) && writes.len() > given + 1,
        "{writes:?}"
    );
    assert_eq!(dp.maps().service("t").expect("t").canary_share, 0);
    assert_eq!(dp.maps().active_color("t"), Some(Color::Blue));
}

#[tokio::test]
async fn a_validation_that_errors_is_rejected_and_its_canary_share_cleared() {
    let TcpSetup {
        ctl,
        dp,
        candidate: cand,
        _dir,
        ..
    } = tcp_setup("[service.canary]\npercent = 10\nduration_ms = 200").await;
    deploy_green(&ctl, "t", vec![Member::new(cand)]).await;
    // The canary's share is written, then reading the counters fails: no verdict possible.
    dp.maps().fail_reads = true;
    let e = ctl
        .promote("t", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect_err("no verdict is a failure");
    assert!(
        e.to_string().contains("validation could not complete"),
        "{e}"
    );
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(dp.maps().service("t").expect("t").canary_share, 0);
    assert_eq!(dp.maps().active_color("t"), Some(Color::Blue));
}

#[tokio::test]
async fn a_watch_that_cannot_watch_rolls_back() {
    let TcpSetup {
        ctl,
        dp,
        candidate: cand,
        _dir,
        ..
    } = tcp_setup("[service.watch]\nwindow_ms = 20000\ninterval_ms = 50").await;
    let d = deploy_green(&ctl, "t", vec![Member::new(cand)]).await;
    ctl.promote("t", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect("promoted");
    dp.maps().fail_reads = true;
    until_phase(&ctl, "t", d.id, Phase::RolledBack).await;
    dp.maps().fail_reads = false;
    assert_eq!(dp.maps().active_color("t"), Some(Color::Blue));
    let h = ctl.history("t").await.expect("history");
    let reason = &h[0].last().expect("transition").reason;
    assert!(
        reason.starts_with("automatic rollback: the watch failed:"),
        "{reason}"
    );
}

/// `[service.shadow]`: the copies are asked of the datapath for the candidate colour at the
/// shadow port and ended after the step; a step that copied nothing rejects the candidate,
/// one that copied passes with the count in the evidence.
#[tokio::test]
async fn shadowing_copies_to_the_candidate_then_ends_and_no_copy_rejects() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let (gl, health) = listener().await;
    let cfg = dir.config(&format!(
        r#"
[[service]]
name = "u"
vip = "198.18.10.10"
port = 514
protocol = "udp"
blue = {{ backend = "127.0.0.2:514" }}
[service.health]
tcp_port = {port}
interval_ms = 20
deadline_ms = 2000
timeout_ms = 500
[service.shadow]
percent = 50
duration_ms = 300
port = 5140
"#,
        port = health.port()
    ));
    let ctl = start(&cfg, &dp).await;
    let _g = serve(gl);
    let id = dp.maps().id("u").expect("id");

    deploy_green(&ctl, "u", green("127.0.0.1:514")).await;
    // While the step runs, the datapath is asked for exactly this shadowing.
    let watcher = {
        let dp = dp.clone();
        tokio::spawn(async move {
            // Up to 10 s for health to pass first; every 5 ms, well inside the step's 300.
            for _ in 0..2000 {
                if let Some(s) = dp.maps().shadows.get(&id).copied() {
                    return Some(s);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        })
    };
    let e = ctl
        .promote("u", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect_err("no copy reached the candidate");
    assert!(
        e.to_string().contains("shadow: no packet was copied"),
        "{e}"
    );
    let asked = watcher.await.expect("watcher").expect("shadowing was set");
    assert_eq!(
        (asked.share, asked.color, asked.port),
        (crate::judge::shadow_share(50.0), Color::Green, 5140)
    );
    assert!(
        dp.maps().shadows.is_empty(),
        "the copies ended with the step"
    );

    // Copies flowing while the shadowing is set: the candidate passes.
    let copier = {
        let dp = dp.clone();
        tokio::spawn(async move {
            loop {
                {
                    let mut m = dp.maps();
                    if m.shadows.contains_key(&id) {
                        m.shadow_counters.entry(id).or_default().copies += 10;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    deploy_green(&ctl, "u", green("127.0.0.1:514")).await;
    let Promotion::Settled(d) = ctl
        .promote("u", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect("copies reached the candidate")
    else {
        panic!("promote with a wait settles");
    };
    copier.abort();
    let shadow = d
        .transitions
        .iter()
        .find_map(|t| t.evidence.as_ref().and_then(|e| e.get("shadow")).cloned())
        .expect("shadow evidence");
    assert!(shadow["copies"].as_u64().unwrap_or(0) > 0, "{shadow}");
    assert!(
        dp.maps().shadows.is_empty(),
        "the copies ended with the step"
    );
}
