//! The daemon's local API: one JSON request and one JSON response per line over a Unix socket
//! (mode 0600, root only). The daemon is the only writer of the datapath's maps; the CLI goes
//! through here, so two operators can never race a flip.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    config::{deserialize_members, Member},
    domain::Color,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status {
        #[serde(default)]
        service: Option<String>,
    },
    /// Puts a candidate pool into `color`'s slot (the idle one).
    Deploy {
        service: String,
        color: Color,
        /// A list of members, or (as earlier clients send) one `backend`.
        #[serde(alias = "backend", deserialize_with = "deserialize_members")]
        members: Vec<Member>,
        #[serde(default)]
        version: Option<String>,
        /// Replace the slot even while TCP connections are still pinned to it.
        #[serde(default)]
        force: bool,
    },
    /// Validates the deployed candidate, flips when it passes, then watches it.
    Promote {
        service: String,
        /// Reply only once the flip happened or validation failed.
        #[serde(default)]
        wait: bool,
    },
    Flip {
        service: String,
        to: Color,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        reason: Option<String>,
        /// Fleet mode: this host only (an audited emergency override).
        #[serde(default)]
        local: bool,
    },
    Rollback {
        service: String,
        /// Fleet mode: this host only; needs `force` and a `reason`.
        #[serde(default)]
        local: bool,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        reason: Option<String>,
    },
    Abort {
        service: String,
    },
    History {
        service: String,
    },
    /// Streams events (one JSON line each) until the client disconnects.
    Watch,
    /// Re-reads the config file; an invalid one changes nothing.
    Reload,
    /// The established connections pinned to a colour (a walk of the protected flow table),
    /// at most `limit` of them (oldest first).
    Flows {
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Fleet mode: every host's applied revision, colour, config hash and drift.
    FleetStatus,
    /// Fleet mode: the fleet's audit trail (every host's changes), oldest first.
    FleetHistory {
        #[serde(default)]
        service: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Self {
        match serde_json::to_value(data) {
            Ok(v) => Self {
                ok: true,
                error: None,
                data: Some(v),
            },
            Err(e) => Self::err(format!("encoding response: {e}")),
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            data: None,
        }
    }
}

/// Why a request got no answer, or the answer was a refusal: the CLI's exit code follows
/// it (found with `downcast_ref` on the error).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No daemon at the socket, or no permission to reach it.
    #[error("{0}")]
    Unreachable(String),
    /// The daemon answered with an error (bad input, wrong state, an invalid config, ...).
    #[error("{0}")]
    Refused(String),
    #[error("no reply from the daemon within {0:?}")]
    Timeout(Duration),
}

/// Sends one request to the daemon and returns its `data`, or its error.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    call_with_timeout(socket, req, Duration::from_secs(30))
}

/// Like [`call`], for requests that may take long (`promote --wait`).
pub fn call_with_timeout(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let stream = connect(socket)?;
    stream
        .set_read_timeout(Some(timeout))
        .context("setting socket timeout")?;
    send(&stream, req)?;
    let mut reply = String::new();
    match BufReader::new(&stream).read_line(&mut reply) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ApiError::Timeout(timeout).into());
        }
        Err(e) => return Err(e).context("reading the daemon's reply"),
    }
    decode(&reply)
}

/// Sends `Watch` and calls `on_event` for every event line until the daemon closes.
pub fn watch(
    socket: &Path,
    mut on_event: impl FnMut(serde_json::Value) -> Result<()>,
) -> Result<()> {
    let stream = connect(socket)?;
    send(&stream, &Request::Watch)?;
    for line in BufReader::new(&stream).lines() {
        let line = line.context("reading events from the daemon")?;
        on_event(decode(&line)?)?;
    }
    Ok(())
}

fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).map_err(|e| {
        ApiError::Unreachable(match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "the switcher daemon is not running (no socket at {}); start it with `switcher daemon --config FILE`",
                socket.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied on {}: the API is root-only",
                socket.display()
            ),
            _ => format!("connecting to {}: {e}", socket.display()),
        })
        .into()
    })
}

fn send(mut stream: &UnixStream, req: &Request) -> Result<()> {
    let mut line = serde_json::to_string(req).context("encoding request")?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("sending request to the daemon")
}

fn decode(reply: &str) -> Result<serde_json::Value> {
    if reply.is_empty() {
        bail!("the daemon closed the connection without replying");
    }
    let resp: Response =
        serde_json::from_str(reply).with_context(|| format!("bad reply from daemon: {reply}"))?;
    if resp.ok {
        Ok(resp.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ApiError::Refused(resp.error.unwrap_or_else(|| "unknown error".into())).into())
    }
}
