//! The daemon's local API: one JSON request and one JSON response per line over a Unix socket
//! (mode 0600, root only). The daemon is the only writer of the datapath's maps; the CLI goes
//! through here, so two operators can never race a flip.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::config::Color;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Flip { service: String, to: Color },
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

/// Sends one request to the daemon and returns its `data`, or its error.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow!(
            "the switcher daemon is not running (no socket at {}); start it with `switcher daemon --config FILE`",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow!(
            "permission denied on {}: the API is root-only",
            socket.display()
        ),
        _ => anyhow!("connecting to {}: {e}", socket.display()),
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .context("setting socket timeout")?;
    let mut line = serde_json::to_string(req).context("encoding request")?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("sending request to the daemon")?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .context("reading the daemon's reply")?;
    if reply.is_empty() {
        bail!("the daemon closed the connection without replying");
    }
    let resp: Response =
        serde_json::from_str(&reply).with_context(|| format!("bad reply from daemon: {reply}"))?;
    if resp.ok {
        Ok(resp.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(anyhow!(resp
            .error
            .unwrap_or_else(|| "unknown error".into())))
    }
}
