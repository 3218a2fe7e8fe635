//! Reference log-ingest sink for the switcher lab: the backend that runs as
//! "blue" or "green". It receives syslog over UDP and TCP (RFC 6587 framing),
//! appends every message as one line to an output file, optionally acks each
//! TCP message (latency probes) and serves health, Prometheus metrics and JSON
//! stats over HTTP. Faults can be injected at runtime (`POST /fault`) so the
//! deployment controller's checks can be shown to catch a bad backend: failing
//! health, slow acks, errors reported in the metrics.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use clap::Parser;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufWriter},
    net::{TcpListener, TcpStream, UdpSocket},
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{debug, info, warn};

/// Largest octet-counted frame or LF-terminated line accepted; bounds the
/// memory a single peer can make us hold.
const MAX_FRAME: usize = 1 << 20;
/// Digits of "1048576": a longer length field can only be zero padding.
const MAX_LEN_DIGITS: usize = 7;
const READ_BUF: usize = 64 * 1024;
/// Largest UDP payload plus slack, so no datagram is ever truncated.
const UDP_BUF: usize = 64 * 1024;
/// Output bytes gathered from queued datagrams before handing them to the writer.
const UDP_BATCH: usize = 256 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Batches (one per datagram / TCP read) queued for the writer before
/// receivers wait; large enough to absorb a burst while the disk catches up.
const WRITER_QUEUE: usize = 16 * 1024;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Bounds on injected faults: large enough for any test, small enough that a
/// typo cannot wedge the sink (an ack delay of days) or spin it.
const MAX_ACK_DELAY_MS: u64 = 600_000;
const MAX_ERRORS_PER_SEC: u64 = 1_000_000;
/// How often the injected-error ticker adds to the counter.
const INJECT_TICK: Duration = Duration::from_millis(100);

#[derive(Parser, Debug)]
#[command(
    name = "ingest-sink",
    about = "Reference log-ingest sink (lab backend)"
)]
struct Args {
    /// Backend name reported in /stats and ingest_info (e.g. blue, green).
    #[arg(long)]
    name: String,
    /// UDP syslog listen address; repeatable, IPv4 or [IPv6]:port.
    #[arg(long, value_name = "ADDR:PORT")]
    udp: Vec<SocketAddr>,
    /// TCP syslog (RFC 6587) listen address; repeatable.
    #[arg(long, value_name = "ADDR:PORT")]
    tcp: Vec<SocketAddr>,
    /// HTTP listen address for /health, /metrics, /stats; repeatable.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Vec<SocketAddr>,
    /// File every received message is appended to, one per line.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// SO_RCVBUF for the UDP sockets.
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    rcvbuf: usize,
    /// Write "ok\n" back to the TCP peer after every complete message.
    #[arg(long)]
    ack: bool,
    /// Initial delay of every --ack acknowledgement (fault injection; see POST /fault).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=MAX_ACK_DELAY_MS))]
    ack_delay_ms: u64,
    /// Start with /health failing (503) until POST /fault sets health_ok.
    #[arg(long)]
    unhealthy: bool,
    /// Prefix every output line with `t=NS ` (CLOCK_MONOTONIC at receipt, the clock of
    /// bpf_ktime_get_ns and of every process on the host), for arrival-time measurements.
    #[arg(long)]
    stamp: bool,
}

/// Set once from --stamp before any receiver starts.
static STAMP: AtomicBool = AtomicBool::new(false);

fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 marks the impossible case.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// RFC 6587 framing

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum FrameErrorKind {
    #[error("frame longer than {MAX_FRAME} bytes")]
    Oversize,
    #[error("invalid octet count (non-digit before SP)")]
    BadLength,
    #[error("connection closed inside an octet-counted frame")]
    Truncated,
}

#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
struct FrameError {
    kind: FrameErrorKind,
    /// Messages completed before the bad frame: valid, so still delivered.
    parsed: Vec<Vec<u8>>,
}

/// Incremental RFC 6587 deframer for one TCP connection. Frames starting
/// with a digit are octet-counted (`LEN SP MSG`), anything else ends at LF;
/// a connection may switch between the two at any frame boundary.
#[derive(Debug, Default)]
struct Framer {
    pending: Vec<u8>,
}

