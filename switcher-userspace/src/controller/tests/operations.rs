//! Deploy, flip, rollback, abort and reload as an operator uses them.

use super::*;

#[tokio::test]
async fn an_unvalidated_candidate_flips_only_when_forced_then_is_watched_stable_and_rolled_back() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let ctl = start(&dir.config(UDP), &dp).await;
    assert_eq!(dp.maps().attached, ["lo"]);
    let d = ctl
        .deploy(
            "u",
            Color::Green,
            green("198.18.2.9:514"),
            Some("v2".into()),
            false,
            "cli:t",
        )
        .await
        .expect("deploy");
    assert_eq!(d.phase, Phase::Deployed);
    let slot = dp.maps().service("u").expect("u").pools[1].clone();
    assert_eq!(slot, green("198.18.2.9:514"), "the idle slot is programmed");

    let now = crate::controller::Accepted::now();
    let e = ctl
        .flip("u", Color::Green, false, None, "cli:t", now)
        .await
        .expect_err("unvalidated");
    assert!(e.to_string().contains("--force"), "{e}");
    let e = ctl
        .flip("u", Color::Green, true, None, "cli:t", now)
        .await
        .expect_err("no reason");
    assert!(e.to_string().contains("--reason"), "{e}");
    assert_eq!(
        dp.maps().active_color("u"),
        Some(Color::Blue),
        "nothing moved"
    );

    let r = ctl
        .flip("u", Color::Green, true, Some("hotfix".into()), "cli:t", now)
        .await
        .expect("forced flip");
    assert!(r.outcome.changed);
    assert_eq!(
        (r.outcome.from, r.outcome.to, r.outcome.generation),
        (Color::Blue, Color::Green, 1)
    );
    assert!(r.api_to_map_ns > 0);
    // The stages follow one another: together they are the whole time to the map write.
    let st = r.stages_ns;
    assert_eq!(
        st.route + st.lock + st.check + st.write,
        r.api_to_map_ns,
        "{st:?}"
    );
    assert!(st.write > 0 && st.check > 0, "{st:?}");
    // One thread served it all (a current-thread runtime): its preemptions were counted.
    assert!(st.preempted.is_some(), "{st:?}");
    assert_eq!(dp.maps().active_color("u"), Some(Color::Green));
    let mut registry = prometheus_client::registry::Registry::default();
    ctl.recorded().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("flip_api_latency_seconds_count 1\n"),
        "flip latency recorded once:\n{text}"
    );
    // The watch (300 ms window, no checks failing) makes it stable and trusted.
    until_phase(&ctl, "u", d.id, Phase::Stable).await;
    let s = ctl.status(Some("u")).await.expect("status");
    assert!(s.services[0].green.trusted, "served a whole window");
    assert_eq!(s.services[0].active, Color::Green);

    let back = ctl.rollback("u", "cli:t").await.expect("rollback");
    assert_eq!(back.phase, Phase::RolledBack);
    assert_eq!(dp.maps().active_color("u"), Some(Color::Blue));
    let s = ctl.status(Some("u")).await.expect("status");
    assert!(
        !s.services[0].green.trusted,
        "a rolled-back candidate needs --force again"
    );
    assert!(s.services[0].deployment.is_none(), "finished: history only");
    let h = ctl.history("u").await.expect("history");
    let phases: Vec<Phase> = h[0].transitions.iter().map(|t| t.to).collect();
    assert_eq!(
        phases,
        [
            Phase::Deployed,
            Phase::Promoted,
            Phase::Stable,
            Phase::RolledBack
        ]
    );
    assert_eq!(h[0].transitions[1].reason, "hotfix");
}

