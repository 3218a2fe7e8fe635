//! The controller's operations, its tasks and its restart against an in-memory datapath: no
//! root, no network namespace. Backends are local TCP listeners where a check must reach them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::net::TcpListener;

use super::*;
use crate::{datapath::fake::FakeDatapath, deploy::Phase};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A state folder and config file of its own, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!(
            "switcher-ctl-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Self(d)
    }

    fn config(&self, services: &str) -> PathBuf {
        let path = self.0.join("switcher.toml");
        let text = format!(
            "[daemon]\ninterfaces = [\"lo\"]\nstate_dir = \"{}\"\nsocket = \"{}\"\n\n[http]\nenabled = false\n\n{services}",
            self.0.display(),
            self.0.join("sock").display()
        );
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(cfg_path: &Path, dp: &FakeDatapath) -> Controller {
    let cfg = Config::load(cfg_path).expect("config");
    Controller::start(cfg, cfg_path.to_path_buf(), Box::new(dp.clone()))
        .await
        .expect("start")
}

const UDP: &str = r#"
[[service]]
name = "u"
vip = "198.18.10.10"
port = 514
protocol = "udp"
blue = { backend = "198.18.1.2:514" }
green = { backend = "198.18.2.2:514" }
[service.watch]
window_ms = 300
interval_ms = 50
"#;

/// A TCP service whose blue backend is `blue` and whose checks run fast.
fn tcp(blue: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "t"
vip = "198.18.10.11"
port = 601
protocol = "tcp"
blue = {{ backend = "{blue}" }}
[service.health]
interval_ms = 20
deadline_ms = 2000
timeout_ms = 500
{extra}
"#
    )
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// Accepts and drops connections until the task is aborted.
fn serve(l: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    })
}

/// A TCP service whose blue backend and green candidate are live local listeners. Keep
/// `_dir` bound while the controller runs: dropping it removes the state folder.
struct TcpSetup {
    ctl: Controller,
    dp: FakeDatapath,
    candidate: SocketAddr,
    /// Aborting it kills the candidate.
    green: tokio::task::JoinHandle<()>,
    _blue: tokio::task::JoinHandle<()>,
    _dir: Dir,
}

async fn tcp_setup(extra: &str) -> TcpSetup {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let (bl, blue) = listener().await;
    let (gl, candidate) = listener().await;
    let cfg = dir.config(&tcp(blue, extra));
    TcpSetup {
        ctl: start(&cfg, &dp).await,
        dp,
        candidate,
        green: serve(gl),
        _blue: serve(bl),
        _dir: dir,
    }
}

async fn phase_of(ctl: &Controller, service: &str, id: u64) -> Option<Phase> {
    ctl.history(service)
        .await
        .ok()?
        .into_iter()
        .find(|d| d.id == id)
        .map(|d| d.phase)
}

/// Polls until deployment `id` reaches `want` (the watch and validation run as tasks).
async fn until_phase(ctl: &Controller, service: &str, id: u64, want: Phase) {
    for _ in 0..200 {
        if phase_of(ctl, service, id).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "deployment {id} of {service} is {:?}, not {want}",
        phase_of(ctl, service, id).await
    );
}

fn green(a: &str) -> SocketAddr {
    a.parse().expect("addr")
}

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
    let slot = dp.maps().service("u").expect("u").backends[1];
    assert_eq!(
        slot,
        Some(green("198.18.2.9:514")),
        "the idle slot is programmed"
    );

    let now = Instant::now();
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
async fn promote_validates_flips_and_watches_a_healthy_candidate() {
    let TcpSetup {
        ctl,
        dp,
        candidate: cand,
        _dir,
        ..
    } = tcp_setup("[service.watch]\nwindow_ms = 300\ninterval_ms = 50").await;
    let d = ctl
        .deploy("t", Color::Green, cand, None, false, "cli:t")
        .await
        .expect("deploy");
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
    // A port that refuses connections: bound, then closed.
    let dead = listener().await.1;
    let ctl = start(&dir.config(&tcp(blue, "")), &dp).await;
    let d = ctl
        .deploy("t", Color::Green, dead, None, false, "cli:t")
        .await
        .expect("deploy");
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
    let d = ctl
        .deploy("t", Color::Green, cand, None, false, "cli:t")
        .await
        .expect("deploy");
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
    ctl.deploy("t", Color::Green, cand, None, false, "cli:t")
        .await
        .expect("deploy");
    let e = ctl
        .promote("t", "cli:t", Some(Duration::from_secs(10)))
        .await
        .expect_err("no canary traffic in the fake");
    assert!(
        e.to_string()
            .contains("canary: no traffic reached the candidate"),
        "{e}"
    );
    assert_eq!(dp.maps().service("t").expect("t").canary_share, 0);
    assert_eq!(dp.maps().active_color("t"), Some(Color::Blue));
}

#[tokio::test]
async fn a_restart_reconciles_with_the_maps_and_resumes_or_closes_deployments() {
    let dir = Dir::new();
    let dp = FakeDatapath::default();
    let cfg = dir.config(&UDP.replace("window_ms = 300", "window_ms = 60000"));
    let ctl = start(&cfg, &dp).await;
    let d = ctl
        .deploy(
            "u",
            Color::Green,
            green("198.18.2.9:514"),
            None,
            false,
            "cli:t",
        )
        .await
        .expect("deploy");
    ctl.flip(
        "u",
        Color::Green,
        true,
        Some("test".into()),
        "cli:t",
        Instant::now(),
    )
    .await
    .expect("flip");
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
