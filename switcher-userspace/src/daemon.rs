//! `switcher daemon`: starts the controller (which loads or adopts the datapath), serves the
//! local API on a root-only Unix socket, reloads on SIGHUP, and stops on SIGINT/SIGTERM. By
//! default it detaches the datapath on exit; with `--keep-attached` (what the systemd unit
//! uses) it leaves it pinned so a restart or upgrade never interrupts traffic.

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};
use tracing::{error, info, warn};

use crate::{
    api::{Request, Response},
    config::Config,
    controller::{self, Controller, Shared},
};

/// How long `promote --wait` may take before the API gives up waiting (validation goes on).
const PROMOTE_WAIT: Duration = Duration::from_secs(600);

pub async fn run(cfg: Config, cfg_path: PathBuf, keep_attached: bool) -> Result<()> {
    let socket_path = cfg.daemon.socket.clone();
    let cfg_http = cfg.http.clone();
    let state_dir = cfg.daemon.state_dir.clone();
    let shared = Controller::start(cfg, cfg_path).await?;
    {
        let c = shared.lock().await;
        let st = c.status(None)?;
        for s in &st.services {
            info!(service = %s.name, vip = %s.vip, port = s.port, protocol = %s.protocol, active = %s.active, "service programmed");
        }
    }
    let web = match cfg_http.listen {
        Some(addr) => match start_web(addr, &shared, &cfg_http, &state_dir).await {
            Ok(task) => Some(task),
            // The controller matters more than its dashboard: run on, loudly.
            Err(e) => {
                error!("metrics and dashboard are not served: {e:#}");
                None
            }
        },
        None => None,
    };
    let listener = bind_socket(&socket_path).await?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    println!("READY");
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = refresh.tick() => shared.lock().await.refresh_redirect_targets(),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, shared).await {
                            warn!("api connection: {e:#}");
                        }
                    });
                }
                Err(e) => warn!("accept on API socket: {e}"),
            },
            _ = sighup.recv() => {
                let mut c = shared.lock().await;
                match c.reload("signal:SIGHUP") {
                    Ok(s) => info!("reloaded on SIGHUP: {s}"),
                    Err(e) => warn!("reload on SIGHUP refused, nothing changed: {e:#}"),
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    if let Some(web) = web {
        web.abort();
    }
    let mut c = shared.lock().await;
    c.abort_tasks();
    // A canary share must never outlive the daemon that watches it.
    c.clear_canaries()?;
    let dir = c.dp.dir().to_path_buf();
    if keep_attached {
        info!(pins = %dir.display(), "leaving the datapath attached and pinned");
        return Ok(());
    }
    // Our link handles were dropped after pinning: unpinning detaches the programs.
    crate::datapath::remove_pins(&dir)?;
    info!(pins = %dir.display(), "datapath detached and unpinned");
    Ok(())
}

/// Binds the HTTP listener, then sets up its token, and serves it in a task.
async fn start_web(
    addr: std::net::SocketAddr,
    shared: &Shared,
    http: &crate::config::HttpConfig,
    state_dir: &Path,
) -> Result<tokio::task::JoinHandle<()>> {
    let maps = shared.lock().await.dp.dir().join("maps");
    let mut server = crate::web::Server::bind(addr, shared.clone(), &maps).await?;
    let token = crate::web::auth::load_or_generate(http.token_file.as_deref(), state_dir)?;
    server.set_token(token.value.clone());
    let addr = server.local_addr()?;
    info!(%addr, "metrics at http://{addr}/metrics, dashboard at http://{addr}/");
    if token.generated {
        // On a terminal the token is shown once; under a service manager stdout goes to a
        // journal others may read, so only its 0600 file is named.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!(
                "dashboard token (for promote/flip/rollback): {} (stored in {})",
                token.value,
                token.path.display()
            );
        } else {
            info!(file = %token.path.display(), "dashboard token generated");
        }
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve().await {
            warn!("{e:#}");
        }
    }))
}

async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("another switcher daemon is serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

/// Who is asking: recorded as the actor of every transition the request causes.
fn actor(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(c) => {
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(c.uid()))
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {}", c.uid()), |u| u.name);
            match c.pid() {
                Some(pid) => format!("cli:{name} (pid {pid})"),
                None => format!("cli:{name}"),
            }
        }
        Err(_) => "cli:unknown".into(),
    }
}

async fn serve(stream: UnixStream, shared: Shared) -> Result<()> {
    let actor = actor(&stream);
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let accepted = Instant::now();
        let req = match serde_json::from_str::<Request>(&line) {
            Ok(req) => req,
            Err(e) => {
                write(&mut w, &Response::err(format!("bad request: {e}"))).await?;
                continue;
            }
        };
        if let Request::Watch = req {
            return stream_events(&shared, &mut w).await;
        }
        let resp = match handle(&shared, req, &actor, accepted).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        };
        write(&mut w, &resp).await?;
    }
    Ok(())
}

async fn write(w: &mut tokio::net::unix::OwnedWriteHalf, resp: &Response) -> Result<()> {
    let mut out = serde_json::to_string(resp)?;
    out.push('\n');
    w.write_all(out.as_bytes()).await?;
    Ok(())
}

async fn stream_events(shared: &Shared, w: &mut tokio::net::unix::OwnedWriteHalf) -> Result<()> {
    let mut rx = shared.lock().await.subscribe();
    loop {
        match rx.recv().await {
            Ok(ev) => write(w, &Response::ok(ev)).await?,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                write(
                    w,
                    &Response::ok(serde_json::json!({ "kind": "lagged", "missed": n })),
                )
                .await?
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Carries out one API request; the dashboard's actions come through here too.
pub(crate) async fn handle(
    shared: &Shared,
    req: Request,
    actor: &str,
    accepted: Instant,
) -> Result<serde_json::Value> {
    Ok(match req {
        Request::Status { service } => {
            serde_json::to_value(shared.lock().await.status(service.as_deref())?)?
        }
        Request::Deploy {
            service,
            color,
            backend,
            version,
            force,
        } => serde_json::to_value(
            shared
                .lock()
                .await
                .deploy(&service, color, backend, version, force, actor)?,
        )?,
        Request::Promote { service, wait } => {
            let id = controller::promote(shared, &service, actor).await?;
            if wait {
                serde_json::to_value(
                    controller::wait_promoted(shared, &service, id, PROMOTE_WAIT).await?,
                )?
            } else {
                serde_json::json!({ "deployment": id, "phase": "validating" })
            }
        }
        Request::Flip {
            service,
            to,
            force,
            reason,
        } => {
            let mut c = shared.lock().await;
            let out = c.flip(&service, to, force, reason, actor)?;
            let written = c
                .last_map_write
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(accepted));
            if out.changed {
                c.recorded.flip_api.observe(written.as_secs_f64());
            }
            let promoted = c.is_promoted_unwatched(&service);
            drop(c);
            if promoted {
                controller::watch_promoted(shared, &service).await;
            }
            let mut v = serde_json::to_value(out)?;
            v["api_to_map_ns"] = serde_json::json!(written.as_nanos() as u64);
            v
        }
        Request::Rollback { service } => serde_json::to_value(shared.lock().await.rollback(
            &service,
            actor,
            "rollback requested",
            None,
        )?)?,
        Request::Abort { service } => {
            serde_json::to_value(shared.lock().await.abort(&service, actor)?)?
        }
        Request::History { service } => {
            serde_json::to_value(shared.lock().await.history(&service)?)?
        }
        Request::Reload => shared.lock().await.reload(actor)?,
        Request::Watch => bail!("watch is served as a stream"),
    })
}
