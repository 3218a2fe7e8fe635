//! The load probe against small local sinks: pacing, acks, errors and timeouts.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
};

use super::*;
use crate::refusing_port::{RefusingPort, RefusingUdpPort};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn spec(protocol: LoadProtocol, lines: u64, ack: bool) -> LoadSpec {
    LoadSpec {
        protocol,
        lines,
        rate: 0,
        line_size: 120,
        connections: 1,
        ack,
        timeout: Duration::from_secs(5),
    }
}

/// Splits complete octet-counted frames off the front of `buf`.
fn take_frames(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(sp) = buf.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&buf[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        let Some(msg) = buf.get(sp + 1..sp + 1 + len) else {
            break;
        };
        out.push(msg.to_vec());
        buf.drain(..sp + 1 + len);
    }
    out
}

/// A local TCP sink: acks every octet-counted frame with `ok\n` (or never acks), counts the
/// frames, and keeps every frame that is not a well-formed probe line. Its tasks cannot fail
/// a test themselves (a panic there is swallowed): [`Sink::finish`] checks what they kept.
struct Sink {
    addr: SocketAddr,
    frames: Arc<AtomicU64>,
    malformed: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Sink {
    /// Stops the sink and fails the test if any frame was malformed.
    fn finish(self) {
        self.task.abort();
        let bad = self
            .malformed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert!(bad.is_empty(), "malformed frames: {bad:?}");
    }
}

async fn tcp_sink(ack: bool, ack_delay: Duration) -> std::io::Result<Sink> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let frames = Arc::new(AtomicU64::new(0));
    let malformed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, bad) = (frames.clone(), malformed.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (count, bad) = (count.clone(), bad.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    let msgs = take_frames(&mut buf);
                    for m in &msgs {
                        if !(m.starts_with(LINE_PREFIX) && m.len() == 120) {
                            if let Ok(mut b) = bad.lock() {
                                b.push(m.clone());
                            }
                        }
                    }
                    count.fetch_add(msgs.len() as u64, Ordering::SeqCst);
                    if ack && !msgs.is_empty() {
                        tokio::time::sleep(ack_delay).await;
                        if stream.write_all(&b"ok\n".repeat(msgs.len())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(Sink {
        addr,
        frames,
        malformed,
        task,
    })
}

#[test]
fn line_format_and_padding() {
    let mut line = Vec::new();
    format_line(&mut line, 7, 0);
    assert_eq!(
        line,
        b"<14>1 - switcher-probe switcher - - [switcher@32473 probe=\"1\"] seq=7"
    );
    format_line(&mut line, 12, 80);
    assert_eq!(line.len(), 80);
    assert!(line.ends_with(b"seq=12 xxxxxxxxxx"), "{line:?}");
    // Exactly one byte short: the pad is the separating space.
    format_line(&mut line, 3, LINE_PREFIX.len() + 2);
    assert!(line.ends_with(b"seq=3 "));
}

#[test]
fn plan_splits_lines_and_paces() {
    let mut s = spec(LoadProtocol::Tcp, 10, false);
    s.connections = 3;
    s.rate = 1000;
    let now = Instant::now();
    let plan = Plan {
        target: (Ipv4Addr::LOCALHOST, 1).into(),
        spec: s,
        deadline: now,
    };
    // seqs 0,3,6,9 | 1,4,7 | 2,5,8
    assert_eq!(
        (plan.assigned(0), plan.assigned(1), plan.assigned(2)),
        (4, 3, 3)
    );
    assert_eq!(plan.assigned(10), 0);
    assert_eq!(plan.due(now, 0), Some(now));
    assert_eq!(plan.due(now, 1500), Some(now + Duration::from_millis(1500)));
    let mut unpaced = plan.spec.clone();
    unpaced.rate = 0;
    let plan = Plan {
        spec: unpaced,
        ..plan
    };
    assert_eq!(plan.due(now, 5), None);
}

#[test]
fn spec_validation() {
    assert!(spec(LoadProtocol::Tcp, 1, true).validate().is_ok());
    let mut s = spec(LoadProtocol::Udp, 1, true);
    assert!(s.validate().is_err());
    s.ack = false;
    s.line_size = MAX_UDP_LINE + 1;
    assert!(s.validate().is_err());
    let mut s = spec(LoadProtocol::Tcp, 1, false);
    s.connections = 0;
    assert!(s.validate().is_err());
}

#[test]
fn protocol_serde_is_lowercase() -> Result<(), serde_json::Error> {
    assert_eq!(serde_json::to_string(&LoadProtocol::Udp)?, "\"udp\"");
    assert_eq!(
        serde_json::from_str::<LoadProtocol>("\"tcp\"")?,
        LoadProtocol::Tcp
    );
    Ok(())
}

#[tokio::test]
async fn invalid_spec_is_reported_not_run() {
    let r = run(
        (Ipv4Addr::LOCALHOST, 9).into(),
        &spec(LoadProtocol::Udp, 5, true),
    )
    .await;
    assert_eq!((r.sent, r.errors), (0, 5));
    assert!(r
        .first_error
        .unwrap_or_default()
        .contains("ack needs protocol tcp"));
}

#[tokio::test]
async fn tcp_ack_all_lines_acked_with_latency() -> TestResult {
    let sink = tcp_sink(true, Duration::ZERO).await?;
    let (addr, frames) = (sink.addr, sink.frames.clone());
    let mut s = spec(LoadProtocol::Tcp, 500, true);
    s.connections = 3;
    let r = run(addr, &s).await;
    assert_eq!((r.sent, r.acked, r.errors), (500, 500, 0), "{r:?}");
    assert_eq!(r.first_error, None);
    assert_eq!(r.latency_kind, "write_to_ack");
    assert_eq!(r.latency.count, 500);
    assert!(r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
    assert!(r.throughput_lps > 0.0);
    assert_eq!(frames.load(Ordering::SeqCst), 500);
    sink.finish();
    Ok(())
}

#[tokio::test]
async fn tcp_ack_latency_reflects_a_slow_backend() -> TestResult {
    let sink = tcp_sink(true, Duration::from_millis(30)).await?;
    let addr = sink.addr;
    let mut s = spec(LoadProtocol::Tcp, 20, true);
    s.rate = 200;
    let r = run(addr, &s).await;
    assert_eq!((r.acked, r.errors), (20, 0), "{r:?}");
    assert!(r.latency.p50_us >= 30_000, "{r:?}");
    sink.finish();
    Ok(())
}

#[tokio::test]
async fn tcp_paced_takes_the_scheduled_time() -> TestResult {
    let sink = tcp_sink(false, Duration::ZERO).await?;
    let (addr, frames) = (sink.addr, sink.frames.clone());
    let mut s = spec(LoadProtocol::Tcp, 50, false);
    s.rate = 250; // 50 lines: the last one is due at 196 ms
    s.connections = 2;
    let r = run(addr, &s).await;
    assert_eq!((r.sent, r.errors), (50, 0), "{r:?}");
    assert!(r.elapsed_ms >= 190 && r.elapsed_ms < 2000, "{r:?}");
    assert_eq!(r.latency_kind, "connect");
    assert_eq!(r.latency.count, 2);
    // Paced: never faster than the rate (a stalled runner may make it slower).
    assert!(r.throughput_lps < 300.0, "{r:?}");
    // The linger waited for the sink to read everything and close.
    assert_eq!(frames.load(Ordering::SeqCst), 50);
    sink.finish();
    Ok(())
}

#[tokio::test]
async fn tcp_never_acked_times_out_cleanly() -> TestResult {
    let sink = tcp_sink(false, Duration::ZERO).await?;
    let (addr, frames) = (sink.addr, sink.frames.clone());
    let mut s = spec(LoadProtocol::Tcp, 100, true);
    s.timeout = Duration::from_millis(300);
    let start = std::time::Instant::now();
    let r = run(addr, &s).await;
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!((r.sent, r.acked, r.errors), (100, 0, 100), "{r:?}");
    let e = r.first_error.unwrap_or_default();
    assert!(e.contains("run timeout of 300 ms"), "{e}");
    assert_eq!(r.latency.count, 0);
    assert_eq!(r.throughput_lps, 0.0);
    assert_eq!(frames.load(Ordering::SeqCst), 100);
    sink.finish();
    Ok(())
}

#[tokio::test]
async fn tcp_paced_past_the_timeout_counts_unsent_lines() -> TestResult {
    let sink = tcp_sink(false, Duration::ZERO).await?;
    let addr = sink.addr;
    let mut s = spec(LoadProtocol::Tcp, 1000, false);
    s.rate = 100; // would take 10 s
    s.timeout = Duration::from_millis(250);
    let r = run(addr, &s).await;
    // About 25 are due by the timeout; a stalled runner sends what is due when it wakes.
    assert!(r.sent > 0 && r.sent < 100, "{r:?}");
    assert_eq!(r.sent + r.errors, 1000);
    assert!(r.first_error.unwrap_or_default().contains("lines sent"));
    assert!(r.elapsed_ms < 1000);
    sink.finish();
    Ok(())
}

#[tokio::test]
async fn tcp_refused_is_errors() -> TestResult {
    let refusing = RefusingPort::bind()?;
    let addr = refusing.addr;
    let mut s = spec(LoadProtocol::Tcp, 10, false);
    s.connections = 2;
    let r = run(addr, &s).await;
    assert_eq!((r.sent, r.errors), (0, 10), "{r:?}");
    let e = r.first_error.unwrap_or_default();
    assert!(e.starts_with("connect 127.0.0.1:"), "{e}");
    assert_eq!(r.latency.count, 0);
    Ok(())
}

#[tokio::test]
async fn tcp_backend_closing_early_is_errors() -> TestResult {
    // Reads one chunk, then closes: the rest is neither acked nor (eventually) writable.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
        }
    });
    let mut s = spec(LoadProtocol::Tcp, 200, true);
    s.rate = 2000;
    s.timeout = Duration::from_secs(3);
    let r = run(addr, &s).await;
    assert_eq!((r.acked, r.errors), (0, 200), "{r:?}");
    let e = r.first_error.clone().unwrap_or_default();
    // Which half notices first (EOF, reset, broken pipe) is a race.
    assert!(
        e.contains("closed") || e.contains("reset") || e.contains("pipe"),
        "{e}"
    );
    // Failure is detected, not waited out.
    assert!(r.elapsed_ms < 2500, "{r:?}");
    task.abort();
    Ok(())
}

#[tokio::test]
async fn udp_lines_arrive() -> TestResult {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = sock.local_addr()?;
    let mut s = spec(LoadProtocol::Udp, 40, false);
    s.rate = 2000;
    s.connections = 2;
    let r = run(addr, &s).await;
    assert_eq!((r.sent, r.errors, r.acked), (40, 0, 0), "{r:?}");
    assert_eq!(r.latency_kind, "none");
    assert_eq!(r.latency.count, 0);
    let mut buf = vec![0u8; 2048];
    let mut seen = Vec::new();
    for _ in 0..40 {
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await??;
        assert_eq!(n, 120);
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let seq = text
            .split_once("seq=")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        seen.push(seq);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..40).map(Some).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn udp_to_closed_port_reports_errors() -> TestResult {
    let refusing = RefusingUdpPort::bind().await?;
    let addr = refusing.addr;
    let mut s = spec(LoadProtocol::Udp, 20, false);
    s.rate = 1000;
    let r = run(addr, &s).await;
    assert!(r.errors > 0, "{r:?}");
    assert_eq!(r.sent + r.errors, 20);
    let e = r.first_error.unwrap_or_default();
    assert!(e.contains("refused"), "{e}");
    Ok(())
}

#[tokio::test]
async fn zero_lines_is_an_empty_report() -> TestResult {
    let sink = tcp_sink(true, Duration::ZERO).await?;
    let addr = sink.addr;
    let r = run(addr, &spec(LoadProtocol::Tcp, 0, true)).await;
    assert_eq!((r.sent, r.acked, r.errors), (0, 0, 0));
    assert_eq!(r.first_error, None);
    sink.finish();
    Ok(())
}
