//! Health checks: a TCP connect and/or an HTTP GET, repeated until a backend has passed enough
//! consecutive rounds (before a flip) or once per tick (the post-flip watch).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::{http, ProbeError};

/// Rounds never follow each other faster than this, whatever `interval` says: a zero interval
/// against a refusing port would otherwise hammer the backend for the whole deadline.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Time to establish a TCP connection to `addr` (closed again right away).
pub async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(start.elapsed()),
        Ok(Err(source)) => Err(ProbeError::Connect { addr, source }),
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// Outcome of one HTTP GET.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HttpResult {
    pub status: u16,
    /// Until the response head arrived (connect included); the body is not read.
    pub elapsed: Duration,
}

/// GET `url` (plain http) and report the status, whatever it is; only transport failures and
/// the timeout are errors.
pub async fn http_get(url: &str, timeout: Duration) -> Result<HttpResult, ProbeError> {
    let fetched = http::get(url, timeout, None, None).await?;
    Ok(HttpResult {
        status: fetched.status,
        elapsed: fetched.elapsed,
    })
}

/// How often and how long to probe, and how much passing is enough: the same for every
/// backend a health check applies to (the config's `[service.health]` holds one).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HealthRounds {
    /// Consecutive passing rounds required (0 is treated as 1: passing needs data).
    pub successes: u32,
    /// Time between the starts of two rounds.
    pub interval: Duration,
    /// Give up after this long.
    pub deadline: Duration,
    /// Per check (each TCP connect, each GET).
    pub timeout: Duration,
}

impl Default for HealthRounds {
    fn default() -> Self {
        Self {
            successes: 3,
            interval: Duration::from_millis(200),
            deadline: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
        }
    }
}

/// What to check on one backend, and on what schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HealthSpec {
    /// Must accept a TCP connection.
    pub tcp: Option<SocketAddr>,
    /// Must answer a GET with 2xx.
    pub http_url: Option<String>,
    #[serde(flatten)]
    pub rounds: HealthRounds,
}

/// What `until_healthy` saw, for the controller's decision and its record.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct HealthEvidence {
    pub passed: bool,
    /// Consecutive passing rounds at the end.
    pub consecutive: u32,
    /// Rounds started.
    pub attempts: u32,
    /// The most recent failure, if any round failed (kept even when a later streak passed).
    pub last_error: Option<String>,
    pub elapsed_ms: u64,
}

const NOTHING_CONFIGURED: &str = "no health check configured";

/// Probes until `successes` consecutive rounds pass (every configured check in a round must
/// pass: TCP connect ok, HTTP 2xx) or `deadline` passes. A spec with neither tcp nor http_url
/// fails ("no health check configured": no data is a failure).
pub async fn until_healthy(spec: &HealthSpec) -> HealthEvidence {
    let start = Instant::now();
    let mut evidence = HealthEvidence {
        passed: false,
        consecutive: 0,
        attempts: 0,
        last_error: None,
        elapsed_ms: 0,
    };
    if spec.tcp.is_none() && spec.http_url.is_none() {
        evidence.last_error = Some(NOTHING_CONFIGURED.to_owned());
        return evidence;
    }
    let needed = spec.rounds.successes.max(1);
    let interval = spec.rounds.interval.max(MIN_INTERVAL);
    let deadline = tokio::time::Instant::from_std(start) + spec.rounds.deadline;
    loop {
        let round_start = tokio::time::Instant::now();
        evidence.attempts = evidence.attempts.saturating_add(1);
        // A round still in flight at the deadline counts as failed: the deadline is a bound.
        // It says less than the last round that failed on its own, whose error is kept;
        // without one, the streak it cut is the evidence.
        let Ok(result) = tokio::time::timeout_at(deadline, check_once(spec)).await else {
            let streak = std::mem::take(&mut evidence.consecutive);
            evidence.last_error.get_or_insert_with(|| {
                format!(
                    "deadline of {} ms reached during a round, after {streak} of {needed} \
                     consecutive successes",
                    spec.rounds.deadline.as_millis()
                )
            });
            break;
        };
        match result {
            Ok(()) => {
                evidence.consecutive = evidence.consecutive.saturating_add(1);
                if evidence.consecutive >= needed {
                    evidence.passed = true;
                    break;
                }
            }
            Err(e) => {
                evidence.consecutive = 0;
                evidence.last_error = Some(e);
            }
        }
        let next = round_start + interval;
        if next >= deadline {
            break;
        }
        tokio::time::sleep_until(next).await;
    }
    if !evidence.passed && evidence.last_error.is_none() {
        // Only passing rounds, but too few of them before the deadline.
        evidence.last_error = Some(format!(
            "deadline of {} ms reached after {} of {needed} consecutive successes",
            spec.rounds.deadline.as_millis(),
            evidence.consecutive
        ));
    }
    evidence.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    evidence
}

