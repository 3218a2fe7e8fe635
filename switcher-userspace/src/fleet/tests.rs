//! Fleet mode against a real etcd (on loopback, started per test), with hosts that are real
//! controllers over the in-memory datapath: convergence, acknowledgements, refusals,
//! conflicting writers, fail static, partition and rejoin, compaction.

mod etcd_proc;
mod proxy;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use self::{etcd_proc::EtcdProc, proxy::Proxy};
use super::*;
use super::{definitions, model::FleetPhase};
use crate::{config::Config, datapath::fake::FakeDatapath, deploy::Phase, domain::Color};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One edge host: a controller over the in-memory datapath, and its fleet agent.
struct Host {
    dir: PathBuf,
    ctl: Controller,
    fleet: Fleet,
    agent: tokio::task::JoinHandle<()>,
    maps: FakeDatapath,
    /// Set by a restart: the next incarnation keeps the folder.
    keep_dir: bool,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.agent.abort();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const GREEN_A: &str = "198.18.2.2:514";
const GREEN_B: &str = "198.18.2.3:514";

impl Host {
    /// Host `name` of `cluster`, reaching etcd on `port`; its green pool is `green`.
    async fn start(cluster: &str, name: &str, port: u16, green: &str) -> Host {
        Host::start_with(cluster, name, port, green, "").await
    }

