//! The local API socket: one JSON request per line in, one JSON response per line out (a
//! stream of events for `watch`). Each request is translated to one controller method; the
//! caller's identity (SO_PEERCRED) decides whether it may ask at all (root only) and becomes
//! the actor of what it causes.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use nix::sys::stat::{umask, Mode};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixListener, UnixStream,
    },
    sync::broadcast::error::RecvError,
};

use super::{lock::is_lock_file, private_dir};
use crate::{
    api::{Request, Response},
    controller::{Accepted, Controller},
    fleet::{route, Fleet},
};

/// Longest request line accepted (the newline excluded); a longer one is answered with an
/// error and the connection is closed. Real requests are well under 1 KiB.
pub(super) const MAX_REQUEST: usize = 64 * 1024;

/// Who may use the API: the peer's uid (SO_PEERCRED) must be this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Access {
    pub uid: u32,
}

impl Access {
    /// The daemon's: root only. Every request can flip traffic.
    pub const ROOT: Access = Access { uid: 0 };

    /// Whether a peer with `uid` may send requests, and the error it gets when not.
    fn check(self, uid: Option<u32>) -> Result<(), String> {
        match uid {
            Some(u) if u == self.uid => Ok(()),
            Some(u) => Err(format!(
                "permission denied: the switcher API is for uid {} (root) only, this client is uid {u}",
                self.uid
            )),
            None => Err("permission denied: the client's credentials are unknown".into()),
        }
    }
}

/// How long `promote --wait` may take before the API gives up waiting (validation goes on).
const PROMOTE_WAIT: Duration = Duration::from_secs(600);

/// The bound API socket; its file is removed when this goes (the daemon stopped, or failed
/// after binding).
pub(super) struct Bound {
    pub listener: UnixListener,
    path: PathBuf,
}