impl Framer {
    /// Feeds bytes read from the connection and returns the messages they
    /// complete. Empty messages (blank lines, `0 `) are dropped. After an
    /// error the connection must be closed.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        self.pending.extend_from_slice(bytes);
        let mut parsed = Vec::new();
        let mut pos = 0;
        let outcome = loop {
            match next_frame(&self.pending[pos..]) {
                Ok(Some((used, msg))) => {
                    pos += used;
                    if let Some(msg) = msg {
                        parsed.push(msg.to_vec());
                    }
                }
                Ok(None) => break Ok(()),
                Err(kind) => break Err(kind),
            }
        };
        // Compact once per push rather than per frame: O(n) instead of O(n²).
        self.pending.drain(..pos);
        match outcome {
            Ok(()) => Ok(parsed),
            Err(kind) => {
                self.pending.clear();
                Err(FrameError { kind, parsed })
            }
        }
    }

    /// Called at EOF: an unterminated LF-framed tail still counts as a
    /// message, a partial octet-counted frame is an error.
    fn finish(&mut self) -> Result<Option<Vec<u8>>, FrameErrorKind> {
        let rest = std::mem::take(&mut self.pending);
        match rest.first() {
            None => Ok(None),
            Some(b) if b.is_ascii_digit() => Err(FrameErrorKind::Truncated),
            Some(_) => Ok(non_empty(strip_cr(&rest)).map(<[u8]>::to_vec)),
        }
    }
}

/// One parsed frame: bytes consumed and the message (None if empty).
type Frame<'a> = (usize, Option<&'a [u8]>);

/// Parses the frame at the start of `buf`; `Ok(None)` means more bytes are needed.
fn next_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameErrorKind> {
    match buf.first() {
        None => Ok(None),
        Some(b) if b.is_ascii_digit() => octet_counted(buf),
        Some(_) => lf_terminated(buf),
    }
}

fn octet_counted(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameErrorKind> {
    let mut len = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                if i >= MAX_LEN_DIGITS {
                    return Err(FrameErrorKind::BadLength);
                }
                // Cannot overflow: at most 7 digits.
                len = len * 10 + usize::from(b - b'0');
                if len > MAX_FRAME {
                    return Err(FrameErrorKind::Oversize);
                }
            }
            b' ' => {
                let end = i + 1 + len;
                return Ok(buf.get(i + 1..end).map(|msg| (end, non_empty(msg))));
            }
            _ => return Err(FrameErrorKind::BadLength),
        }
    }
    Ok(None)
}

fn lf_terminated(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameErrorKind> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > MAX_FRAME => Err(FrameErrorKind::Oversize),
        Some(i) => Ok(Some((i + 1, non_empty(strip_cr(&buf[..i]))))),
        None if buf.len() > MAX_FRAME => Err(FrameErrorKind::Oversize),
        None => Ok(None),
    }
}

/// Senders commonly end lines with CRLF; the CR is framing, not content.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn non_empty(msg: &[u8]) -> Option<&[u8]> {
    (!msg.is_empty()).then_some(msg)
}

/// A UDP datagram is normally one message, but may carry several LF-separated
/// lines; blank lines (including the one after a trailing LF) are not messages.
fn datagram_lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = datagram.strip_suffix(b"\n").unwrap_or(datagram);
    // Common case first: `contains` on bytes is memchr, far cheaper than the
    // byte-by-byte split (which matters in unoptimised lab builds under bursts).
    let (single, multi) = if body.contains(&b'\n') {
        (None, Some(body))
    } else {
        (Some(body), None)
    };
    single
        .into_iter()
        .chain(multi.into_iter().flat_map(|b| b.split(|&c| c == b'\n')))
        .map(strip_cr)
        .filter(|l| !l.is_empty())
}

/// Appends `msg` as exactly one output line.
fn append_line(out: &mut Vec<u8>, msg: &[u8]) {
    let start = out.len();
    out.extend_from_slice(msg);
    // Only walk the bytes when there is something to replace.
    if msg.contains(&b'\n') || msg.contains(&b'\r') {
        for b in &mut out[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
    }
    out.push(b'\n');
}

// ---------------------------------------------------------------------------
// Fault injection

/// The fault settings as `GET /fault` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FaultSettings {
    /// false: /health answers 503.
    health_ok: bool,
    /// Every --ack acknowledgement waits this long.
    ack_delay_ms: u64,
    /// `ingest_errors_total{reason="injected"}` grows by this much per second.
    errors_per_sec: u64,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            health_ok: true,
            ack_delay_ms: 0,
            errors_per_sec: 0,
        }
    }
}

/// A `POST /fault` body: every field optional, a missing one is left unchanged.
/// Unknown fields are rejected so a typo is not silently a no-op.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultUpdate {
    health_ok: Option<bool>,
    ack_delay_ms: Option<u64>,
    errors_per_sec: Option<u64>,
}