#[tokio::test]
async fn deploy_refuses_what_would_break_traffic() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let two = format!(
        "{UDP}\n[[service]]\nname = \"w\"\nvip = \"198.18.10.12\"\nport = 514\nprotocol = \"udp\"\nblue = {{ backend = \"198.18.1.5:514\" }}\n"
    );
    let ctl = start(&dir.config(&two), &dp).await;
    let refuse = |r: Result<Deployment>, want: &str| match r {
        Ok(d) => panic!("deployed {d:?}, wanted refusal with {want:?}"),
        Err(e) => assert!(e.to_string().contains(want), "{e} lacks {want:?}"),
    };
    refuse(
        ctl.deploy("u", Color::Blue, green("198.18.1.9:514"), None, false, "t")
            .await,
        "blue is serving u",
    );
    refuse(
        ctl.deploy(
            "u",
            Color::Green,
            green("[2001:2::9]:514"),
            None,
            false,
            "t",
        )
        .await,
        "address family",
    );
    refuse(
        ctl.deploy("u", Color::Green, green("198.18.1.5:514"), None, false, "t")
            .await,
        "198.18.1.5:514/udp would be a backend of both u and w",
    );
    refuse(
        ctl.deploy(
            "nope",
            Color::Green,
            green("198.18.2.9:514"),
            None,
            false,
            "t",
        )
        .await,
        "no service named \"nope\"",
    );
    // TCP connections still pinned to green would follow its new backend.
    let id = dp.maps().id("u").expect("id");
    dp.maps().open_flows.insert(id, [0, 3]);
    refuse(
        ctl.deploy("u", Color::Green, green("198.18.2.9:514"), None, false, "t")
            .await,
        "3 TCP connection(s) of u are still pinned to green",
    );
    let d = ctl
        .deploy("u", Color::Green, green("198.18.2.9:514"), None, true, "t")
        .await
        .expect("forced");
    refuse(
        ctl.deploy("u", Color::Green, green("198.18.2.8:514"), None, true, "t")
            .await,
        &format!("deployment {} of u is deployed; finish it", d.id),
    );
    let aborted = ctl.abort("u", "t").await.expect("abort");
    assert_eq!(aborted.phase, Phase::Aborted);
    refuse(
        ctl.abort("u", "t").await.map(|_| aborted.clone()),
        "no deployment in progress",
    );
}

#[tokio::test]
async fn reload_applies_a_valid_file_whole_and_an_invalid_one_not_at_all() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(UDP);
    let ctl = start(&cfg, &dp).await;
    let names = |s: StatusView| s.services.into_iter().map(|s| s.name).collect::<Vec<_>>();

    std::fs::write(&cfg, "[daemon]\ninterfaces = [\"lo\"\n").expect("write");
    let e = ctl.reload("cli:t").await.expect_err("syntax");
    assert!(e.to_string().contains("switcher.toml"), "{e}");
    dir.config(&format!("{UDP}\n[[service]]\nname = \"x\"\nvip = \"198.18.10.13\"\nport = 514\nprotocol = \"udp\"\nblue = {{ backend = \"198.18.2.2:514\" }}\n"));
    let e = ctl.reload("cli:t").await.expect_err("shared backend");
    assert!(
        e.to_string()
            .contains("already the backend of service \"u\""),
        "{e}"
    );
    assert_eq!(
        names(ctl.status(None).await.expect("status")),
        ["u"],
        "nothing applied"
    );

    let added = format!("{UDP}\n[[service]]\nname = \"x\"\nvip = \"198.18.10.13\"\nport = 515\nprotocol = \"udp\"\nblue = {{ backend = \"198.18.1.7:515\" }}\n");
    dir.config(&added);
    let r = ctl.reload("cli:t").await.expect("reload");
    assert_eq!(
        (r.added.as_slice(), r.services),
        (["x".to_string()].as_slice(), 2)
    );
    assert_eq!(names(ctl.status(None).await.expect("status")), ["u", "x"]);
    assert!(dp.maps().id("x").is_some());

    // A deployed backend counts: reusing it for a new service is refused.
    ctl.deploy("u", Color::Green, green("198.18.2.9:514"), None, false, "t")
        .await
        .expect("deploy");
    dir.config(&format!("{added}\n[[service]]\nname = \"y\"\nvip = \"198.18.10.14\"\nport = 514\nprotocol = \"udp\"\nblue = {{ backend = \"198.18.2.9:514\" }}\n"));
    let e = ctl.reload("cli:t").await.expect_err("deployed backend");
    assert!(
        e.to_string()
            .contains("198.18.2.9:514/udp would be a backend of both"),
        "{e}"
    );
    // Fields bound to the running datapath change only with a restart.
    let moved = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("[\"lo\"]", "[\"eth9\"]");
    std::fs::write(&cfg, moved).expect("write");
    let e = ctl.reload("cli:t").await.expect_err("restart-only field");
    assert!(e.to_string().contains("only with a restart"), "{e}");

    // Removing a service takes it out of the datapath; its history stays.
    dir.config(UDP);
    let r = ctl.reload("cli:t").await.expect("reload");
    assert_eq!(r.removed, ["x"]);
    assert!(dp.maps().id("x").is_none());
    assert!(ctl.history("x").await.is_err(), "x never had a deployment");
}

#[tokio::test]
async fn the_previous_colour_stays_a_rollback_target_only_while_warm() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(&UDP.replace("[service.watch]", "warm_ms = 300\n[service.watch]"));
    let ctl = start(&cfg, &dp).await;
    let d = deploy_green(&ctl, "u", green("198.18.2.9:514")).await;
    force_flip(&ctl, "u", Color::Green).await;
    until_phase(&ctl, "u", d.id, Phase::Stable).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e = ctl
        .rollback("u", "cli:t")
        .await
        .expect_err("warm time over");
    assert!(e.to_string().contains("no longer kept warm"), "{e}");
    assert_eq!(dp.maps().active_color("u"), Some(Color::Green));
}

