//! The local API socket: one JSON request per line in, one JSON response per line out (a
//! stream of events for `watch`). Each request is translated to one controller method; the
//! caller's identity (SO_PEERCRED) becomes the actor of what it causes.

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};

use crate::{
    api::{Request, Response},
    controller::Controller,
};

/// How long `promote --wait` may take before the API gives up waiting (validation goes on).
const PROMOTE_WAIT: Duration = Duration::from_secs(600);

/// The bound API socket; its file is removed when this goes (the daemon stopped, or failed
/// after binding).
pub(super) struct Bound {
    pub listener: UnixListener,
    path: PathBuf,
}

impl Bound {
    /// Binds `path` (mode 0600 in a 0700 folder); refuses if a daemon answers on it.
    pub async fn bind(path: &Path) -> Result<Self> {
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
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let bound = Self {
            listener,
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(bound)
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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

pub(super) async fn serve(stream: UnixStream, ctl: Controller) -> Result<()> {
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
            return stream_events(&ctl, &mut w).await;
        }
        let resp = match handle(&ctl, req, &actor, accepted).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        };
        write(&mut w, &resp).await?;
    }
    Ok(())
}

async fn write(w: &mut OwnedWriteHalf, resp: &Response) -> Result<()> {
    let mut out = serde_json::to_string(resp)?;
    out.push('\n');
    w.write_all(out.as_bytes()).await?;
    Ok(())
}

async fn stream_events(ctl: &Controller, w: &mut OwnedWriteHalf) -> Result<()> {
    let mut rx = ctl.subscribe();
    loop {
        match rx.recv().await {
            Ok(ev) => write(w, &Response::ok(ev)).await?,
            Err(RecvError::Lagged(n)) => {
                write(
                    w,
                    &Response::ok(serde_json::json!({ "kind": "lagged", "missed": n })),
                )
                .await?
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// One request, translated to its controller method.
async fn handle(
    ctl: &Controller,
    req: Request,
    actor: &str,
    accepted: Instant,
) -> Result<serde_json::Value> {
    Ok(match req {
        Request::Status { service } => serde_json::to_value(ctl.status(service.as_deref()).await?)?,
        Request::Deploy {
            service,
            color,
            backend,
            version,
            force,
        } => serde_json::to_value(
            ctl.deploy(&service, color, backend, version, force, actor)
                .await?,
        )?,
        Request::Promote { service, wait } => serde_json::to_value(
            ctl.promote(&service, actor, wait.then_some(PROMOTE_WAIT))
                .await?,
        )?,
        Request::Flip {
            service,
            to,
            force,
            reason,
        } => serde_json::to_value(
            ctl.flip(&service, to, force, reason, actor, accepted)
                .await?,
        )?,
        Request::Rollback { service } => {
            serde_json::to_value(ctl.rollback(&service, actor).await?)?
        }
        Request::Abort { service } => serde_json::to_value(ctl.abort(&service, actor).await?)?,
        Request::History { service } => serde_json::to_value(ctl.history(&service).await?)?,
        Request::Reload => serde_json::to_value(ctl.reload(actor).await?)?,
        Request::Watch => bail!("watch is served as a stream"),
    })
}