impl FaultUpdate {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let update: Self =
            serde_json::from_slice(body).map_err(|e| format!("invalid fault JSON: {e}"))?;
        if update.ack_delay_ms.is_some_and(|ms| ms > MAX_ACK_DELAY_MS) {
            return Err(format!("ack_delay_ms must be at most {MAX_ACK_DELAY_MS}"));
        }
        if update
            .errors_per_sec
            .is_some_and(|n| n > MAX_ERRORS_PER_SEC)
        {
            return Err(format!(
                "errors_per_sec must be at most {MAX_ERRORS_PER_SEC}"
            ));
        }
        Ok(update)
    }

    fn apply(&self, current: FaultSettings) -> FaultSettings {
        FaultSettings {
            health_ok: self.health_ok.unwrap_or(current.health_ok),
            ack_delay_ms: self.ack_delay_ms.unwrap_or(current.ack_delay_ms),
            errors_per_sec: self.errors_per_sec.unwrap_or(current.errors_per_sec),
        }
    }
}

/// Live fault settings, read on hot paths (every ack), hence atomics. An update
/// is validated as a whole before any field is stored.
struct Faults {
    health_ok: AtomicBool,
    ack_delay_ms: AtomicU64,
    errors_per_sec: AtomicU64,
}

impl Faults {
    fn new(initial: FaultSettings) -> Self {
        Self {
            health_ok: AtomicBool::new(initial.health_ok),
            ack_delay_ms: AtomicU64::new(initial.ack_delay_ms),
            errors_per_sec: AtomicU64::new(initial.errors_per_sec),
        }
    }

    fn get(&self) -> FaultSettings {
        FaultSettings {
            health_ok: self.health_ok.load(Ordering::Relaxed),
            ack_delay_ms: self.ack_delay_ms.load(Ordering::Relaxed),
            errors_per_sec: self.errors_per_sec.load(Ordering::Relaxed),
        }
    }

    fn set(&self, settings: FaultSettings) {
        self.health_ok.store(settings.health_ok, Ordering::Relaxed);
        self.ack_delay_ms
            .store(settings.ack_delay_ms, Ordering::Relaxed);
        self.errors_per_sec
            .store(settings.errors_per_sec, Ordering::Relaxed);
    }

    fn ack_delay(&self) -> Duration {
        Duration::from_millis(self.ack_delay_ms.load(Ordering::Relaxed))
    }
}

/// Turns a rate into whole counter increments: after t seconds at rate r the
/// counter has grown by exactly ⌊r·t⌋, however the ticks fall. A rate change
/// starts a new count from that moment.
#[derive(Debug)]
struct ErrorPacer {
    rate: u64,
    since: Instant,
    done: u64,
}

impl ErrorPacer {
    fn new(now: Instant) -> Self {
        Self {
            rate: 0,
            since: now,
            done: 0,
        }
    }

    /// Increments due at `now` under `rate` per second.
    fn due(&mut self, rate: u64, now: Instant) -> u64 {
        if rate != self.rate {
            *self = Self {
                rate,
                since: now,
                done: 0,
            };
        }
        let ms = now.saturating_duration_since(self.since).as_millis();
        let total = u64::try_from(u128::from(rate) * ms / 1000).unwrap_or(u64::MAX);
        let add = total.saturating_sub(self.done);
        self.done = total;
        add
    }
}