#[tokio::test]
async fn deployed_backends_win_over_the_file_across_reloads_and_restarts() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(UDP);
    let ctl = start(&cfg, &dp).await;
    let deployed = green("198.18.2.9:514");
    deploy_green(&ctl, "u", deployed.clone()).await;
    let green_backend = |dp: &FakeDatapath| dp.maps().service("u").expect("u").pools[1].clone();
    // The file still names 198.18.2.2 for green, and then another backend: the deployed one
    // stays, in the state and in the datapath.
    for file_green in ["198.18.2.2:514", "198.18.2.7:514"] {
        dir.config(&UDP.replace("198.18.2.2:514", file_green));
        ctl.reload("cli:t").await.expect("reload");
        assert_eq!(green_backend(&dp), deployed, "{file_green}");
        let s = ctl.status(Some("u")).await.expect("status");
        assert_eq!(
            s.services[0].green.backend.as_deref(),
            Some("198.18.2.9:514")
        );
    }
    ctl.shutdown(true).await.expect("shutdown");
    let ctl = start(&cfg, &dp).await;
    assert_eq!(green_backend(&dp), deployed, "after a restart too");
    ctl.shutdown(true).await.expect("shutdown");
}

#[tokio::test]
async fn abort_during_validation_stops_it_and_its_canary() {
    let TcpSetup {
        ctl,
        dp,
        candidate: cand,
        _dir,
        ..
    } = tcp_setup("[service.canary]\npercent = 20\nduration_ms = 30000").await;
    let d = deploy_green(&ctl, "t", vec![Member::new(cand)]).await;
    let p = ctl.promote("t", "cli:t", None).await.expect("validating");
    assert!(matches!(
        p,
        Promotion::Started {
            phase: Phase::Validating,
            ..
        }
    ));
    let share = || dp.maps().service("t").expect("t").canary_share;
    for _ in 0..200 {
        if share() != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_ne!(share(), 0, "the canary runs");
    let aborted = ctl.abort("t", "cli:t").await.expect("abort");
    assert_eq!(aborted.phase, Phase::Aborted);
    assert_eq!(share(), 0, "the canary ended with it");
    // The validation task is gone: nothing happens to the deployment afterwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(phase_of(&ctl, "t", d.id).await, Some(Phase::Aborted));
    assert_eq!(dp.maps().active_color("t"), Some(Color::Blue));
    let e = ctl
        .rollback("t", "cli:t")
        .await
        .expect_err("nothing to roll back");
    assert!(e.to_string().contains("no deployment to roll back"), "{e}");
}

#[tokio::test]
async fn promoting_a_validated_deployment_flips_at_once() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(UDP);
    // A deployment that passed validation but was never flipped (its daemon stopped right
    // after the verdict): ready, in the saved state.
    let ctl = start(&cfg, &dp).await;
    let d = deploy_green(&ctl, "u", green("198.18.2.9:514")).await;
    ctl.shutdown(true).await.expect("shutdown");
    let mut state = State::load(&dir.0).expect("state");
    let st = state.services.get_mut("u").expect("u");
    let cur = st.current.as_mut().expect("deployment");
    for step in [Step::StartValidation, Step::ValidationPassed] {
        cur.apply(step, AUTO, "test", None, 1).expect("step");
    }
    st.green.trusted = true;
    state.save(&dir.0).expect("save");

    let ctl = start(&cfg, &dp).await;
    assert_eq!(phase_of(&ctl, "u", d.id).await, Some(Phase::Ready));
    let p = ctl.promote("u", "cli:t", None).await.expect("promote");
    match p {
        Promotion::Started { deployment, phase } => {
            assert_eq!((deployment, phase), (d.id, Phase::Promoted))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dp.maps().active_color("u"), Some(Color::Green));
    // Flipped without validating again, and watched to the end of its window.
    until_phase(&ctl, "u", d.id, Phase::Stable).await;
    let h = ctl.history("u").await.expect("history");
    let validations = h[0]
        .transitions
        .iter()
        .filter(|t| t.to == Phase::Validating)
        .count();
    assert_eq!(validations, 1);
}

/// Issue 11: a reload or a deploy whose map writes fail midway applies nothing: the datapath
/// is written back to what it was, and the state does not change.
#[tokio::test]
async fn a_failed_map_write_applies_nothing() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let two = format!(
        "{UDP}{}",
        UDP.replace("name = \"u\"", "name = \"v\"")
            .replace("198.18.10.10", "198.18.10.12")
            .replace("198.18.1.2", "198.18.1.5")
            .replace("198.18.2.2", "198.18.2.5")
    );
    let ctl = start(&dir.config(&two), &dp).await;
    let before = |dp: &FakeDatapath| {
        let m = dp.maps();
        let mut v: Vec<(String, Vec<Member>, Vec<Member>)> = m
            .services
            .values()
            .map(|s| (s.name.clone(), s.pools[0].clone(), s.pools[1].clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let programmed = before(&dp);
    // The new file grows both blue pools; the second service's write fails.
    dir.config(
        &two.replace(
            "blue = { backend = \"198.18.1.2:514\" }",
            "blue = { backends = [\"198.18.1.2:514\", \"198.18.1.3:514\"] }",
        )
        .replace(
            "blue = { backend = \"198.18.1.5:514\" }",
            "blue = { backends = [\"198.18.1.5:514\", \"198.18.1.6:514\"] }",
        ),
    );
    dp.maps().fail_apply_after = Some(1);
    let e = ctl.reload("cli:t").await.expect_err("the write fails");
    assert!(format!("{e:#}").contains("nothing applied"), "{e:#}");
    assert_eq!(before(&dp), programmed, "the datapath is as it was");
    let s = ctl.status(None).await.expect("status");
    assert!(
        s.services.iter().all(|v| v.blue.members.len() == 1),
        "the state too"
    );
    // A deploy whose write fails records no deployment.
    dp.maps().fail_apply_after = Some(0);
    ctl.deploy("u", Color::Green, green("198.18.2.9:514"), None, false, "t")
        .await
        .expect_err("the write fails");
    assert_eq!(before(&dp), programmed);
    assert!(ctl.history("u").await.expect("history").is_empty());
    let s = ctl.status(Some("u")).await.expect("status");
    assert_eq!(
        s.services[0].green.backend.as_deref(),
        Some("198.18.2.2:514")
    );
    // The same reload, once the datapath takes it, applies whole.
    ctl.reload("cli:t").await.expect("reload");
    assert!(before(&dp).iter().all(|(_, blue, _)| blue.len() == 2));
    ctl.shutdown(true).await.expect("shutdown");
}

/// `flows`: the established table's entries of a service (or all), oldest first, named by
/// service, colour, client and member, counted in full and cut at the limit.
#[tokio::test]
async fn flows_lists_pinned_connections_oldest_first_within_the_limit() {
    use switcher_common::{Backend, FlowKey, FlowValue, FAMILY_V4, FLOW_CLOSING, FLOW_OPEN};
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let ctl = start(&dir.config(UDP), &dp).await;
    let id = dp.maps().id("u").expect("id");
    let now = crate::datapath::monotonic_coarse_ns().expect("clock");
    let entry = |sport: u16, age_s: u64, service_id: u32, state: u8| {
        let mut k = FlowKey {
            sport_be: sport.to_be(),
            dport_be: 514u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
            ..FlowKey::default()
        };
        k.src[..4].copy_from_slice(&[198, 18, 0, 1]);
        let mut b = Backend {
            port_be: 514u16.to_be(),
            family: FAMILY_V4,
            valid: 1,
            ..Backend::default()
        };
        b.addr[..4].copy_from_slice(&[198, 18, 1, 2]);
        let v = FlowValue {
            service_id,
            color: 0,
            state,
            created_ns: now - age_s * 1_000_000_000,
            last_seen_ns: now - 1_000_000_000,
            backend: b,
            ..FlowValue::default()
        };
        (k, v)
    };
    dp.maps().flow_entries = vec![
        entry(40001, 10, id, FLOW_OPEN),
        entry(40002, 300, id, FLOW_CLOSING),
        entry(40003, 50, id, FLOW_OPEN),
        entry(40004, 999, id + 100, FLOW_OPEN), // a removed service's: not listed
    ];
    let all = ctl.flows(None, None).await.expect("flows");
    assert_eq!((all.total, all.truncated), (3, false));
    let ports: Vec<u16> = all.flows.iter().map(|f| f.client.port()).collect();
    assert_eq!(ports, [40002, 40003, 40001], "oldest first");
    let f = &all.flows[0];
    assert_eq!(
        (f.service.as_str(), f.color, f.state.as_str()),
        ("u", Color::Blue, "closing")
    );
    assert_eq!(f.member, "198.18.1.2:514".parse().expect("addr"));
    assert!((299.0..302.0).contains(&f.age_seconds), "{}", f.age_seconds);
    let cut = ctl.flows(Some("u"), Some(2)).await.expect("flows");
    assert_eq!((cut.total, cut.flows.len(), cut.truncated), (3, 2, true));
    assert!(ctl.flows(Some("nope"), None).await.is_err());
    assert!(ctl.flows(None, Some(0)).await.is_err());
}
