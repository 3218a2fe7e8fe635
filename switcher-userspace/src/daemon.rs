//! `switcher daemon`: loads or adopts the datapath, applies the config, serves the local API
//! until SIGINT/SIGTERM. On exit it detaches everything, unless asked to leave the datapath
//! pinned so the next daemon adopts it without a gap in traffic.

use std::{
    collections::BTreeMap,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

use crate::{
    api::{Request, Response},
    config::{Color, Config},
    datapath::Datapath,
    status::Status,
};

struct State {
    dp: Datapath,
    cfg: Config,
    ids: BTreeMap<String, u32>,
}

pub async fn run(cfg: Config, keep_attached: bool) -> Result<()> {
    let mut dp = Datapath::load(&cfg.daemon.bpffs_dir)?;
    let ids = dp.apply(&cfg.services)?;
    dp.attach(&cfg.daemon.interfaces, cfg.daemon.xdp_mode)?;
    for s in &cfg.services {
        let id = ids.get(&s.name).copied().unwrap_or_default();
        let active = Color::from_index(dp.active(id)?.color());
        if active != s.active {
            warn!(service = %s.name, %active, configured = %s.active,
                "kept the active colour found in the pinned datapath");
        }
        info!(service = %s.name, vip = %s.vip, port = s.port, protocol = %s.protocol, %active, "service programmed");
    }
    info!(interfaces = ?cfg.daemon.interfaces, pins = %dp.dir().display(), "datapath attached");

    let listener = bind_socket(&cfg.daemon.socket).await?;
    let socket_path = cfg.daemon.socket.clone();
    let state = Arc::new(Mutex::new(State { dp, cfg, ids }));
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    println!("READY");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, state).await {
                            warn!("api connection: {e:#}");
                        }
                    });
                }
                Err(e) => warn!("accept on API socket: {e}"),
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    let state = Arc::try_unwrap(state)
        .map_err(|_| anyhow!("API connections still running at shutdown"))?
        .into_inner()
        .map_err(|_| anyhow!("state lock poisoned"))?;
    if keep_attached {
        info!(pins = %state.dp.dir().display(), "leaving the datapath attached and pinned");
        Ok(())
    } else {
        let dir = state.dp.dir().to_path_buf();
        state.dp.remove()?;
        info!(pins = %dir.display(), "datapath detached and unpinned");
        Ok(())
    }
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

async fn serve(stream: UnixStream, state: Arc<Mutex<State>>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(&state, req),
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp)?;
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

fn handle(state: &Mutex<State>, req: Request) -> Response {
    let mut st = match state.lock() {
        Ok(g) => g,
        Err(_) => return Response::err("daemon state lock poisoned"),
    };
    let result = match req {
        Request::Status => {
            Status::collect(&st.dp, &st.cfg).and_then(|s| Ok(serde_json::to_value(s)?))
        }
        Request::Flip { service, to } => flip(&mut st, &service, to),
    };
    match result {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(format!("{e:#}")),
    }
}

fn flip(st: &mut State, service: &str, to: Color) -> Result<serde_json::Value> {
    let id = *st
        .ids
        .get(service)
        .ok_or_else(|| anyhow!("no service named {service:?}"))?;
    let out = st
        .dp
        .flip(id, to)
        .with_context(|| format!("flipping {service} to {to}"))?;
    if out.changed {
        info!(service, from = %out.from, to = %out.to, generation = out.generation, "flipped");
    }
    Ok(serde_json::to_value(out)?)
}