/// Background ticker behind `errors_per_sec`.
async fn inject_errors(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(INJECT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pacer = ErrorPacer::new(Instant::now());
    loop {
        tick.tick().await;
        let rate = shared.faults.errors_per_sec.load(Ordering::Relaxed);
        let add = pacer.due(rate, Instant::now());
        if add > 0 {
            shared.injected_errors.inc_by(add);
        }
    }
}

// ---------------------------------------------------------------------------
// Metrics

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Counters for one transport (clones share the underlying atomics).
#[derive(Clone, Default)]
struct TransportCounters {
    messages: Counter,
    bytes: Counter,
}

type Labels = Vec<(&'static str, &'static str)>;

struct Shared {
    name: String,
    registry: Registry,
    udp: TransportCounters,
    tcp: TransportCounters,
    frame_errors: Counter,
    /// Errors reported on purpose (`errors_per_sec` fault).
    injected_errors: Counter,
    tcp_connections: Gauge,
    faults: Faults,
}

impl Shared {
    fn new(name: &str, faults: FaultSettings) -> Self {
        let mut registry = Registry::default();
        let messages = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let tcp_connections = Gauge::default();
        // Counters get their `_total` suffix from the encoder, info its `_info`.
        registry.register("ingest_messages", "Messages received", messages.clone());
        registry.register("ingest_bytes", "Message bytes received", bytes.clone());
        registry.register("ingest_errors", "Receive errors", errors.clone());
        registry.register(
            "ingest_tcp_connections",
            "Open TCP connections",
            tcp_connections.clone(),
        );
        registry.register(
            "ingest",
            "Sink identity",
            Info::new(vec![("name", name.to_owned())]),
        );
        // Created up front so every series is exported (as 0) from the start.
        let counters = |transport| TransportCounters {
            messages: messages
                .get_or_create(&vec![("transport", transport)])
                .clone(),
            bytes: bytes.get_or_create(&vec![("transport", transport)]).clone(),
        };
        let frame_errors = errors.get_or_create(&vec![("reason", "frame")]).clone();
        let injected_errors = errors.get_or_create(&vec![("reason", "injected")]).clone();
        Self {
            name: name.to_owned(),
            udp: counters("udp"),
            tcp: counters("tcp"),
            frame_errors,
            injected_errors,
            tcp_connections,
            registry,
            faults: Faults::new(faults),
        }
    }

    fn counters(&self, transport: Transport) -> &TransportCounters {
        match transport {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
        }
    }
}

/// Keeps `ingest_tcp_connections` right however a connection task ends.
struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// ---------------------------------------------------------------------------
// Output file writer

/// Pre-formatted output lines from one datagram or one TCP read.
struct Batch {
    transport: Transport,
    messages: u64,
    bytes: u64,
    data: Vec<u8>,
    /// `t=NS ` put before every line (--stamp): one receive, one arrival time.
    stamp: Option<String>,
}

impl Batch {
    fn new(transport: Transport) -> Self {
        Self {
            transport,
            messages: 0,
            bytes: 0,
            data: Vec::new(),
            stamp: STAMP
                .load(Ordering::Relaxed)
                .then(|| format!("t={} ", monotonic_ns())),
        }
    }

    fn add(&mut self, msg: &[u8]) {
        if let Some(stamp) = &self.stamp {
            self.data.extend_from_slice(stamp.as_bytes());
        }
        append_line(&mut self.data, msg);
        self.messages += 1;
        self.bytes += msg.len() as u64;
    }
}

/// Messages written but not yet flushed, per transport.
#[derive(Default)]
struct Unflushed {
    udp: (u64, u64),
    tcp: (u64, u64),
}

/// The single owner of the output file. Counters are bumped only after a
/// flush, so once /stats shows N messages the file holds N lines.
async fn run_writer(
    file: tokio::fs::File,
    mut batches: mpsc::Receiver<Batch>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> Result<()> {
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut unflushed = Unflushed::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => write_batch(&mut out, &mut unflushed, batch).await?,
                None => break,
            },
            _ = tick.tick() => flush(&mut out, &mut unflushed, &shared).await?,
            _ = stop.changed() => break,
        }
    }
    // Shutdown: take what is already queued, then flush once more.
    while let Ok(batch) = batches.try_recv() {
        write_batch(&mut out, &mut unflushed, batch).await?;
    }
    flush(&mut out, &mut unflushed, &shared).await
}

async fn write_batch(
    out: &mut BufWriter<tokio::fs::File>,
    unflushed: &mut Unflushed,
    batch: Batch,
) -> Result<()> {
    out.write_all(&batch.data)
        .await
        .context("writing output file")?;
    let slot = match batch.transport {
        Transport::Udp => &mut unflushed.udp,
        Transport::Tcp => &mut unflushed.tcp,
    };
    slot.0 += batch.messages;
    slot.1 += batch.bytes;
    Ok(())
}