impl Bound {
    /// Binds `path`, created 0600 (never wider, not even for an instant), in a folder that
    /// belongs to root and is made 0700 when it is the daemon's own
    /// ([`private_dir::prepare`]); refuses if a daemon answers on it.
    pub async fn bind(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let name = path.file_name().unwrap_or_default().to_owned();
            private_dir::prepare(dir, |n| n == name || is_lock_file(n))
                .with_context(|| format!("the API socket's folder {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                bail!("another switcher daemon is serving {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        // bind(2) creates the socket file with 0777 & ~umask: a chmod afterwards would leave
        // a moment in which anyone could connect. Nothing else creates files this early.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        let listener = bound.with_context(|| format!("binding {}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
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

/// One request line read from the client.
enum Line {
    Request(Vec<u8>),
    TooLong,
    End,
}

/// The next request line, at most [`MAX_REQUEST`] bytes (the newline excluded).
async fn next_line(r: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> Result<Line> {
    buf.clear();
    let limit = u64::try_from(MAX_REQUEST + 1).unwrap_or(u64::MAX);
    let n = (&mut *r).take(limit).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_REQUEST {
        return Ok(Line::TooLong);
    }
    Ok(Line::Request(std::mem::take(buf)))
}

pub(super) async fn serve(
    stream: UnixStream,
    ctl: Controller,
    fleet: Option<Fleet>,
    access: Access,
) -> Result<()> {
    let peer = stream.peer_cred().ok();
    let actor = actor(&stream);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    if let Err(e) = access.check(peer.map(|c| c.uid())) {
        refuse(r, w, &e).await;
        bail!("{e} ({actor})");
    }
    let mut buf = Vec::new();
    loop {
        let line = match next_line(&mut r, &mut buf).await? {
            Line::Request(line) => line,
            Line::End => return Ok(()),
            Line::TooLong => {
                let e = format!("request line longer than {MAX_REQUEST} bytes: connection closed");
                refuse(r, w, &e).await;
                bail!("{e} ({actor})");
            }
        };
        let accepted = Accepted::now();
        let req = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => req,
            Err(e) => {
                write(&mut w, &Response::err(format!("bad request: {e}"))).await?;
                continue;
            }
        };
        if let Request::Watch = req {
            return stream_events(&ctl, &mut w).await;
        }
        let resp = match handle(&ctl, fleet.as_ref(), req, &actor, accepted).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        };
        write(&mut w, &resp).await?;
    }
}

/// How long a refused client may keep sending before its connection is closed anyway.
const REFUSE_DRAIN: Duration = Duration::from_secs(1);

/// Answers `error` and ends the connection: our side is shut first, so the client reads the
/// answer and then the end; what it still sends is read away for a moment, because closing
/// a socket with unread data would reset the connection and could cost the client the answer.
async fn refuse(r: BufReader<OwnedReadHalf>, mut w: OwnedWriteHalf, error: &str) {
    let answered = async {
        write(&mut w, &Response::err(error)).await?;
        w.shutdown().await?;
        tokio::io::copy(&mut r.take(16 << 20), &mut tokio::io::sink()).await?;
        Ok::<_, anyhow::Error>(())
    };
    let _ = tokio::time::timeout(REFUSE_DRAIN, answered).await;
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
    fleet: Option<&Fleet>,
    req: Request,
    actor: &str,
    accepted: Accepted,
) -> Result<serde_json::Value> {
    Ok(match req {
        Request::Status { service } => serde_json::to_value(ctl.status(service.as_deref()).await?)?,
        Request::Deploy {
            service,
            color,
            members,
            version,
            force,
        } => route::deploy(fleet, ctl, &service, color, members, version, force, actor).await?,
        Request::Promote { service, wait } => {
            route::promote(fleet, ctl, &service, wait.then_some(PROMOTE_WAIT), actor).await?
        }
        Request::Flip {
            service,
            to,
            force,
            reason,
            local,
        } => {
            route::flip(
                fleet, ctl, &service, to, force, reason, local, actor, accepted,
            )
            .await?
        }
        Request::Rollback {
            service,
            local,
            force,
            reason,
        } => route::rollback(fleet, ctl, &service, force, reason, local, actor).await?,
        Request::FleetHistory { service } => match fleet {
            Some(f) => serde_json::to_value(f.history(service.as_deref()).await?)?,
            None => bail!("this daemon is not in fleet mode (its config has no [fleet] section)"),
        },
        Request::FleetStatus => match fleet {
            Some(f) => serde_json::to_value(f.status().await)?,
            None => bail!("this daemon is not in fleet mode (its config has no [fleet] section)"),
        },
        Request::Abort { service } => route::abort(fleet, ctl, &service, actor).await?,
        Request::History { service } => serde_json::to_value(ctl.history(&service).await?)?,
        Request::Reload => route::reload(fleet, ctl, actor).await?,
        Request::Flows { service, limit } => {
            serde_json::to_value(ctl.flows(service.as_deref(), limit).await?)?
        }
        Request::Watch => bail!("watch is served as a stream"),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::PermissionsExt as _,
        sync::atomic::{AtomicU32, Ordering},
    };

    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::{config::Config, datapath::fake::FakeDatapath};

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// A folder of its own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let d = std::env::temp_dir().join(format!(
                "switcher-sock-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("temp dir");
            Self(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn controller(dir: &Dir) -> Controller {
        let path = dir.0.join("switcher.toml");
        let text = format!(
            "[daemon]\ninterfaces = [\"lo\"]\nstate_dir = \"{}\"\n\n[http]\nenabled = false\n",
            dir.0.join("state").display()
        );
        std::fs::write(&path, &text).expect("config");
        let cfg = Config::load(&path).expect("valid config");
        Controller::start(cfg, path, Box::new(FakeDatapath::default()))
            .await
            .expect("controller")
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// Everything the server sent until it closed the connection.
    async fn read_to_end(client: &mut UnixStream) -> String {
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut out))
            .await
            .expect("the server closes the connection")
            .expect("read");
        out
    }

    #[tokio::test]
    async fn a_client_with_another_uid_is_refused_before_any_request() {
        let dir = Dir::new();
        let ctl = controller(&dir).await;
        let (server, mut client) = UnixStream::pair().expect("pair");
        // The peer is this process: allowing only some other uid refuses it, root or not.
        let others = Access {
            uid: me().wrapping_add(1),
        };
        let served = tokio::spawn(serve(server, ctl.clone(), None, others));
        client
            .write_all(b"{\"op\":\"status\"}\n")
            .await
            .expect("write");
        let reply = read_to_end(&mut client).await;
        assert!(
            reply.contains("permission denied")
                && reply.contains(&format!("client is uid {}", me())),
            "{reply}"
        );
        assert_eq!(reply.lines().count(), 1, "nothing but the refusal: {reply}");
        assert!(served.await.expect("task").is_err());

        // The same client with its own uid allowed is served.
        let (server, client) = UnixStream::pair().expect("pair");
        tokio::spawn(serve(server, ctl, None, Access { uid: me() }));
        let (r, mut w) = client.into_split();
        w.write_all(b"{\"op\":\"status\"}\n").await.expect("write");
        let mut lines = BufReader::new(r).lines();
        let line = lines.next_line().await.expect("read").expect("a reply");
        let resp: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(resp["ok"], true, "{line}");
    }

    #[tokio::test]
    async fn a_request_line_over_the_limit_is_refused_and_the_connection_closed() {
        let dir = Dir::new();
        let ctl = controller(&dir).await;
        let (server, client) = UnixStream::pair().expect("pair");
        let served = tokio::spawn(serve(server, ctl, None, Access { uid: me() }));
        let (mut r, mut w) = client.into_split();
        // 1 MiB on one line: the server must not buffer it whole. The write may fail once
        // the server has closed: what counts is its answer.
        let writer = tokio::spawn(async move {
            let mut line = vec![b'x'; 1 << 20];
            line.push(b'\n');
            let _ = w.write_all(&line).await;
            w
        });
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), r.read_to_string(&mut reply))
            .await
            .expect("closed by the server")
            .expect("read");
        assert!(
            reply.contains(&format!("request line longer than {MAX_REQUEST} bytes")),
            "{reply}"
        );
        assert!(served.await.expect("task").is_err());
        drop(writer.await);
    }

    #[tokio::test]
    async fn a_request_line_at_the_limit_is_read() {
        let dir = Dir::new();
        let ctl = controller(&dir).await;
        let (server, client) = UnixStream::pair().expect("pair");
        tokio::spawn(serve(server, ctl, None, Access { uid: me() }));
        let (r, mut w) = client.into_split();
        // A valid request padded with spaces to exactly MAX_REQUEST bytes.
        let mut line = b"{\"op\":\"status\"}".to_vec();
        line.resize(MAX_REQUEST, b' ');
        line.push(b'\n');
        w.write_all(&line).await.expect("write");
        let mut lines = BufReader::new(r).lines();
        let reply = lines.next_line().await.expect("read").expect("a reply");
        assert!(reply.contains("\"ok\":true"), "{reply}");
    }

    #[tokio::test]
    async fn the_socket_is_0600_in_a_folder_made_0700() {
        let dir = Dir::new();
        let run = dir.0.join("run");
        // As systemd's RuntimeDirectory= leaves it: there, empty, 0755.
        std::fs::create_dir(&run).expect("run dir");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = run.join("switcher.sock");
        let bound = Bound::bind(&path).await.expect("bind");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&run), 0o700, "the socket's folder");
        assert_eq!(mode(&path), 0o600, "the socket");
        drop(bound);
        assert!(!path.exists(), "removed when the daemon stops");
    }
}
