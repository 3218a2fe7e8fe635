//! The controller against an in-memory datapath: no root, no network namespace. Backends are
//! local TCP listeners where a check must reach them. Operator operations in [`operations`],
//! the validation and watch tasks in [`tasks`], starts and stops in [`lifecycle`].

mod lifecycle;
mod operations;
mod pools;
mod tasks;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::net::TcpListener;

use super::*;
use crate::{
    config::Member, datapath::fake::FakeDatapath, deploy::Phase, refusing_port::RefusingPort,
};

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

/// Ports handed out by [`listener`], held until the test binary exits: a server a test kills
/// must refuse connections, not have its port taken by a parallel test's listener.
static HELD: std::sync::Mutex<Vec<RefusingPort>> = std::sync::Mutex::new(Vec::new());

async fn listener() -> (TcpListener, SocketAddr) {
    let hold = RefusingPort::bind().expect("hold a port");
    let l = hold.listen().await.expect("bind");
    let a = hold.addr;
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(hold);
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

/// A pool of one.
fn green(a: &str) -> Vec<Member> {
    vec![Member::new(a.parse().expect("addr"))]
}

/// Deploys `members` into the green slot of `service` as the CLI would (no version, not
/// forced).
async fn deploy_green(ctl: &Controller, service: &str, members: Vec<Member>) -> Deployment {
    ctl.deploy(service, Color::Green, members, None, false, "cli:t")
        .await
        .expect("deploy")
}

/// A forced manual flip of `service` to `to`, as `switcher flip --force --reason` does.
async fn force_flip(ctl: &Controller, service: &str, to: Color) {
    ctl.flip(
        service,
        to,
        true,
        Some("test".into()),
        "cli:t",
        crate::controller::Accepted::now(),
    )
    .await
    .expect("flip");
}