async fn flush(
    out: &mut BufWriter<tokio::fs::File>,
    unflushed: &mut Unflushed,
    shared: &Shared,
) -> Result<()> {
    let pending = std::mem::take(unflushed);
    if pending.udp.0 == 0 && pending.tcp.0 == 0 {
        return Ok(());
    }
    out.flush().await.context("flushing output file")?;
    for (transport, (messages, bytes)) in
        [(Transport::Udp, pending.udp), (Transport::Tcp, pending.tcp)]
    {
        let counters = shared.counters(transport);
        counters.messages.inc_by(messages);
        counters.bytes.inc_by(bytes);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Listeners

/// Creates a non-blocking socket for `addr`; IPv6 sockets are V6ONLY so an
/// IPv4 and an IPv6 listener can share a port.
fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

fn bind_udp(addr: SocketAddr, rcvbuf: usize) -> Result<UdpSocket> {
    let sock = new_socket(addr, Type::DGRAM, Protocol::UDP)
        .with_context(|| format!("creating UDP socket for {addr}"))?;
    set_rcvbuf(&sock, rcvbuf, addr);
    sock.bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    UdpSocket::from_std(sock.into()).with_context(|| format!("registering UDP {addr}"))
}

/// SO_RCVBUF is capped by net.core.rmem_max; when privileged (the lab runs
/// as root) SO_RCVBUFFORCE gets the full size without touching sysctls.
fn set_rcvbuf(sock: &Socket, bytes: usize, addr: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
    if setsockopt(sock, RcvBufForce, &bytes).is_err() {
        if let Err(e) = sock.set_recv_buffer_size(bytes) {
            warn!(%addr, "setting SO_RCVBUF to {bytes}: {e}");
        }
    }
    // The kernel reports twice the usable size; compare against that.
    match sock.recv_buffer_size() {
        Ok(got) if got < bytes.saturating_mul(2) => warn!(
            %addr,
            "UDP receive buffer is {got} bytes (asked {bytes}); raise net.core.rmem_max"
        ),
        Ok(got) => debug!(%addr, "UDP receive buffer {got} bytes"),
        Err(e) => warn!(%addr, "reading SO_RCVBUF: {e}"),
    }
}

fn bind_tcp(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let sock = new_socket(addr, Type::STREAM, Protocol::TCP)
        .with_context(|| format!("creating {what} socket for {addr}"))?;
    // Lets a restarted sink rebind while old connections sit in TIME_WAIT.
    sock.set_reuse_address(true)
        .with_context(|| format!("setting SO_REUSEADDR on {what} {addr}"))?;
    sock.bind(&addr.into())
        .with_context(|| format!("binding {what} {addr}"))?;
    sock.listen(1024)
        .with_context(|| format!("listening on {what} {addr}"))?;
    TcpListener::from_std(sock.into()).with_context(|| format!("registering {what} {addr}"))
}

async fn serve_udp(sock: UdpSocket, addr: SocketAddr, tx: mpsc::Sender<Batch>) {
    let mut buf = vec![0u8; UDP_BUF];
    loop {
        let mut failed = None;
        if let Err(e) = sock.readable().await {
            failed = Some(e);
        }
        // Take everything already queued (up to a bound) in one batch: under a
        // burst that is one channel send per batch, not per datagram.
        let mut batch = Batch::new(Transport::Udp);
        while failed.is_none() && batch.data.len() < UDP_BATCH {
            match sock.try_recv(&mut buf) {
                Ok(len) => datagram_lines(&buf[..len]).for_each(|line| batch.add(line)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => failed = Some(e),
            }
        }
        if batch.messages > 0 && tx.send(batch).await.is_err() {
            return; // writer gone: shutting down
        }
        if let Some(e) = failed {
            warn!(%addr, "UDP receive: {e}");
            // Don't spin if the error persists.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Batch>,
    ack: bool,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle_connection(
                    stream,
                    peer,
                    shared.clone(),
                    tx.clone(),
                    ack,
                ));
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning on accept.
                warn!(%addr, "TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Batch>,
    ack: bool,
) {
    let _open = ConnectionGuard::new(&shared.tcp_connections);
    debug!(%peer, "TCP connection opened");
    // Acks are tiny writes; Nagle would hold them back and skew latency probes.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, "TCP_NODELAY: {e}");
    }
    let mut framer = Framer::default();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let len = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(len) => len,
            Err(e) => {
                debug!(%peer, "TCP read: {e}");
                return;
            }
        };
        let (messages, error) = match framer.push(&buf[..len]) {
            Ok(messages) => (messages, None),
            Err(e) => (e.parsed, Some(e.kind)),
        };
        if let Err(e) = deliver(&mut stream, &messages, &tx, ack, &shared.faults).await {
            debug!(%peer, "{e:#}");
            return;
        }
        if let Some(kind) = error {
            shared.frame_errors.inc();
            warn!(%peer, "closing TCP connection: {kind}");
            return;
        }
    }
    let tail = match framer.finish() {
        Ok(tail) => tail,
        Err(kind) => {
            shared.frame_errors.inc();
            warn!(%peer, "TCP connection ended badly: {kind}");
            None
        }
    };
    if let Err(e) = deliver(&mut stream, tail.as_slice(), &tx, ack, &shared.faults).await {
        debug!(%peer, "{e:#}");
    }
    debug!(%peer, "TCP connection closed");
}

/// Queues messages for the output file and, in ack mode, acks each one (after
/// the injected ack delay, if any).
async fn deliver(
    stream: &mut TcpStream,
    messages: &[Vec<u8>],
    tx: &mpsc::Sender<Batch>,
    ack: bool,
    faults: &Faults,
) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new(Transport::Tcp);
    for msg in messages {
        batch.add(msg);
    }
    tx.send(batch)
        .await
        .map_err(|_| anyhow::anyhow!("output writer has stopped"))?;
    if ack {
        // Sleeping here also stops reading this connection meanwhile: like a
        // really slow ingest, the sender's writes back up too.
        let delay = faults.ack_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        stream
            .write_all(&b"ok\n".repeat(messages.len()))
            .await
            .context("writing ack")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP

#[derive(Serialize)]
struct Stats<'a> {
    name: &'a str,
    udp_messages: u64,
    tcp_messages: u64,
    errors: u64,
    tcp_connections: i64,
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .route("/fault", get(get_fault).post(post_fault))
        .with_state(shared)
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.faults.get().health_ok {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy (injected fault)\n",
        )
            .into_response()
    }
}

async fn get_fault(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.faults.get()).into_response()
}