    /// [`Host::start`] with `extra` appended to the service (its sub-tables).
    async fn start_with(cluster: &str, name: &str, port: u16, green: &str, extra: &str) -> Host {
        let dir = std::env::temp_dir().join(format!(
            "switcher-fleet-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("host dir");
        let path = dir.join("switcher.toml");
        let text = format!(
            "[daemon]\ninterfaces = [\"lo\"]\nstate_dir = \"{state}\"\nprobe_interval_ms = 0\n\
             [http]\nenabled = false\n\
             [fleet]\nendpoints = [\"http://127.0.0.1:{port}\"]\ncluster = \"{cluster}\"\n\
             host_id = \"{name}\"\nlease_ttl_s = 3\nack_deadline_ms = 5000\nconnect_timeout_ms = 2000\n\
             [[service]]\nname = \"syslog\"\nvip = \"198.18.10.1\"\nport = 514\nprotocol = \"udp\"\n\
             blue = {{ backend = \"198.18.1.2:514\" }}\ngreen = {{ backend = \"{green}\" }}\n{extra}",
            state = dir.join("state").display(),
        );
        std::fs::write(&path, text).expect("config");
        Host::launch(dir).await
    }

    /// A daemon on the host folder `dir` (its config and state), as `switcher daemon` starts.
    async fn launch(dir: PathBuf) -> Host {
        let path = dir.join("switcher.toml");
        let cfg = Config::load(&path).expect("valid config");
        let cfg = definitions::startup_config(&path, &dir.join("state"), cfg);
        let fleet_cfg = cfg.fleet.clone().expect("a [fleet] section");
        let maps = FakeDatapath::default();
        let ctl = Controller::start(cfg, path.clone(), Box::new(maps.clone()))
            .await
            .expect("controller");
        let (fleet, agent) = Fleet::start(fleet_cfg, path.clone(), dir.join("state"), ctl.clone());
        Host {
            dir,
            ctl,
            fleet,
            agent,
            maps,
            keep_dir: false,
        }
    }

    /// Stops this daemon (its agent leaves, its controller shuts down) and starts the next on
    /// the same folder: state, overlay and agent state carry over; the datapath is rebuilt.
    async fn restart(mut self) -> Host {
        self.agent.abort();
        self.fleet.leave().await;
        self.ctl.shutdown(false).await.expect("shutdown");
        self.keep_dir = true;
        let dir = self.dir.clone();
        drop(self);
        Host::launch(dir).await
    }

    /// The colour this host's datapath has (read back from its maps).
    async fn active(&self) -> Color {
        self.ctl
            .status(Some("syslog"))
            .await
            .expect("status")
            .services[0]
            .active
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes (then panics with `what`).
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many hosts `from` sees connected.
async fn connected(from: &Fleet) -> usize {
    from.status()
        .await
        .hosts
        .iter()
        .filter(|h| h.connected)
        .count()
}

/// Whether `from` sees `host` connected with a drift entry that `is` accepts.
async fn drifts(from: &Fleet, host: &str, is: impl Fn(&str) -> bool) -> bool {
    from.status()
        .await
        .hosts
        .iter()
        .any(|h| h.host == host && h.connected && h.drift.iter().any(|d| is(d)))
}

/// Until `from` sees `n` connected hosts and none in drift.
async fn in_sync(from: &Fleet, n: usize) -> Duration {
    until(
        Duration::from_secs(15),
        &format!("{n} hosts in sync"),
        || async {
            let s = from.status().await;
            s.connected && s.hosts.iter().filter(|h| h.connected).count() == n && s.in_drift == 0
        },
    )
    .await
}

fn cluster(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_seed_and_converge_and_every_host_acknowledges_a_fleet_flip_and_rollback() {
    let etcd = EtcdProc::start("converge").await;
    let c = cluster("converge");
    let mut hosts = Vec::new();
    for i in 0..3 {
        hosts.push(Host::start(&c, &format!("edge-{i}"), etcd.client_port, GREEN_A).await);
    }
    in_sync(&hosts[0].fleet, 3).await;

    let r = hosts[1]
        .fleet
        .flip("syslog", Color::Green, true, Some("test".into()), "cli:t")
        .await
        .expect("fleet flip");
    assert!(r.changed && r.rolled_back.is_none(), "{r:?}");
    assert_eq!(r.hosts.len(), 3, "{r:?}");
    for h in &r.hosts {
        assert_eq!(
            (h.result.as_str(), h.active),
            ("applied", Some(Color::Green)),
            "{r:?}"
        );
    }
    for h in &hosts {
        assert_eq!(h.active().await, Color::Green, "every datapath flipped");
    }
    // Asked again: nothing to write.
    let again = hosts[2]
        .fleet
        .flip("syslog", Color::Green, true, Some("test".into()), "cli:t")
        .await
        .expect("flip again");
    assert!(!again.changed && again.revision == r.revision, "{again:?}");

    let back = hosts[2]
        .fleet
        .rollback("syslog", "cli:t")
        .await
        .expect("fleet rollback");
    assert_eq!((back.from, back.to), (Color::Green, Color::Blue));
    assert!(back.revision > r.revision);
    assert!(back.hosts.iter().all(|h| h.result == "applied"), "{back:?}");
    for h in &hosts {
        assert_eq!(h.active().await, Color::Blue);
    }
    let st = hosts[0].fleet.status().await;
    assert_eq!(st.in_drift, 0, "{st:?}");
    assert_eq!(st.desired["syslog"].revision, back.revision);
    assert!(st
        .hosts
        .iter()
        .all(|h| h.services["syslog"].report.applied_revision == back.revision));

    // The audit trail names who asked, on which host; any host reads it.
    let entries = hosts[0].fleet.history(Some("syslog")).await.expect("audit");
    assert!(
        entries.iter().any(|e| e.action == "flip"
            && e.host == "edge-1"
            && e.actor == "cli:t@edge-1"
            && e.to == Color::Green),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.action == "rollback" && e.host == "edge-2"),
        "{entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_running_another_service_config_refuses_and_the_whole_fleet_stays_on_the_old_colour()
{
    let etcd = EtcdProc::start("nack").await;
    let c = cluster("nack");
    let a = Host::start(&c, "edge-a", etcd.client_port, GREEN_A).await;
    let b = Host::start(&c, "edge-b", etcd.client_port, GREEN_A).await;
    // Joins last: the desired state was seeded with the others' definition.
    let odd = Host::start(&c, "edge-odd", etcd.client_port, GREEN_B).await;
    until(Duration::from_secs(10), "three hosts report", || async {
        connected(&a.fleet).await == 3
    })
    .await;
    // Its file's definition differs: it runs the fleet's instead, and is in sync.
    in_sync(&a.fleet, 3).await;
    let green = odd.ctl.effective_services().await[0].green[0]
        .addr
        .to_string();
    assert_eq!(
        green, GREEN_A,
        "the fleet's definition wins over a stale file"
    );
    // A candidate deployed there by hand (not through the fleet) makes it differ for real.
    let hand = vec![crate::config::Member::new(
        "198.18.2.9:514".parse().expect("addr"),
    )];
    odd.ctl
        .deploy("syslog", Color::Green, hand, None, false, "cli:t")
        .await
        .expect("local deploy");
    until(Duration::from_secs(5), "its drift shows", || async {
        drifts(&a.fleet, "edge-odd", |d| d.contains("config")).await
    })
    .await;

    let err = a
        .fleet
        .flip("syslog", Color::Green, true, Some("test".into()), "cli:t")
        .await
        .expect_err("one host refuses");
    let msg = format!("{err:#}");
    assert!(msg.contains("edge-odd refused"), "{msg}");
    assert!(msg.contains("rolled back to blue"), "{msg}");
    assert!(msg.contains("differs from the one the fleet runs"), "{msg}");
    for h in [&a, &b, &odd] {
        assert_eq!(h.active().await, Color::Blue, "nobody is left on green");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_stale_revision_is_refused_and_concurrent_flips_write_once() {
    let etcd = EtcdProc::start("race").await;
    let c = cluster("race");
    let a = Host::start(&c, "edge-a", etcd.client_port, GREEN_A).await;
    let b = Host::start(&c, "edge-b", etcd.client_port, GREEN_A).await;
    in_sync(&a.fleet, 2).await;
    let read = a.fleet.status().await.desired["syslog"].revision;
    let won = b
        .fleet
        .flip("syslog", Color::Green, true, Some("first".into()), "cli:b")
        .await
        .expect("first writer");
    // A writer that read before that write must not overwrite it.
    let mut client = a.fleet.client().expect("connected");
    let stale = Desired {
        active: Color::Blue,
        config_hash: "x".into(),
        actor: "cli:a".into(),
        reason: "late".into(),
        at_ms: 1,
        deployment: None,
        definition: None,
    };
    let err = a
        .fleet
        .compare_and_write(
            &mut client,
            "syslog",
            read,
            &stale,
            Color::Blue,
            "flip",
            false,
        )
        .await
        .expect_err("stale revision");
    let msg = format!("{err:#}");
    assert!(msg.contains("changed while this request was made"), "{msg}");
    assert!(
        msg.contains(&format!("-> {}", won.revision)) && msg.contains("cli:b@edge-b"),
        "{msg}"
    );
    assert_eq!(
        a.fleet.status().await.desired["syslog"].revision,
        won.revision,
        "nothing written"
    );

    // Two operators at once, on two hosts: one write, never two.
    for round in 0..5 {
        let to = if round % 2 == 0 {
            Color::Blue
        } else {
            Color::Green
        };
        let (x, y) = tokio::join!(
            a.fleet.flip("syslog", to, true, Some("x".into()), "cli:x"),
            b.fleet.flip("syslog", to, true, Some("y".into()), "cli:y"),
        );
        let changed = [&x, &y]
            .iter()
            .filter(|r| matches!(r, Ok(f) if f.changed))
            .count();
        assert_eq!(changed, 1, "round {round}: {x:?} / {y:?}");
        for r in [&x, &y] {
            if let Err(e) = r {
                assert!(
                    format!("{e:#}").contains("changed while this request was made"),
                    "{e:#}"
                );
            }
        }
        assert_eq!(a.active().await, to);
        assert_eq!(b.active().await, to);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_hosts_fail_static_refuse_fleet_changes_and_converge_when_it_returns() {
    let mut etcd = EtcdProc::start("static").await;
    let c = cluster("static");
    let a = Host::start(&c, "edge-a", etcd.client_port, GREEN_A).await;
    let b = Host::start(&c, "edge-b", etcd.client_port, GREEN_A).await;
    in_sync(&a.fleet, 2).await;
    a.fleet
        .flip("syslog", Color::Green, true, Some("t".into()), "cli:t")
        .await
        .expect("flip");
    etcd.stop();
    until(
        Duration::from_secs(10),
        "both hosts see etcd gone",
        || async { !a.fleet.membership().connected && !b.fleet.membership().connected },
    )
    .await;
    // Serving goes on as last applied; nothing flips on stale data.
    assert_eq!(
        (a.active().await, b.active().await),
        (Color::Green, Color::Green)
    );
    let err = a
        .fleet
        .flip("syslog", Color::Blue, true, Some("t".into()), "cli:t")
        .await
        .expect_err("no fleet write without etcd");
    assert!(
        format!("{err:#}").contains("disconnected from etcd"),
        "{err:#}"
    );
    let st = a.fleet.status().await;
    assert!(!st.connected && st.error.is_some(), "{st:?}");
    // The emergency override: this host only, with a reason.
    let refused = route::flip(
        Some(&b.fleet),
        &b.ctl,
        "syslog",
        Color::Blue,
        false,
        None,
        true,
        "cli:t",
        crate::controller::Accepted::now(),
    )
    .await;
    assert!(
        format!("{:#}", refused.expect_err("needs force and reason"))
            .contains("--local --force --reason")
    );
    route::flip(
        Some(&b.fleet),
        &b.ctl,
        "syslog",
        Color::Blue,
        true,
        Some("etcd down, green broken here".into()),
        true,
        "cli:t",
        crate::controller::Accepted::now(),
    )
    .await
    .expect("local override");
    assert_eq!(b.active().await, Color::Blue);

    etcd.resume().await;
    until(Duration::from_secs(15), "both reconnect", || async {
        a.fleet.membership().connected && b.fleet.membership().connected
    })
    .await;
    // The override stays (the fleet has not agreed), shown as drift with its reason.
    let drift = until(
        Duration::from_secs(10),
        "the override shows as drift",
        || async {
            drifts(&a.fleet, "edge-b", |d| {
                d.contains("etcd down, green broken here")
            })
            .await
        },
    )
    .await;
    assert!(drift < Duration::from_secs(10));
    assert_eq!(b.active().await, Color::Blue);
    // Its audit entry was written once etcd was back.
    let entries = a.fleet.history(None).await.expect("audit");
    assert!(
        entries
            .iter()
            .any(|e| e.action == "local-override" && e.host == "edge-b" && e.to == Color::Blue),
        "the override is audited: {entries:?}"
    );
    // The fleet agrees again with the next revision: every host on it, drift gone.
    a.fleet
        .flip("syslog", Color::Blue, true, Some("agree".into()), "cli:t")
        .await
        .expect("flip to blue");
    in_sync(&a.fleet, 2).await;
    assert_eq!(
        (a.active().await, b.active().await),
        (Color::Blue, Color::Blue)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_host_is_excluded_and_converges_on_rejoin_even_after_a_compaction() {
    let etcd = EtcdProc::start("partition").await;
    let c = cluster("partition");
    let proxy = Proxy::start(etcd.client_port).await;
    let a = Host::start(&c, "edge-a", etcd.client_port, GREEN_A).await;
    let cut = Host::start(&c, "edge-cut", proxy.port, GREEN_A).await;
    in_sync(&a.fleet, 2).await;
    // A black hole, not a reset: only keep-alives can tell.
    proxy.stall();
    // HTTP/2 pings every 5 s, each answered within the 2 s request timeout or the link is down.
    let noticed = until(Duration::from_secs(20), "the cut host notices", || async {
        !cut.fleet.membership().connected
    })
    .await;
    until(Duration::from_secs(20), "its lease expires", || async {
        a.fleet
            .status()
            .await
            .hosts
            .iter()
            .any(|h| h.host == "edge-cut" && !h.connected)
    })
    .await;
    let r = a
        .fleet
        .flip("syslog", Color::Green, true, Some("t".into()), "cli:t")
        .await
        .expect("the connected hosts flip");
    assert_eq!(r.excluded, vec!["edge-cut".to_string()], "{r:?}");
    assert_eq!(r.hosts.len(), 1, "{r:?}");
    assert_eq!(cut.active().await, Color::Blue, "fail static while cut off");
    // History it missed is compacted away: the rejoin must not depend on it.
    for to in [Color::Blue, Color::Green, Color::Blue, Color::Green] {
        a.fleet
            .flip("syslog", to, true, Some("churn".into()), "cli:t")
            .await
            .expect("churn");
    }
    let mut client = etcd.client().await;
    let rev = client
        .get("x", None)
        .await
        .expect("rev")
        .header()
        .map_or(0, |h| h.revision());
    client
        .compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    proxy.heal();
    let rejoin = in_sync(&a.fleet, 2).await;
    assert_eq!(
        cut.active().await,
        Color::Green,
        "converged to the desired colour"
    );
    eprintln!("noticed the black hole in {noticed:?}; converged {rejoin:?} after healing");
    // Watches still work after the compaction: the next flip reaches both.
    let r = a
        .fleet
        .flip("syslog", Color::Blue, true, Some("after".into()), "cli:t")
        .await
        .expect("flip after compaction");
    assert!(
        r.hosts.iter().all(|h| h.result == "applied") && r.hosts.len() == 2,
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_fails_on_one_host_rolls_the_whole_fleet_back() {
    let etcd = EtcdProc::start("watch").await;
    let c = cluster("watch");
    // Any TCP reset the candidate sends during the watch fails it.
    let watch =
        "[service.watch]\nwindow_ms = 20000\ninterval_ms = 100\nfailures = 1\nmax_resets = 0\n";
    let mut hosts = Vec::new();
    for i in 0..3 {
        hosts.push(
            Host::start_with(&c, &format!("edge-{i}"), etcd.client_port, GREEN_A, watch).await,
        );
    }
    in_sync(&hosts[0].fleet, 3).await;
    // The same candidate deployed on every host (its definition, hence its hash, unchanged).
    let member = crate::config::Member::new(GREEN_A.parse().expect("addr"));
    for h in &hosts {
        h.ctl
            .deploy(
                "syslog",
                Color::Green,
                vec![member],
                Some("v2".into()),
                false,
                "cli:t",
            )
            .await
            .expect("deploy");
    }
    let r = hosts[0]
        .fleet
        .flip(
            "syslog",
            Color::Green,
            true,
            Some("promote v2".into()),
            "cli:t",
        )
        .await
        .expect("fleet flip");
    assert!(r.hosts.iter().all(|h| h.result == "applied"), "{r:?}");
    // Only edge-2's datapath sees the candidate reset connections.
    let bad = &hosts[2];
    let id = bad.maps.maps().id("syslog").expect("programmed");
    let rolled = until(
        Duration::from_secs(15),
        "the fleet follows edge-2's rollback",
        || async {
            bad.maps.maps().counters.entry(id).or_default()[Color::Green.index() as usize]
                .resets += 1;
            let s = hosts[0].fleet.status().await;
            let d = &s.desired["syslog"].desired;
            d.active == Color::Blue && s.in_drift == 0
        },
    )
    .await;
    let d = hosts[1].fleet.status().await.desired["syslog"]
        .desired
        .clone();
    assert!(d.reason.contains("automatic rollback on edge-2"), "{d:?}");
    assert_eq!(d.actor, "auto@edge-2");
    for h in &hosts {
        assert_eq!(
            h.active().await,
            Color::Blue,
            "no host left on the failed colour"
        );
    }
    eprintln!("fleet rolled back {rolled:?} after the resets began");
}

/// Validation: the health endpoint of [`Healthy`] (on loopback, the same for every host),
/// then a canary in which the candidate must see traffic and reset nothing.
fn checks(health_port: u16, canary_ms: u64) -> String {
    format!(
        "[service.health]\nhttp = \"http://127.0.0.1:{health_port}/health\"\nsuccesses = 1\n\
         interval_ms = 50\ndeadline_ms = 3000\n[service.canary]\npercent = 10\nduration_ms = {canary_ms}\n"
    )
}

/// An HTTP endpoint on loopback that answers every request with 200.
struct Healthy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Healthy {
    async fn start() -> Healthy {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        Healthy { port, task }
    }
}

impl Drop for Healthy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts traffic to green on every host's datapath (and resets on `resetting`), as the
/// canary's share of real flows would, until dropped.
struct Traffic(tokio::task::JoinHandle<()>);

impl Traffic {
    fn start(hosts: &[&Host], resetting: Option<&Host>) -> Traffic {
        let maps: Vec<FakeDatapath> = hosts.iter().map(|h| h.maps.clone()).collect();
        let bad = resetting.map(|h| h.maps.clone());
        Traffic(tokio::spawn(async move {
            loop {
                for m in &maps {
                    let mut g = m.maps();
                    if let Some(id) = g.id("syslog") {
                        g.counters.entry(id).or_default()[Color::Green.index() as usize].packets +=
                            10;
                    }
                }
                if let Some(m) = &bad {
                    let mut g = m.maps();
                    if let Some(id) = g.id("syslog") {
                        g.counters.entry(id).or_default()[Color::Green.index() as usize].resets +=
                            1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn fleet_of(tag: &str, n: usize, port: u16, extra: &str) -> Vec<Host> {
    let c = cluster(tag);
    let mut hosts = Vec::new();
    for i in 0..n {
        hosts.push(Host::start_with(&c, &format!("edge-{i}"), port, GREEN_A, extra).await);
    }
    in_sync(&hosts[0].fleet, n).await;
    hosts
}

fn green_b() -> Vec<crate::config::Member> {
    vec![crate::config::Member::new(GREEN_B.parse().expect("addr"))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_promote_validates_on_every_host_and_flips_only_when_all_passed() {
    let etcd = EtcdProc::start("promote").await;
    let health = Healthy::start().await;
    let hosts = fleet_of("promote", 3, etcd.client_port, &checks(health.port, 300)).await;
    let all: Vec<&Host> = hosts.iter().collect();
    let _traffic = Traffic::start(&all, None);
    let d = hosts[0]
        .fleet
        .deploy(
            "syslog",
            Color::Green,
            green_b(),
            Some("v2".into()),
            false,
            "cli:t",
        )
        .await
        .expect("fleet deploy");
    assert!(
        d.hosts.iter().all(|h| h.result == "applied") && d.hosts.len() == 3,
        "{d:?}"
    );
    for h in &hosts {
        let s = h.ctl.status(Some("syslog")).await.expect("status");
        let dep = s.services[0].deployment.as_ref().expect("deployed here");
        assert_eq!(
            (dep.phase, dep.backend.as_str()),
            (Phase::Deployed, GREEN_B)
        );
        assert_eq!(
            s.services[0].active,
            Color::Blue,
            "a deploy moves no traffic"
        );
    }
    let r = hosts[1]
        .fleet
        .promote("syslog", "cli:t")
        .await
        .expect("fleet promote");
    assert_eq!((r.from, r.to), (Color::Blue, Color::Green));
    assert!(
        r.hosts.iter().all(|h| h.result == "applied") && r.hosts.len() == 3,
        "{r:?}"
    );
    for h in &hosts {
        let s = h.ctl.status(Some("syslog")).await.expect("status");
        assert_eq!(s.services[0].active, Color::Green);
        let dep = s.services[0].deployment.as_ref().expect("deployment");
        assert_eq!(
            dep.phase,
            Phase::Promoted,
            "validated here, flipped as validated: {dep:?}"
        );
    }
    let st = hosts[2].fleet.status().await;
    let want = &st.desired["syslog"].desired;
    assert_eq!(
        want.deployment.as_ref().map(|d| d.phase),
        Some(FleetPhase::Promoted)
    );
    assert_eq!(st.in_drift, 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_failing_on_one_host_flips_nobody_and_names_the_host() {
    let etcd = EtcdProc::start("reject").await;
    let health = Healthy::start().await;
    let hosts = fleet_of("reject", 3, etcd.client_port, &checks(health.port, 300)).await;
    let all: Vec<&Host> = hosts.iter().collect();
    let _traffic = Traffic::start(&all, Some(&hosts[2]));
    hosts[0]
        .fleet
        .deploy("syslog", Color::Green, green_b(), None, false, "cli:t")
        .await
        .expect("fleet deploy");
    let e = hosts[0]
        .fleet
        .promote("syslog", "cli:t")
        .await
        .expect_err("rejected");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("failed on 1 host(s): edge-2") && msg.contains("reset"),
        "{msg}"
    );
    for h in &hosts {
        let s = h.ctl.status(Some("syslog")).await.expect("status");
        assert_eq!(s.services[0].active, Color::Blue, "nobody flipped");
    }
    // The hosts that passed let go of their ready candidate.
    until(
        Duration::from_secs(5),
        "every local deployment ended",
        || async {
            let mut ended = true;
            for h in &hosts {
                let s = h.ctl.status(Some("syslog")).await.expect("status");
                ended &= s.services[0]
                    .deployment
                    .as_ref()
                    .is_none_or(|d| d.phase.is_final());
            }
            ended
        },
    )
    .await;
    let st = hosts[1].fleet.status().await;
    let dep = st.desired["syslog"]
        .desired
        .deployment
        .clone()
        .expect("deployment");
    assert_eq!(dep.phase, FleetPhase::Rejected);
    assert!(dep.reason.contains("edge-2"), "{dep:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_driver_dies_another_host_finishes_the_deployment_and_one_promote_wins() {
    let etcd = EtcdProc::start("driver").await;
    let health = Healthy::start().await;
    let mut hosts = fleet_of("driver", 3, etcd.client_port, &checks(health.port, 2500)).await;
    let all: Vec<&Host> = hosts.iter().collect();
    let _traffic = Traffic::start(&all, None);
    hosts[0]
        .fleet
        .deploy("syslog", Color::Green, green_b(), None, false, "cli:t")
        .await
        .expect("fleet deploy");
    // Two operators promote at once: one drives, the other is told who does.
    let (a, b) = (hosts[0].fleet.clone(), hosts[1].fleet.clone());
    let first = tokio::spawn(async move { a.promote("syslog", "cli:a").await });
    let second = tokio::spawn(async move { b.promote("syslog", "cli:b").await });
    until(Duration::from_secs(5), "validation under way", || async {
        let s = hosts[2].fleet.status().await;
        s.desired["syslog"]
            .desired
            .deployment
            .as_ref()
            .map(|d| d.phase)
            == Some(FleetPhase::Validating)
    })
    .await;
    // Whichever drives dies with its daemon (its agent and the request): its lease runs out.
    let mut client = etcd.client().await;
    let key = Keys::new(&cluster("driver")).driver("syslog");
    until(Duration::from_secs(5), "a driver key", || async {
        let mut c = etcd.client().await;
        c.get(key.clone(), None)
            .await
            .is_ok_and(|r| !r.kvs().is_empty())
    })
    .await;
    let driver = client.get(key.clone(), None).await.expect("driver").kvs()[0]
        .value_str()
        .expect("utf8")
        .to_string();
    let (dead, driving, loser) = if driver == "edge-0" {
        (0, first, second)
    } else {
        (1, second, first)
    };
    driving.abort();
    let refused = loser
        .await
        .expect("join")
        .expect_err("one promote is refused");
    let msg = format!("{refused:#}");
    assert!(
        msg.contains(&format!("already driven by {driver}"))
            || msg.contains("no fleet deployment waiting"),
        "{msg}"
    );
    let gone = hosts.remove(dead);
    drop(gone);
    // A survivor takes over and finishes: every live host validated, the fleet flips.
    let survivors: Vec<&Host> = hosts.iter().collect();
    let took = until(
        Duration::from_secs(30),
        "the deployment finished by another driver",
        || async {
            let s = survivors[0].fleet.status().await;
            let d = &s.desired["syslog"].desired;
            d.active == Color::Green
                && d.deployment.as_ref().map(|d| d.phase) == Some(FleetPhase::Promoted)
        },
    )
    .await;
    for h in &survivors {
        until(Duration::from_secs(5), "survivor on green", || async {
            h.active().await == Color::Green
        })
        .await;
    }
    eprintln!("taken over and finished {took:?} after the driver died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_reloaded_on_one_host_runs_on_every_host_or_is_refused_where_it_does_not_fit()
{
    let etcd = EtcdProc::start("define").await;
    let c = cluster("define");
    let a = Host::start(&c, "edge-a", etcd.client_port, GREEN_A).await;
    let b = Host::start(&c, "edge-b", etcd.client_port, GREEN_A).await;
    // edge-c also describes a service the others do not: the fleet's services are every
    // host's, so it runs on all of them.
    let other = "\n[[service]]\nname = \"other\"\nvip = \"198.18.10.2\"\nport = 514\n\
                 protocol = \"udp\"\nblue = { backend = \"198.18.1.9:514\" }\n";
    let cc = Host::start_with(&c, "edge-c", etcd.client_port, GREEN_A, other).await;
    in_sync(&a.fleet, 3).await;
    // In sync as edge-a sees it, which may be before its watch brought edge-c's service.
    for h in [&a, &b] {
        until(
            Duration::from_secs(15),
            "the fleet's services run everywhere",
            || async {
                let names: Vec<String> = h
                    .ctl
                    .effective_services()
                    .await
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                names == ["syslog", "other"]
            },
        )
        .await;
    }
    in_sync(&a.fleet, 3).await;
    let green = |h: &Host| {
        let h = h.ctl.clone();
        async move {
            h.effective_services()
                .await
                .into_iter()
                .find(|s| s.name == "syslog")
                .map(|s| s.green[0].addr.to_string())
        }
    };

    // Edited on edge-a and reloaded there: the whole fleet runs it.
    let path = a.dir.join("switcher.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, text.replace(GREEN_A, GREEN_B)).expect("edit");
    let r = a.fleet.reload("cli:t").await.expect("reload");
    let published = &r["published"]["syslog"];
    assert_eq!(published["hosts"].as_array().map(Vec::len), Some(3), "{r}");
    for h in [&a, &b, &cc] {
        assert_eq!(green(h).await.as_deref(), Some(GREEN_B));
    }
    in_sync(&a.fleet, 3).await;
    // edge-b's file still has the old definition: an edit made on that stale base is refused
    // (it would undo edge-a's change), and nothing changes anywhere.
    let b_file = b.dir.join("switcher.toml");
    let text = std::fs::read_to_string(&b_file).expect("config");
    std::fs::write(&b_file, text.replace("port = 514", "port = 515")).expect("edit");
    let r = b.fleet.reload("cli:t").await.expect("reload");
    let err = r["published"]["syslog"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("changed since this host's file was read"),
        "{r}"
    );
    for h in [&a, &b, &cc] {
        assert_eq!(green(h).await.as_deref(), Some(GREEN_B), "nothing changed");
    }
    std::fs::write(&b_file, text).expect("restore");
    // Kept for a restart without etcd: the saved definitions win over b's stale file.
    let b_path = b.dir.join("switcher.toml");
    let file = Config::load(&b_path).expect("b's file");
    let start = definitions::startup_config(&b_path, &b.dir.join("state"), file);
    assert_eq!(
        start
            .service("syslog")
            .map(|s| s.green[0].addr.to_string())
            .as_deref(),
        Some(GREEN_B)
    );

    // One that does not fit edge-c (a candidate deployed there by hand already uses the
    // address the new definition gives blue): refused there, named, nothing changes there;
    // run where it fits; the drift is visible.
    let hand = vec![crate::config::Member::new(
        "198.18.2.9:514".parse().expect("addr"),
    )];
    cc.ctl
        .deploy("syslog", Color::Green, hand, None, false, "cli:t")
        .await
        .expect("local deploy on edge-c");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, text.replace("198.18.1.2:514", "198.18.2.9:514")).expect("edit");
    let r = a.fleet.reload("cli:t").await.expect("reload");
    let err = r["published"]["syslog"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("edge-c refused"), "{r}");
    let blue = |h: &Host| {
        let h = h.ctl.clone();
        async move {
            h.effective_services()
                .await
                .into_iter()
                .find(|s| s.name == "syslog")
                .map(|s| s.blue[0].addr.to_string())
        }
    };
    assert_eq!(blue(&b).await.as_deref(), Some("198.18.2.9:514"));
    assert_eq!(
        blue(&cc).await.as_deref(),
        Some("198.18.1.2:514"),
        "edge-c kept its state"
    );
    assert!(
        drifts(&a.fleet, "edge-c", |d| d.contains("refused")).await,
        "{:?}",
        a.fleet.status().await.hosts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restarted_mid_deployment_keeps_its_part_and_the_promote_passes() {
    let etcd = EtcdProc::start("restart").await;
    let health = Healthy::start().await;
    let mut hosts = fleet_of("restart", 3, etcd.client_port, &checks(health.port, 300)).await;
    let b = hosts.remove(1).restart_after_deploy(&hosts[0]).await;
    hosts.insert(1, b);
    in_sync(&hosts[0].fleet, 3).await;
    let all: Vec<&Host> = hosts.iter().collect();
    let _traffic = Traffic::start(&all, None);
    let r = hosts[2]
        .fleet
        .promote("syslog", "cli:t")
        .await
        .expect("promote after a restart");
    assert!(
        r.hosts.iter().all(|h| h.result == "applied") && r.hosts.len() == 3,
        "{r:?}"
    );
    for h in &hosts {
        assert_eq!(h.active().await, Color::Green);
    }
}

impl Host {
    /// Deploys green_b fleet-wide through `driver`, then restarts this host.
    async fn restart_after_deploy(self, driver: &Host) -> Host {
        driver
            .fleet
            .deploy("syslog", Color::Green, green_b(), None, false, "cli:t")
            .await
            .expect("fleet deploy");
        self.restart().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_missed_the_validation_validates_on_rejoin_and_flips_only_if_it_passes() {
    let etcd = EtcdProc::start("rejoinval").await;
    let health = Healthy::start().await;
    let c = cluster("rejoinval");
    let checks = checks(health.port, 300);
    let (good_link, bad_link) = (
        Proxy::start(etcd.client_port).await,
        Proxy::start(etcd.client_port).await,
    );
    let a = Host::start_with(&c, "edge-a", etcd.client_port, GREEN_A, &checks).await;
    let good = Host::start_with(&c, "edge-good", good_link.port, GREEN_A, &checks).await;
    let bad = Host::start_with(&c, "edge-bad", bad_link.port, GREEN_A, &checks).await;
    in_sync(&a.fleet, 3).await;
    // The candidate resets connections on edge-bad only.
    let _traffic = Traffic::start(&[&a, &good, &bad], Some(&bad));
    a.fleet
        .deploy("syslog", Color::Green, green_b(), None, false, "cli:t")
        .await
        .expect("fleet deploy");
    // Both are cut off before the promote: it runs on edge-a alone.
    good_link.stall();
    bad_link.stall();
    until(Duration::from_secs(10), "both leases expire", || async {
        connected(&a.fleet).await == 1
    })
    .await;
    let r = a
        .fleet
        .promote("syslog", "cli:t")
        .await
        .expect("promote on edge-a alone");
    assert_eq!(r.excluded.len(), 2, "{r:?}");
    good_link.heal();
    bad_link.heal();
    // edge-good validates on its own and then flips; edge-bad's validation fails: it stays.
    until(
        Duration::from_secs(20),
        "edge-good validated and flipped",
        || async { good.active().await == Color::Green },
    )
    .await;
    let bad_phase = until(
        Duration::from_secs(20),
        "edge-bad's own validation fails",
        || async {
            drifts(&a.fleet, "edge-bad", |d| {
                d.contains("own validation") && d.contains("failed")
            })
            .await
        },
    )
    .await;
    assert_eq!(
        bad.active().await,
        Color::Blue,
        "never flipped to a candidate it rejected"
    );
    eprintln!("edge-bad refused after {bad_phase:?}");
}
