//! Pools: a colour is an environment of several members. Deploys take a pool whole,
//! validation needs every member healthy, the watch judges the environment's healthy share,
//! the health monitor takes dead members out of the table and puts them back, and a pool
//! changed in the config applies on reload unless a deploy owns the slot.

use super::*;

fn pool(addrs: &[SocketAddr]) -> Vec<Member> {
    addrs.iter().copied().map(Member::new).collect()
}

#[tokio::test]
async fn a_pool_is_deployed_whole_and_checked_first() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let ctl = start(&dir.config(UDP), &dp).await;
    let members = pool(&[
        "198.18.2.7:514".parse().expect("addr"),
        "198.18.2.8:514".parse().expect("addr"),
        "198.18.2.9:514".parse().expect("addr"),
    ]);
    let refused = |r: Result<Deployment>, why: &str| {
        let e = r.expect_err(why).to_string();
        assert!(e.contains(why), "{e}");
    };
    let mut twice = members.clone();
    twice.push(members[0]);
    refused(
        ctl.deploy("u", Color::Green, twice, None, false, "t").await,
        "listed twice",
    );
    refused(
        ctl.deploy("u", Color::Green, Vec::new(), None, false, "t")
            .await,
        "at least one member",
    );
    let mut mixed = members.clone();
    mixed.push(Member::new("[2001:2::9]:514".parse().expect("addr")));
    refused(
        ctl.deploy("u", Color::Green, mixed, None, false, "t").await,
        "address family",
    );
    // A member of blue's pool is blue's: fine for the same service, refused nowhere else.
    let d = ctl
        .deploy(
            "u",
            Color::Green,
            members.clone(),
            Some("v2".into()),
            false,
            "t",
        )
        .await
        .expect("deploy");
    assert_eq!(d.members, members);
    assert_eq!(dp.maps().service("u").expect("u").pools[1], members);
    let s = ctl.status(Some("u")).await.expect("status");
    let green = &s.services[0].green;
    assert_eq!(
        green.backend.as_deref(),
        Some("198.18.2.7:514, 198.18.2.8:514, 198.18.2.9:514")
    );
    assert_eq!(green.members.len(), 3);
    assert!(green
        .members
        .iter()
        .all(|m| (m.share - 1.0 / 3.0).abs() < 1e-9));
    ctl.shutdown(true).await.expect("shutdown");
}

#[tokio::test]
async fn validation_needs_every_member_healthy() {
    let TcpSetup {
        ctl,
        candidate,
        green: _green,
        _dir,
        ..
    } = tcp_setup("").await;
    let refusing = RefusingPort::bind().expect("bind");
    let gone = refusing.addr;
    let d = deploy_green(&ctl, "t", pool(&[candidate, gone])).await;
    let e = ctl
        .promote("t", "cli:t", Some(Duration::from_secs(20)))
        .await
        .expect_err("one dead member fails the validation");
    let e = format!("{e:#}");
    assert!(e.contains(&format!("health {gone}")), "{e}");
    assert!(!e.contains(&format!("health {candidate}")), "{e}");
    assert_eq!(phase_of(&ctl, "t", d.id).await, Some(Phase::Rejected));
    ctl.shutdown(true).await.expect("shutdown");
}

/// A green pool of three (the candidate and two more servers) deployed and promoted under
/// `watch`; returns the setup, the deployment and the two other members' servers.
async fn promoted_pool_of_three(
    watch: &str,
) -> (TcpSetup, Deployment, [tokio::task::JoinHandle<()>; 2]) {
    let setup = tcp_setup(watch).await;
    let (l2, second) = listener().await;
    let (l3, third) = listener().await;
    let servers = [serve(l2), serve(l3)];
    let ctl = &setup.ctl;
    let d = deploy_green(ctl, "t", pool(&[setup.candidate, second, third])).await;
    ctl.promote("t", "cli:t", Some(Duration::from_secs(20)))
        .await
        .expect("promoted");
    (setup, d, servers)
}

