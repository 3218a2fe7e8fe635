//! Reference log-ingest sink for the switcher lab: the backend that runs as
//! "blue" or "green". It receives syslog over UDP and TCP (RFC 6587 framing),
//! appends every message as one line to an output file, optionally acks each
//! TCP message (latency probes) and serves health, Prometheus metrics and JSON
//! stats over HTTP.

use std::{
    io::Write as _, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration,
};

use anyhow::{bail, Context, Result};
use axum::{
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
use serde::Serialize;
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
    tcp_connections: Gauge,
}

impl Shared {
    fn new(name: &str) -> Self {
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
        Self {
            name: name.to_owned(),
            udp: counters("udp"),
            tcp: counters("tcp"),
            frame_errors,
            tcp_connections,
            registry,
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
}

impl Batch {
    fn new(transport: Transport) -> Self {
        Self {
            transport,
            messages: 0,
            bytes: 0,
            data: Vec::new(),
        }
    }

    fn add(&mut self, msg: &[u8]) {
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
        if let Err(e) = deliver(&mut stream, &messages, &tx, ack).await {
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
    if let Err(e) = deliver(&mut stream, tail.as_slice(), &tx, ack).await {
        debug!(%peer, "{e:#}");
    }
    debug!(%peer, "TCP connection closed");
}

/// Queues messages for the output file and, in ack mode, acks each one.
async fn deliver(
    stream: &mut TcpStream,
    messages: &[Vec<u8>],
    tx: &mpsc::Sender<Batch>,
    ack: bool,
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
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .with_state(shared)
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
    if args.udp.is_empty() && args.tcp.is_empty() {
        bail!("nothing to receive on: give at least one --udp or --tcp address");
    }

    let shared = Arc::new(Shared::new(&args.name));
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
    let app = router(shared.clone());
    for (listener, addr) in http {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(%addr, "HTTP server stopped: {e}");
            }
        });
    }

    info!(name = %args.name, out = %args.out.display(), ack = args.ack, "listening");
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
}
