//! Minimal plain-http GET client (HTTP/1.1 over one fresh TCP connection) shared by the health
//! probe and the metrics scraper. No TLS on purpose: probes talk to backends on the lab/service
//! network, and a probe must not depend on certificates to say whether a backend is up.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{
    body::Bytes,
    header::{ACCEPT, CONNECTION, HOST, USER_AGENT},
    Request, Uri,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle};

use super::ProbeError;

const USER_AGENT_VALUE: &str = concat!("switcher-probe/", env!("CARGO_PKG_VERSION"));

/// A parsed `http://host[:port]/path?query` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `host[:port]` as written, for the Host header.
    authority: String,
    /// Host without IPv6 brackets, for resolving.
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, ProbeError> {
    let bad = |reason: &str| ProbeError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(bad(&format!("scheme {other:?} not supported (http only)"))),
        None => return Err(bad("missing http:// scheme")),
    }
    let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let host = authority.host();
    // `port_u16()` is None both for "no port" and for an unparsable one like 99999.
    let port = match authority.as_str().get(host.len()..).unwrap_or_default() {
        "" => 80,
        rest => rest
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| bad(&format!("bad port {rest:?}")))?,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    Ok(Target {
        authority: authority.as_str().to_owned(),
        host: host.to_owned(),
        port,
        path: uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    })
}

/// What a GET returned.
pub(crate) struct Fetched {
    pub status: u16,
    /// Time from the start of the request (resolve and connect included) to the response head.
    pub elapsed: Duration,
    /// The body, when asked for (`body_limit`).
    pub body: Option<Bytes>,
}

/// Aborts the connection driver however the request ends (error, timeout, success).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// GET `url`; the whole exchange (resolve, connect, request, body) is bounded by `timeout`.
/// With `body_limit` the body is read (at most that many bytes, more is an error), otherwise
/// only the status matters and the connection is dropped after the head.
pub(crate) async fn get(
    url: &str,
    timeout: Duration,
    accept: Option<&str>,
    body_limit: Option<usize>,
) -> Result<Fetched, ProbeError> {
    let target = parse_url(url)?;
    tokio::time::timeout(timeout, exchange(url, &target, accept, body_limit))
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn exchange(
    url: &str,
    target: &Target,
    accept: Option<&str>,
    body_limit: Option<usize>,
) -> Result<Fetched, ProbeError> {
    let start = Instant::now();
    let http_err = |reason: String| ProbeError::Http {
        url: url.to_owned(),
        reason,
    };
    let stream = connect(target).await?;
    // Small request, response read right away: Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| http_err(e.to_string()))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        // Errors surface through send_request / the body as well.
        let _ = conn.await;
    }));
    let mut req = Request::get(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(USER_AGENT, USER_AGENT_VALUE)
        // One request per connection: tell the server not to keep it around.
        .header(CONNECTION, "close");
    if let Some(accept) = accept {
        req = req.header(ACCEPT, accept);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| http_err(format!("building request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| http_err(e.to_string()))?;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    let body = match body_limit {
        None => None,
        Some(limit) => Some(
            Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| http_err(format!("reading body (limit {limit} bytes): {e}")))?
                .to_bytes(),
        ),
    };
    Ok(Fetched {
        status,
        elapsed,
        body,
    })
}

/// Connects to the first address of `target.host` that accepts.
async fn connect(target: &Target) -> Result<TcpStream, ProbeError> {
    let addrs: Vec<_> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| ProbeError::Resolve {
            host: target.host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(source) => last = Some(ProbeError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| ProbeError::Resolve {
        host: target.host.clone(),
        reason: "no addresses".to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = parse_url("http://127.0.0.1:8080/health").ok();
        assert_eq!(
            t,
            Some(Target {
                authority: "127.0.0.1:8080".into(),
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health".into(),
            })
        );
        let t = parse_url("http://[::1]/metrics?x=1").ok();
        assert_eq!(
            t,
            Some(Target {
                authority: "[::1]".into(),
                host: "::1".into(),
                port: 80,
                path: "/metrics?x=1".into(),
            })
        );
        let t = parse_url("http://localhost:9").ok().map(|t| t.path);
        assert_eq!(t.as_deref(), Some("/"));
    }

    #[test]
    fn url_rejections() {
        for (url, want) in [
            ("https://127.0.0.1/", "http only"),
            ("127.0.0.1:80/health", "bad URL"),
            ("ftp://127.0.0.1/", "http only"),
            ("/health", "scheme"),
            ("http://user:pw@127.0.0.1/", "credentials"),
            ("http://127.0.0.1:99999/", "bad port"),
            ("http://[::1]:x/", "bad URL"),
            ("", "bad URL"),
        ] {
            match parse_url(url) {
                Ok(t) => panic!("{url:?} accepted: {t:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{url:?}: {e}"),
            }
        }
    }
}