/// The body is read raw (not with axum's `Json`) so a request without a JSON
/// content type, e.g. `curl -d`, still works, and errors are plain text.
async fn post_fault(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match FaultUpdate::parse(&body) {
        Ok(update) => {
            let settings = update.apply(shared.faults.get());
            shared.faults.set(settings);
            info!(?settings, "fault settings changed");
            Json(settings).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &shared.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(Stats {
        name: &shared.name,
        udp_messages: shared.udp.messages.get(),
        tcp_messages: shared.tcp.messages.get(),
        errors: shared.frame_errors.get(),
        tcp_connections: shared.tcp_connections.get(),
    })
    .into_response()
}

// ---------------------------------------------------------------------------

async fn open_out(path: &std::path::Path) -> Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| format!("opening output file {}", path.display()))
}

#[tokio::main]
async fn main() -> ExitCode {
    // One readable line (not anyhow's Debug dump with a backtrace) on failure.
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest-sink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // stdout carries only the READY line the lab waits for.
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    STAMP.store(args.stamp, Ordering::Relaxed);
    if args.udp.is_empty() && args.tcp.is_empty() {
        bail!("nothing to receive on: give at least one --udp or --tcp address");
    }

    let faults = FaultSettings {
        health_ok: !args.unhealthy,
        ack_delay_ms: args.ack_delay_ms,
        ..FaultSettings::default()
    };
    let shared = Arc::new(Shared::new(&args.name, faults));
    let out = open_out(&args.out).await?;
    let udp = args
        .udp
        .iter()
        .map(|&addr| Ok((bind_udp(addr, args.rcvbuf)?, addr)))
        .collect::<Result<Vec<_>>>()?;
    let tcp = args
        .tcp
        .iter()
        .map(|&addr| Ok((bind_tcp(addr, "TCP")?, addr)))
        .collect::<Result<Vec<_>>>()?;
    let http = args
        .http
        .iter()
        .map(|&addr| Ok((bind_tcp(addr, "HTTP")?, addr)))
        .collect::<Result<Vec<_>>>()?;
    // Installed before READY so a SIGTERM sent right after it still flushes.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut writer = tokio::spawn(run_writer(out, rx, stop_rx, shared.clone()));
    for (sock, addr) in udp {
        tokio::spawn(serve_udp(sock, addr, tx.clone()));
    }
    for (listener, addr) in tcp {
        tokio::spawn(serve_tcp(
            listener,
            addr,
            shared.clone(),
            tx.clone(),
            args.ack,
        ));
    }
    drop(tx);
    tokio::spawn(inject_errors(shared.clone()));
    let app = router(shared.clone());
    for (listener, addr) in http {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(%addr, "HTTP server stopped: {e}");
            }
        });
    }

    info!(name = %args.name, out = %args.out.display(), ack = args.ack, ?faults, "listening");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY").context("writing READY")?;
    stdout.flush().context("flushing stdout")?;
    drop(stdout);

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: flushing and exiting"),
        _ = sigint.recv() => info!("SIGINT: flushing and exiting"),
        res = &mut writer => {
            // The writer only ends early on an I/O error.
            return match res {
                Ok(Ok(())) => bail!("output writer stopped unexpectedly"),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e).context("output writer task failed"),
            };
        }
    }
    // The receiver lives in the writer task, which is still running here.
    let _ = stop_tx.send(true);
    writer.await.context("output writer task failed")??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_all(framer: &mut Framer, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(framer.push(chunk)?);
        }
        Ok(out)
    }

    fn msgs(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|m| m.as_bytes().to_vec()).collect()
    }

    #[test]
    fn lf_framing() -> Result<(), FrameError> {
        let mut f = Framer::default();
        let got = push_all(&mut f, &[b"<14>a\n<14>b\r\n\n<14>c"])?;
        assert_eq!(got, msgs(&["<14>a", "<14>b"]));
        assert_eq!(f.push(b"\n")?, msgs(&["<14>c"]));
        assert_eq!(f.finish(), Ok(None));
        Ok(())
    }

    #[test]
    fn unterminated_lf_tail_is_delivered_at_eof() -> Result<(), FrameError> {
        let mut f = Framer::default();
        assert!(f.push(b"<14>tail")?.is_empty());
        assert_eq!(f.finish(), Ok(Some(b"<14>tail".to_vec())));
        Ok(())
    }

    #[test]
    fn octet_counting() -> Result<(), FrameError> {
        let mut f = Framer::default();
        // The counted message may itself contain LF.
        let got = f.push(b"5 hello9 <14>x\ny z")?;
        assert_eq!(got, msgs(&["hello", "<14>x\ny z"]));
        assert_eq!(f.finish(), Ok(None));
        Ok(())
    }

    #[test]
    fn mixed_framing() -> Result<(), FrameError> {
        let mut f = Framer::default();
        let got = f.push(b"<14>lf one\n6 <14>oc<14>lf two\n3 end")?;
        assert_eq!(got, msgs(&["<14>lf one", "<14>oc", "<14>lf two", "end"]));
        Ok(())
    }

    #[test]
    fn split_at_every_byte_boundary() -> Result<(), FrameError> {
        let stream: &[u8] = b"11 <14>counted<14>line\r\n3 abc<14>last\n";
        let want = msgs(&["<14>counted", "<14>line", "abc", "<14>last"]);
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut f = Framer::default();
            assert_eq!(push_all(&mut f, &[a, b])?, want, "cut at {cut}");
            assert_eq!(f.finish(), Ok(None), "cut at {cut}");
        }
        // And one byte per read.
        let mut f = Framer::default();
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(push_all(&mut f, &bytes)?, want);
        Ok(())
    }

    #[test]
    fn oversize_length_rejected() {
        let mut f = Framer::default();
        let err = f.push(b"1048577 x").err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::Oversize));
        // Rejected as soon as the digits say so, before the payload arrives.
        let mut f = Framer::default();
        let err = f.push(b"9999999").err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::Oversize));
    }

    #[test]
    fn max_length_accepted() -> Result<(), FrameError> {
        let mut f = Framer::default();
        let mut frame = format!("{MAX_FRAME} ").into_bytes();
        frame.resize(frame.len() + MAX_FRAME, b'x');
        let got = f.push(&frame)?;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_FRAME);
        Ok(())
    }

    #[test]
    fn overlong_lf_line_rejected() {
        let mut f = Framer::default();
        let err = f.push(&vec![b'x'; MAX_FRAME + 1]).err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::Oversize));
    }

    #[test]
    fn bad_length_rejected_and_earlier_frames_kept() {
        let mut f = Framer::default();
        let err = f.push(b"<14>ok\n12a <14>x");
        match err {
            Err(e) => {
                assert_eq!(e.kind, FrameErrorKind::BadLength);
                assert_eq!(e.parsed, msgs(&["<14>ok"]));
            }
            Ok(m) => panic!("accepted bad length: {m:?}"),
        }
        let mut f = Framer::default();
        let err = f.push(b"12\n").err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::BadLength));
        let mut f = Framer::default();
        let err = f.push(b"00000001 x").err().map(|e| e.kind);
        assert_eq!(err, Some(FrameErrorKind::BadLength));
    }

    #[test]
    fn truncated_counted_frame_at_eof() -> Result<(), FrameError> {
        let mut f = Framer::default();
        assert!(f.push(b"10 short")?.is_empty());
        assert_eq!(f.finish(), Err(FrameErrorKind::Truncated));
        Ok(())
    }

    #[test]
    fn datagram_splitting() {
        let lines: Vec<&[u8]> = datagram_lines(b"<14>one\n").collect();
        assert_eq!(lines, vec![&b"<14>one"[..]]);
        let lines: Vec<&[u8]> = datagram_lines(b"a\n\nb\r\nc").collect();
        assert_eq!(lines, vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(datagram_lines(b"\n").count(), 0);
    }

    #[test]
    fn output_line_has_no_inner_newlines() {
        let mut out = Vec::new();
        append_line(&mut out, b"a\r\nb\nc");
        assert_eq!(out, b"a  b c\n");
    }

    #[test]
    fn fault_update_parsing() -> Result<(), String> {
        assert_eq!(FaultUpdate::parse(b"{}")?, FaultUpdate::default());
        assert_eq!(
            FaultUpdate::parse(br#"{"health_ok": false, "ack_delay_ms": 250}"#)?,
            FaultUpdate {
                health_ok: Some(false),
                ack_delay_ms: Some(250),
                errors_per_sec: None,
            }
        );
        // null is "leave unchanged", like a missing field.
        assert_eq!(
            FaultUpdate::parse(br#"{"errors_per_sec": 5, "health_ok": null}"#)?,
            FaultUpdate {
                errors_per_sec: Some(5),
                ..FaultUpdate::default()
            }
        );
        for (body, want) in [
            (&b""[..], "invalid fault JSON"),
            (b"[]", "invalid fault JSON"),
            (br#"{"health": false}"#, "unknown field `health`"),
            (br#"{"health_ok": "no"}"#, "invalid type"),
            (br#"{"ack_delay_ms": -1}"#, "invalid value"),
            (br#"{"ack_delay_ms": 600001}"#, "at most 600000"),
            (br#"{"errors_per_sec": 1000001}"#, "at most 1000000"),
        ] {
            match FaultUpdate::parse(body) {
                Ok(u) => panic!("{:?} accepted: {u:?}", String::from_utf8_lossy(body)),
                Err(e) => assert!(e.contains(want), "{e}"),
            }
        }
        Ok(())
    }

    #[test]
    fn fault_update_leaves_missing_fields_alone() -> Result<(), String> {
        let start = FaultSettings {
            health_ok: false,
            ack_delay_ms: 10,
            errors_per_sec: 3,
        };
        assert_eq!(FaultUpdate::parse(b"{}")?.apply(start), start);
        let got = FaultUpdate::parse(br#"{"health_ok": true}"#)?.apply(start);
        assert_eq!(
            got,
            FaultSettings {
                health_ok: true,
                ..start
            }
        );
        let faults = Faults::new(FaultSettings::default());
        faults.set(got);
        assert_eq!(faults.get(), got);
        assert_eq!(faults.ack_delay(), Duration::from_millis(10));
        Ok(())
    }

    #[test]
    fn fault_settings_json_shape() -> Result<(), serde_json::Error> {
        let json = serde_json::to_string(&FaultSettings::default())?;
        assert_eq!(
            json,
            r#"{"health_ok":true,"ack_delay_ms":0,"errors_per_sec":0}"#
        );
        Ok(())
    }

    #[test]
    fn error_pacer_counts_exactly() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = ErrorPacer::new(t0);
        assert_eq!(p.due(0, at(500)), 0);
        // Rate 7/s from 1000 ms: ticks at uneven times still sum to ⌊7·t⌋.
        assert_eq!(p.due(7, at(1000)), 0);
        let mut total = 0;
        for ms in [1100, 1250, 1333, 1700, 2000, 2999, 3000] {
            total += p.due(7, at(ms));
        }
        assert_eq!(total, 14);
        // A rate change restarts the count from that moment.
        assert_eq!(p.due(1000, at(3000)), 0);
        assert_eq!(p.due(1000, at(3100)), 100);
        assert_eq!(p.due(0, at(4000)), 0);
        assert_eq!(p.due(0, at(9000)), 0);
    }

    async fn body_text(resp: Response) -> String {
        match axum::body::to_bytes(resp.into_body(), 1 << 16).await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("<body error: {e}>"),
        }
    }

    #[tokio::test]
    async fn fault_endpoints_drive_health_and_metrics() {
        let shared = Arc::new(Shared::new("blue", FaultSettings::default()));
        let resp = health(State(shared.clone())).await;
        assert_eq!(resp.status(), StatusCode::OK);

        let resp = post_fault(
            State(shared.clone()),
            Bytes::from_static(br#"{"health_ok": false, "errors_per_sec": 50}"#),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            body_text(resp).await,
            r#"{"health_ok":false,"ack_delay_ms":0,"errors_per_sec":50}"#
        );
        assert_eq!(
            health(State(shared.clone())).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        let resp = post_fault(State(shared.clone()), Bytes::from_static(b"{\"bogus\": 1}")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(body_text(resp).await.contains("unknown field"));
        // A rejected update changes nothing.
        let resp = get_fault(State(shared.clone())).await;
        assert_eq!(
            body_text(resp).await,
            r#"{"health_ok":false,"ack_delay_ms":0,"errors_per_sec":50}"#
        );

        // The injected series exists from the start and carries what the ticker adds.
        shared.injected_errors.inc_by(3);
        let mut text = String::new();
        assert!(encode(&mut text, &shared.registry).is_ok());
        assert!(
            text.contains("ingest_errors_total{reason=\"injected\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ingest_errors_total{reason=\"frame\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn ticker_injects_errors_at_the_rate() {
        let shared = Arc::new(Shared::new(
            "blue",
            FaultSettings {
                errors_per_sec: 100,
                ..FaultSettings::default()
            },
        ));
        let ticker = tokio::spawn(inject_errors(shared.clone()));
        tokio::time::sleep(Duration::from_millis(450)).await;
        ticker.abort();
        // ≈ 100/s over the ticks that fell within 450 ms (the first at 0 adds nothing).
        let got = shared.injected_errors.get();
        assert!((10..=50).contains(&got), "{got}");
    }

    #[tokio::test]
    async fn ack_delay_holds_back_acks() -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        let faults = Faults::new(FaultSettings {
            ack_delay_ms: 80,
            ..FaultSettings::default()
        });
        let (tx, mut rx) = mpsc::channel(4);
        let start = Instant::now();
        deliver(&mut server, &msgs(&["a", "b"]), &tx, true, &faults).await?;
        assert!(start.elapsed() >= Duration::from_millis(80));
        let mut acks = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut acks)).await??;
        assert_eq!(&acks, b"ok\nok\n");
        assert_eq!(rx.recv().await.map(|b| b.messages), Some(2));

        // No delay configured: acked right away.
        faults.set(FaultSettings::default());
        let start = Instant::now();
        deliver(&mut server, &msgs(&["c"]), &tx, true, &faults).await?;
        assert!(start.elapsed() < Duration::from_millis(80));
        Ok(())
    }
}
