//! Serving the router on the TCP listener within bounds: at most [`Limits::connections`]
//! connections at once (one more is answered 503 and closed), request headers within
//! [`Limits::header_timeout`] (an idle keep-alive connection is closed after it too), and each
//! request (its body included) answered within [`Limits::request_timeout`] or 408. An event
//! stream holds its connection for as long as it runs; their number has its own, lower cap in
//! the handler.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse as _, Response},
    Extension, Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

/// The listener's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once, event streams included.
    pub connections: usize,
    /// Dashboard event streams at once (each also holds a connection).
    pub event_streams: usize,
    /// To receive a request's headers, from the moment the server waits for them.
    pub header_timeout: Duration,
    /// From the headers to the response's head: reading the body and handling the request.
    pub request_timeout: Duration,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        connections: 64,
        event_streams: 16,
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
    };
}

/// The body of the answer to a connection over the cap.
const BUSY: &str = "too many connections, try again later\n";

/// Accepts connections on `listener` and serves `router` on each, within `limits`, until the
/// task is aborted. The router sees the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                warn!("accept on the HTTP listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "HTTP connection refused: {} open", limits.connections);
            tokio::spawn(refuse(stream));
            continue;
        };
        // Events are small and must not wait for more data to fill a segment.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(Extension(ConnectInfo::<SocketAddr>(peer))),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, "HTTP connection: {e}");
            }
        });
    }
}

/// Answers 503 on a connection over the cap and closes it: the answer goes first, then
/// whatever the client sent is read away (briefly) so that the close does not reset the
/// connection before the client read the answer.
async fn refuse(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\nretry-after: 5\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let done = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
}

/// Middleware: the request (reading its body included) must produce a response head within
/// the given time, else 408. A response that streams (the event stream) is not cut once its
/// head is out.
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({
                "ok": false,
                "error": format!("request not completed within {} s", limit.as_secs_f64()),
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::{get, post};
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    use super::*;

    const FAST: Limits = Limits {
        connections: 2,
        event_streams: 1,
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
    };

    /// `/` answers the peer's address; `/echo` the request body.
    async fn start(limits: Limits) -> SocketAddr {
        let router =
            Router::new()
                .route(
                    "/",
                    get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        format!("hello {peer}")
                    }),
                )
                .route("/echo", post(|body: String| async move { body }))
                .route("/stream", get(|| async { slow_stream() }))
                .layer(axum::middleware::from_fn_with_state(
                    limits.request_timeout,
                    deadline,
                ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, router, limits));
        addr
    }

    /// Ten chunks, 100 ms apart: longer than both timeouts of [`FAST`], like an event stream.
    fn slow_stream() -> axum::body::Body {
        let chunks = futures_util::stream::unfold(0u32, |i| async move {
            if i == 10 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, std::convert::Infallible>(format!("chunk{i};")),
                i + 1,
            ))
        });
        axum::body::Body::from_stream(chunks)
    }

    /// Sends `raw` and returns the response's status line (empty when the server closed
    /// without answering), or None when nothing happened within `wait`.
    async fn status_line(stream: &mut TcpStream, raw: &[u8], wait: Duration) -> Option<String> {
        stream.write_all(raw).await.expect("write");
        let mut r = BufReader::new(stream);
        let mut line = String::new();
        match tokio::time::timeout(wait, r.read_line(&mut line)).await {
            Ok(Ok(_)) => Some(line.trim_end().to_string()),
            Ok(Err(_)) => Some(String::new()),
            Err(_) => None,
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n";

    #[tokio::test]
    async fn connections_over_the_cap_are_answered_503_until_one_closes() {
        // The header timeout also closes idle keep-alive connections: long enough here that
        // a held slot cannot free itself before the extra connection is answered.
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            ..FAST
        };
        let addr = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..FAST.connections {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            // Served, then kept open (keep-alive): each holds a slot.
            let line = status_line(&mut s, GET, Duration::from_secs(5)).await;
            assert_eq!(line.as_deref(), Some("HTTP/1.1 200 OK"));
            held.push(s);
        }
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let line = status_line(&mut extra, GET, Duration::from_secs(5)).await;
        assert_eq!(line.as_deref(), Some("HTTP/1.1 503 Service Unavailable"));
        // One closes: its slot is free again.
        drop(held.pop());
        let mut served = false;
        for _ in 0..50 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            if status_line(&mut s, GET, Duration::from_secs(5))
                .await
                .as_deref()
                == Some("HTTP/1.1 200 OK")
            {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "a freed slot is used again");
    }

    #[tokio::test]
    async fn headers_that_never_finish_close_the_connection() {
        let addr = start(FAST).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // Half a request, then silence (slowloris).
        let line = status_line(
            &mut s,
            b"GET / HTTP/1.1\r\nhost: local",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            line.is_some(),
            "the connection must be closed by the header timeout, not left open"
        );
        // An idle keep-alive connection goes the same way, freeing its slot.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let first = status_line(&mut idle, GET, Duration::from_secs(5)).await;
        assert_eq!(first.as_deref(), Some("HTTP/1.1 200 OK"));
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an idle connection is closed");
    }

    #[tokio::test]
    async fn a_body_that_never_arrives_gets_408() {
        let addr = start(FAST).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let line = status_line(
            &mut s,
            b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nonly a few",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(line.as_deref(), Some("HTTP/1.1 408 Request Timeout"));
    }

    #[tokio::test]
    async fn a_streaming_response_outlives_both_timeouts() {
        let addr = start(FAST).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /stream HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut all = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut all))
            .await
            .expect("the stream ends by itself")
            .expect("read");
        assert!(all.contains("chunk9;"), "the whole stream arrived: {all}");
    }

    #[tokio::test]
    async fn the_router_sees_the_peer_address() {
        let addr = start(Limits::DEFAULT).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let me = s.local_addr().expect("local addr");
        s.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut all = String::new();
        s.read_to_string(&mut all).await.expect("read");
        assert!(all.ends_with(&format!("hello {me}")), "{all}");
    }
}
