//! Starting over an earlier daemon's state and maps, and shutting down.

use super::*;

#[tokio::test]
async fn a_restart_reconciles_with_the_maps_and_resumes_or_closes_deployments() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(&UDP.replace("window_ms = 300", "window_ms = 60000"));
    let ctl = start(&cfg, &dp).await;
    let d = deploy_green(&ctl, "u", green("198.18.2.9:514")).await;
    force_flip(&ctl, "u", Color::Green).await;
    ctl.shutdown(true).await.expect("shutdown");
    assert_eq!(dp.maps().closed, Some(true), "left attached");
    let e = ctl.status(None).await.expect_err("closed");
    assert!(e.to_string().contains("closed"), "{e}");

    // The next daemon finds the watch to resume: the maps agree with the state.
    let ctl = start(&cfg, &dp).await;
    assert_eq!(phase_of(&ctl, "u", d.id).await, Some(Phase::Promoted));
    ctl.shutdown(true).await.expect("shutdown");

    // Someone flipped the maps back meanwhile: the datapath wins, the deployment is closed.
    let id = dp.maps().id("u").expect("id");
    let back = dp.maps().active[&id].flipped_to(Color::Blue.index());
    dp.maps().active.insert(id, back);
    let ctl = start(&cfg, &dp).await;
    assert_eq!(phase_of(&ctl, "u", d.id).await, Some(Phase::RolledBack));
    let s = ctl.status(Some("u")).await.expect("status");
    assert_eq!(
        (s.services[0].active, s.services[0].generation),
        (Color::Blue, 2)
    );
    assert!(!s.services[0].green.trusted);
}

#[tokio::test]
async fn shutdown_ends_a_running_canary() {
    let TcpSetup {
        ctl,
        dp,
        candidate: cand,
        _dir,
        ..
    } = tcp_setup("[service.canary]\npercent = 20\nduration_ms = 30000").await;
    deploy_green(&ctl, "t", vec![Member::new(cand)]).await;
    ctl.promote("t", "cli:t", None).await.expect("validating");
    let share = || dp.maps().service("t").expect("t").canary_share;
    for _ in 0..200 {
        if share() != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(share(), crate::judge::canary_share(20.0), "the canary runs");
    ctl.shutdown(true).await.expect("shutdown");
    assert_eq!(share(), 0, "no canary outlives the daemon");
    assert_eq!(dp.maps().closed, Some(true));
}

#[tokio::test]
async fn a_canary_share_left_by_a_crashed_daemon_is_cleared_at_start() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(UDP);
    let ctl = start(&cfg, &dp).await;
    deploy_green(&ctl, "u", green("198.18.2.9:514")).await;
    // What a daemon killed during a canary leaves: the share in the maps, the deployment
    // validating in the saved state. (Dropped without shutdown: nothing cleans up.)
    drop(ctl);
    let id = dp.maps().id("u").expect("id");
    dp.maps()
        .services
        .values_mut()
        .find(|s| s.id == id)
        .expect("u")
        .canary_share = 6554;
    let mut state = State::load(&dir.0).expect("state");
    let cur = state.services.get_mut("u").and_then(|s| s.current.as_mut());
    cur.expect("deployment")
        .apply(Step::StartValidation, "cli:t", "promote", None, 1)
        .expect("step");
    state.save(&dir.0).expect("save");

    let ctl = start(&cfg, &dp).await;
    assert_eq!(dp.maps().service("u").expect("u").canary_share, 0);
    let h = ctl.history("u").await.expect("history");
    assert_eq!(h.last().map(|d| d.phase), Some(Phase::Aborted));
    ctl.shutdown(true).await.expect("shutdown");
}

#[tokio::test]
async fn a_watch_interrupted_by_a_restart_resumes_and_finishes_its_window() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(&UDP.replace("window_ms = 300", "window_ms = 1500"));
    let ctl = start(&cfg, &dp).await;
    let d = deploy_green(&ctl, "u", green("198.18.2.9:514")).await;
    force_flip(&ctl, "u", Color::Green).await;
    let until = ctl
        .history("u")
        .await
        .expect("history")
        .pop()
        .and_then(|d| d.watch_until_ms)
        .expect("window recorded");
    ctl.shutdown(true).await.expect("shutdown");

    let ctl = start(&cfg, &dp).await;
    let mut events = ctl.subscribe();
    until_phase(&ctl, "u", d.id, Phase::Stable).await;
    let h = ctl.history("u").await.expect("history");
    let stable = h[0].last().expect("stable");
    assert!(
        stable.at_ms >= until,
        "stable at {} before the window's end {until}",
        stable.at_ms
    );
    assert!(stable.evidence.as_ref().expect("evidence")["rounds"].as_u64() >= Some(1));
    // The watch said it resumed. (It may have said so before this subscription: then the
    // stable transition above, after the window, is the proof.)
    while let Ok(ev) = events.try_recv() {
        assert_ne!(ev.kind, "check", "no failed round: {ev:?}");
    }
}