#[tokio::test]
async fn the_watch_rolls_back_when_too_few_members_are_healthy() {
    // Two of three members healthy (67% >= 50%): the watch passes.
    let (setup, d, [_second, third]) =
        promoted_pool_of_three("[service.watch]\nwindow_ms = 400\ninterval_ms = 50\nfailures = 2")
            .await;
    third.abort();
    let _ = third.await;
    until_phase(&setup.ctl, "t", d.id, Phase::Stable).await;

    // One of three (33% < 50%): rolled back.
    let (setup, d, servers) =
        promoted_pool_of_three("[service.watch]\nwindow_ms = 5000\ninterval_ms = 50\nfailures = 2")
            .await;
    for t in servers {
        t.abort();
        let _ = t.await;
    }
    let ctl = &setup.ctl;
    until_phase(ctl, "t", d.id, Phase::RolledBack).await;
    let h = ctl.history("t").await.expect("history");
    let last = h
        .iter()
        .find(|x| x.id == d.id)
        .and_then(|x| x.last())
        .map(|t| t.reason.clone())
        .unwrap_or_default();
    assert!(last.contains("1 of 3 members healthy"), "{last}");
    ctl.shutdown(true).await.expect("shutdown");
}

#[tokio::test]
async fn the_monitor_takes_a_dead_member_out_and_puts_it_back() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let (l1, live) = listener().await;
    let _live = serve(l1);
    let refusing = RefusingPort::bind().expect("bind");
    let gone = refusing.addr;
    let text = tcp(live, "").replace(
        &format!("blue = {{ backend = \"{live}\" }}"),
        &format!("blue = {{ backends = [\"{live}\", \"{gone}\"] }}"),
    );
    let ctl = start(&dir.config(&text), &dp).await;
    let mut events = ctl.subscribe();
    ctl.start_health_monitor(Duration::from_millis(30));
    let id = dp.maps().id("t").expect("id");
    let wait = |want: bool| {
        let dp = dp.clone();
        async move {
            for _ in 0..200 {
                if dp.maps().down.contains(&(id, Color::Blue, gone)) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!(
                "member {gone} never became {}",
                if want { "down" } else { "up" }
            );
        }
    };
    wait(true).await;
    let s = ctl.status(Some("t")).await.expect("status");
    let m = &s.services[0].blue.members;
    let dead_view = m.iter().find(|m| m.addr == gone).expect("listed");
    assert_eq!(dead_view.share, 0.0, "no new flows");
    assert!(dead_view
        .health
        .as_ref()
        .is_some_and(|h| !h.up && !h.in_service));
    assert!(m.iter().any(|m| m.addr == live && m.share == 1.0));
    let mut saw = false;
    while let Ok(ev) = events.try_recv() {
        saw |= ev.kind == "member" && ev.message.contains(&gone.to_string());
    }
    assert!(saw, "an event says the member left");
    // It answers again: back in the table after two good probes.
    let back = refusing.listen().await.expect("rebind");
    let _back = serve(back);
    wait(false).await;
    ctl.shutdown(true).await.expect("shutdown");
}

#[tokio::test]
async fn a_config_pool_change_applies_on_reload_unless_a_deploy_owns_the_slot() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(UDP);
    let ctl = start(&cfg, &dp).await;
    let pool_of = |dp: &FakeDatapath, c: usize| dp.maps().service("u").expect("u").pools[c].clone();
    // A node added to blue's pool in the file: applied by the reload.
    let grown = UDP.replace(
        "blue = { backend = \"198.18.1.2:514\" }",
        "blue = { backends = [\"198.18.1.2:514\", \"198.18.1.3:514\"] }",
    );
    dir.config(&grown);
    ctl.reload("cli:t").await.expect("reload");
    assert_eq!(pool_of(&dp, 0).len(), 2, "blue grew");
    // A deploy owns green's slot: the file's green pool does not replace it ...
    let deployed = green("198.18.2.9:514");
    ctl.deploy("u", Color::Green, deployed.clone(), None, false, "t")
        .await
        .expect("deploy");
    ctl.reload("cli:t").await.expect("reload");
    assert_eq!(pool_of(&dp, 1), deployed);
    // ... until the file names the deployed pool; from then on the file rules the slot.
    let caught_up = grown.replace("198.18.2.2:514", "198.18.2.9:514");
    dir.config(&caught_up);
    ctl.reload("cli:t").await.expect("reload");
    assert_eq!(pool_of(&dp, 1), deployed);
    let grown_green = caught_up.replace(
        "green = { backend = \"198.18.2.9:514\" }",
        "green = { backends = [\"198.18.2.9:514\", \"198.18.2.10:514\"] }",
    );
    dir.config(&grown_green);
    ctl.reload("cli:t").await.expect("reload");
    assert_eq!(pool_of(&dp, 1).len(), 2, "green grew from the file");
    ctl.shutdown(true).await.expect("shutdown");
}