/// One round (used by the post-flip watch): every configured check must pass.
pub async fn check_once(spec: &HealthSpec) -> Result<(), String> {
    if spec.tcp.is_none() && spec.http_url.is_none() {
        return Err(NOTHING_CONFIGURED.to_owned());
    }
    if let Some(addr) = spec.tcp {
        tcp_connect(addr, spec.rounds.timeout)
            .await
            .map_err(|e| format!("tcp {addr}: {e}"))?;
    }
    if let Some(url) = &spec.http_url {
        let result = http_get(url, spec.rounds.timeout)
            .await
            .map_err(|e| format!("http: {e}"))?;
        if !(200..300).contains(&result.status) {
            return Err(format!("http: GET {url}: status {}", result.status));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        task::JoinHandle,
    };

    use super::*;
    use crate::refusing_port::RefusingPort;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A tiny HTTP/1.1 server: the first `ok_first` requests get 200, later ones 503.
    async fn http_server(
        ok_first: u32,
    ) -> std::io::Result<(SocketAddr, Arc<AtomicU32>, JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU32::new(0));
        let count = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // Read up to the end of the request head (bounded).
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(len) => head.extend_from_slice(&buf[..len]),
                        }
                    }
                    let (status, body) = if n < ok_first {
                        ("200 OK", "ok")
                    } else {
                        ("503 Service Unavailable", "down")
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                });
            }
        });
        Ok((addr, served, task))
    }

    fn spec(tcp: Option<SocketAddr>, http_url: Option<String>, successes: u32) -> HealthSpec {
        HealthSpec {
            tcp,
            http_url,
            rounds: HealthRounds {
                successes,
                interval: Duration::from_millis(20),
                deadline: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
            },
        }
    }

    #[tokio::test]
    async fn tcp_connect_open_and_closed() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let elapsed = tcp_connect(listener.local_addr()?, Duration::from_secs(1)).await?;
        assert!(elapsed < Duration::from_secs(1));
        let refusing = RefusingPort::bind()?;
        let closed = refusing.addr;
        match tcp_connect(closed, Duration::from_secs(1)).await {
            Err(ProbeError::Connect { addr, source }) => {
                assert_eq!(addr, closed);
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("expected a refused connect, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn http_get_reports_status_then_503() -> TestResult {
        let (addr, _, task) = http_server(1).await?;
        let url = format!("http://{addr}/health");
        let first = http_get(&url, Duration::from_secs(1)).await?;
        assert_eq!(first.status, 200);
        let second = http_get(&url, Duration::from_secs(1)).await?;
        assert_eq!(second.status, 503);
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn http_get_times_out_on_a_silent_server() -> TestResult {
        // Accepts (the kernel does, via the backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/health", listener.local_addr()?);
        let start = Instant::now();
        let got = http_get(&url, Duration::from_millis(200)).await;
        assert!(matches!(got, Err(ProbeError::Timeout(_))), "{got:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        Ok(())
    }

    #[tokio::test]
    async fn http_get_refused() -> TestResult {
        let refusing = RefusingPort::bind()?;
        let url = format!("http://{}/health", refusing.addr);
        let got = http_get(&url, Duration::from_secs(1)).await;
        assert!(matches!(got, Err(ProbeError::Connect { .. })), "{got:?}");
        Ok(())
    }

    #[tokio::test]
    async fn until_healthy_passes_with_tcp_and_http() -> TestResult {
        let (addr, served, task) = http_server(u32::MAX).await?;
        let s = spec(Some(addr), Some(format!("http://{addr}/health")), 3);
        let ev = until_healthy(&s).await;
        assert!(ev.passed, "{ev:?}");
        assert_eq!((ev.consecutive, ev.attempts), (3, 3));
        assert_eq!(ev.last_error, None);
        // The TCP checks also reach the accept loop: 3 rounds × (connect + GET).
        assert_eq!(served.load(Ordering::SeqCst), 6);
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn until_healthy_fails_when_http_turns_503() -> TestResult {
        let (addr, _, task) = http_server(2).await?;
        let mut s = spec(None, Some(format!("http://{addr}/health")), 3);
        s.rounds.deadline = Duration::from_secs(1);
        let start = Instant::now();
        let ev = until_healthy(&s).await;
        assert!(!ev.passed, "{ev:?}");
        assert_eq!(ev.consecutive, 0);
        assert!(ev.attempts >= 3, "{ev:?}");
        let err = ev.last_error.unwrap_or_default();
        assert!(err.contains("status 503"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(4));
        task.abort();
        Ok(())
    }

    /// The deadline cuts a round whose server never answers: the evidence keeps the failure
    /// seen before it (a 503), which says more than "deadline reached".
    #[tokio::test]
    async fn a_round_cut_by_the_deadline_keeps_the_last_real_failure() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                if !held.is_empty() {
                    // Accepted, read from never, answered never.
                    held.push(stream);
                    continue;
                }
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                held.push(stream);
            }
        });
        let mut s = spec(None, Some(format!("http://{addr}/health")), 3);
        s.rounds.deadline = Duration::from_secs(1);
        // Longer than the deadline: the hung round is cut by the deadline, not its timeout.
        s.rounds.timeout = Duration::from_secs(5);
        let ev = until_healthy(&s).await;
        assert!(!ev.passed, "{ev:?}");
        assert!(ev.attempts >= 2, "{ev:?}");
        let err = ev.last_error.unwrap_or_default();
        assert!(err.contains("status 503"), "{err}");
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn until_healthy_fails_on_closed_port_within_deadline() -> TestResult {
        let refusing = RefusingPort::bind()?;
        let mut s = spec(Some(refusing.addr), None, 1);
        s.rounds.deadline = Duration::from_secs(1);
        let ev = until_healthy(&s).await;
        assert!(!ev.passed);
        assert!(ev.attempts >= 2, "{ev:?}");
        assert!(ev.elapsed_ms < 3000, "{ev:?}");
        let err = ev.last_error.unwrap_or_default();
        assert!(err.starts_with("tcp 127.0.0.1:"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn deadline_too_short_for_the_streak() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut s = spec(Some(listener.local_addr()?), None, 1000);
        // 1000 rounds 20 ms apart cannot fit.
        s.rounds.deadline = Duration::from_secs(1);
        let ev = until_healthy(&s).await;
        assert!(!ev.passed);
        // Whether the deadline fell between rounds or cut one, the streak so far is named.
        let err = ev.last_error.unwrap_or_default();
        let streak: u32 = err
            .split_once("after ")
            .and_then(|(_, rest)| rest.split_once(" of 1000 consecutive successes"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("no streak in {err:?}"));
        assert!((1..1000).contains(&streak), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn nothing_configured_fails() {
        let s = spec(None, None, 1);
        let ev = until_healthy(&s).await;
        assert!(!ev.passed);
        assert_eq!(ev.attempts, 0);
        assert_eq!(ev.last_error.as_deref(), Some(NOTHING_CONFIGURED));
        assert_eq!(check_once(&s).await, Err(NOTHING_CONFIGURED.to_owned()));
    }

    #[tokio::test]
    async fn zero_successes_still_needs_one_round() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let ev = until_healthy(&spec(Some(listener.local_addr()?), None, 0)).await;
        assert!(ev.passed);
        assert_eq!(ev.attempts, 1);
        Ok(())
    }
}
