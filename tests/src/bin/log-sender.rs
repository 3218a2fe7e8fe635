//! Bounded load generator for the switcher lab: sends numbered syslog lines
//! (`stream=NAME seq=N`) over UDP or TCP at a paced rate, so tests can check
//! exactly which lines reached which backend across a blue/green flip.
//! Every run is bounded by --count and --max-seconds. Prints `sent N` each
//! second and a final JSON summary; exits 2 if any TCP connection failed.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

/// Queued TCP bytes are written out once they reach this size, or before sleeping.
const FLUSH_AT: usize = 64 * 1024;
const UDP_SNDBUF: usize = 8 * 1024 * 1024;
/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// How long workers may overrun --max-seconds (closing, joining) before the
/// main thread gives up on them.
const GRACE: Duration = Duration::from_secs(2);
/// After our FIN, how long to wait for the peer's EOF (or a reset).
const CLOSE_WAIT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);
/// Cap on per-error log lines (a dead UDP target fails every send).
const MAX_LOGGED_ERRORS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Framing {
    /// RFC 6587 octet counting: `LEN SP MSG`.
    Octet,
    /// Non-transparent framing: MSG LF.
    Lf,
}

#[derive(Parser, Debug)]
#[command(name = "log-sender", about = "Bounded syslog load generator (lab)")]
struct Args {
    /// Destination address, IPv4 or [IPv6]:port.
    #[arg(long, value_name = "ADDR:PORT")]
    target: SocketAddr,
    /// Transport.
    #[arg(long, value_enum)]
    proto: Proto,
    /// Number of lines to send.
    #[arg(long, value_name = "N")]
    count: u64,
    /// Lines per second over all connections; 0 = as fast as possible.
    #[arg(long, value_name = "PER_SEC")]
    rate: f64,
    /// Stream name put in every line (suffixed -cK per TCP connection when
    /// there are several).
    #[arg(long, value_name = "NAME", default_value = "s")]
    stream: String,
    /// First sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    start: u64,
    /// Minimum line size (without framing), padded with 'x'.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    size: usize,
    /// TCP framing (ignored for UDP).
    #[arg(long, value_enum, default_value_t = Framing::Octet)]
    framing: Framing,
    /// TCP connections; lines are spread round-robin across them (UDP uses one socket).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    connections: u64,
    /// TCP: keep the connection(s) open this long after the last line.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    hold_ms: u64,
    /// Hard bound on the whole run (sending and holding).
    #[arg(long, value_name = "S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_seconds: u64,
    /// Also write the JSON summary line to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// What every worker needs to know; read-only once the run starts.
struct Plan {
    target: SocketAddr,
    first_seq: u64,
    count: u64,
    /// Seconds between consecutive lines (globally); 0 = unpaced.
    interval: f64,
    stream: String,
    size: usize,
    framing: Framing,
    connections: u64,
    hold: Duration,
    t0: Instant,
    deadline: Instant,
}

impl Plan {
    /// When line `index` is due, or None if that is past the deadline.
    /// Deadlines come from t0, not from the previous send, so a late line
    /// doesn't push back all the following ones.
    fn due(&self, index: u64) -> Option<Instant> {
        let at = Duration::try_from_secs_f64(index as f64 * self.interval)
            .ok()
            .and_then(|offset| self.t0.checked_add(offset))?;
        (at < self.deadline).then_some(at)
    }

    fn seq(&self, index: u64) -> u64 {
        self.first_seq + index
    }

    fn stream_name(&self, connection: u64) -> String {
        if self.connections > 1 {
            format!("{}-c{connection}", self.stream)
        } else {
            self.stream.clone()
        }
    }
}

/// Run-wide counters, shared by the workers, the progress printer and main.
struct Progress {
    sent: AtomicU64,
    errors: AtomicU64,
    tcp_failed: AtomicBool,
    min_seq: AtomicU64,
    max_seq: AtomicU64,
    /// Milliseconds from t0 to the end of the last worker's send loop.
    send_end_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            tcp_failed: AtomicBool::new(false),
            min_seq: AtomicU64::new(u64::MAX),
            max_seq: AtomicU64::new(0),
            send_end_ms: AtomicU64::new(0),
        }
    }

    fn record(&self, first: u64, last: u64, lines: u64) {
        self.min_seq.fetch_min(first, Ordering::Relaxed);
        self.max_seq.fetch_max(last, Ordering::Relaxed);
        self.sent.fetch_add(lines, Ordering::Relaxed);
    }

    fn error(&self) -> u64 {
        self.errors.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn tcp_error(&self) {
        self.error();
        self.tcp_failed.store(true, Ordering::Relaxed);
    }

    fn send_loop_done(&self, t0: Instant) {
        let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.send_end_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn summary(&self) -> Summary {
        let sent = self.sent.load(Ordering::Relaxed);
        Summary {
            sent,
            errors: self.errors.load(Ordering::Relaxed),
            elapsed_ms: self.send_end_ms.load(Ordering::Relaxed),
            first_seq: (sent > 0).then(|| self.min_seq.load(Ordering::Relaxed)),
            last_seq: (sent > 0).then(|| self.max_seq.load(Ordering::Relaxed)),
        }
    }
}

#[derive(Serialize)]
struct Summary {
    sent: u64,
    errors: u64,
    /// Duration of the send phase (holding excluded).
    elapsed_ms: u64,
    /// Lowest and highest seq actually sent; null when nothing was sent.
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

/// The syslog line for `seq`, padded to at least `min_size` bytes.
fn make_line(stream: &str, seq: u64, min_size: usize) -> String {
    let mut line = format!("<14>1 - lab log-sender - - - stream={stream} seq={seq}");
    if line.len() < min_size {
        // The space keeps `seq=N` a token of its own for whoever parses it.
        line.push(' ');
        let pad = min_size.saturating_sub(line.len());
        line.extend(std::iter::repeat_n('x', pad));
    }
    line
}

fn append_frame(out: &mut Vec<u8>, framing: Framing, line: &str) {
    match framing {
        Framing::Octet => {
            out.extend_from_slice(line.len().to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(line.as_bytes());
        }
        Framing::Lf => {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
}

/// Sleeps until `when`; never spins.
fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        thread::sleep(when - now);
    }
}

// ---------------------------------------------------------------------------
// UDP

fn run_udp(plan: &Plan, progress: &Progress) -> Result<()> {
    let target = plan.target;
    let sock = Socket::new(
        Domain::for_address(target),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .context("creating UDP socket")?;
    set_sndbuf(&sock, UDP_SNDBUF);
    // Connected, so an ICMP unreachable surfaces as an error on a later send
    // instead of silent loss.
    sock.connect(&target.into())
        .with_context(|| format!("connecting UDP socket to {target}"))?;
    let sock: UdpSocket = sock.into();
    // A full send buffer must not stall the run past its bound.
    sock.set_write_timeout(Some(Duration::from_secs(1)))
        .context("setting UDP send timeout")?;
    let stream = plan.stream_name(0);
    for index in 0..plan.count {
        let Some(due) = plan.due(index) else { break };
        sleep_until(due);
        if Instant::now() >= plan.deadline {
            break;
        }
        let seq = plan.seq(index);
        let line = make_line(&stream, seq, plan.size);
        match sock.send(line.as_bytes()) {
            Ok(_) => progress.record(seq, seq, 1),
            Err(e) => {
                let n = progress.error();
                if n <= MAX_LOGGED_ERRORS {
                    eprintln!("log-sender: UDP send of seq {seq} to {target}: {e}");
                }
            }
        }
    }
    progress.send_loop_done(plan.t0);
    Ok(())
}

/// SO_SNDBUF is capped by net.core.wmem_max; SO_SNDBUFFORCE lifts the cap
/// when privileged, as in the lab. Best effort: a smaller buffer still works.
fn set_sndbuf(sock: &Socket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt::SndBufForce};
    if setsockopt(sock, SndBufForce, &bytes).is_err() {
        if let Err(e) = sock.set_send_buffer_size(bytes) {
            eprintln!("log-sender: setting SO_SNDBUF to {bytes}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// TCP

/// Lines queued for one TCP connection and the seq range they cover.
struct Outbox {
    buf: Vec<u8>,
    first: u64,
    last: u64,
    lines: u64,
}

impl Outbox {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(2 * FLUSH_AT),
            first: 0,
            last: 0,
            lines: 0,
        }
    }

    fn push(&mut self, framing: Framing, seq: u64, line: &str) {
        if self.lines == 0 {
            self.first = seq;
        }
        self.last = seq;
        self.lines += 1;
        append_frame(&mut self.buf, framing, line);
    }

    /// Lines count as sent once the kernel has accepted all their bytes.
    fn flush(&mut self, stream: &mut TcpStream, progress: &Progress) -> io::Result<()> {
        if self.lines == 0 {
            return Ok(());
        }
        stream.write_all(&self.buf)?;
        progress.record(self.first, self.last, self.lines);
        self.buf.clear();
        self.lines = 0;
        Ok(())
    }
}

/// Reads (and discards) whatever the peer sends, e.g. acks from a sink in
/// --ack mode, so neither side's buffers fill up; this is also where a reset
/// or an early close by the peer shows up.
struct ReplyDrain {
    handle: thread::JoinHandle<io::Result<()>>,
    /// Set before we send FIN: an EOF after it is the expected close.
    closing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl ReplyDrain {
    fn start(stream: &TcpStream) -> Result<Self> {
        let mut reader = stream.try_clone().context("cloning TCP socket")?;
        reader
            .set_read_timeout(Some(POLL))
            .context("setting TCP read timeout")?;
        let closing = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (closing2, stop2) = (closing.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) if closing2.load(Ordering::Relaxed) => return Ok(()),
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed the connection",
                        ))
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        if stop2.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        Ok(Self {
            handle,
            closing,
            stop,
        })
    }

    /// True once the reader has stopped on its own, i.e. the connection failed.
    fn failed(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops the reader, after giving it until `until` to see the peer's EOF.
    fn finish(self, until: Instant) -> Result<()> {
        while !self.handle.is_finished() && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(res) => res.context("reading from peer"),
            Err(_) => bail!("reply reader thread panicked"),
        }
    }
}

/// One TCP connection: sends lines k, k+K, k+2K, … on the global schedule,
/// holds, then closes.
fn run_tcp_connection(plan: &Plan, progress: &Progress, k: u64) -> Result<()> {
    let target = plan.target;
    let left = plan.deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("no time left to connect");
    }
    let mut stream = TcpStream::connect_timeout(&target, left.min(Duration::from_secs(5)))
        .with_context(|| format!("connecting to {target}"))?;
    // Paced lines should leave when due, not when Nagle decides.
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    // A peer that stops reading must not block us forever.
    stream
        .set_write_timeout(Some(left + GRACE))
        .context("setting TCP send timeout")?;
    let replies = ReplyDrain::start(&stream)?;
    let send = send_lines(plan, progress, k, &mut stream, &replies);
    progress.send_loop_done(plan.t0);
    if let Err(e) = send {
        // Prefer the reader's view (e.g. "connection reset") when it has one.
        if replies.failed() {
            return replies.finish(Instant::now()).and(Err(e));
        }
        return Err(e);
    }

    let hold_end = Instant::now()
        .checked_add(plan.hold)
        .map_or(plan.deadline, |t| t.min(plan.deadline));
    while Instant::now() < hold_end && !replies.failed() {
        sleep_until(hold_end.min(Instant::now() + POLL));
    }
    if replies.failed() {
        return replies.finish(Instant::now());
    }

    replies.closing.store(true, Ordering::Relaxed);
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        eprintln!("log-sender: connection {k}: shutdown: {e}");
    }
    let close_by = (Instant::now() + CLOSE_WAIT).min(plan.deadline + GRACE / 2);
    replies.finish(close_by)
}

fn send_lines(
    plan: &Plan,
    progress: &Progress,
    k: u64,
    stream: &mut TcpStream,
    replies: &ReplyDrain,
) -> Result<()> {
    let name = plan.stream_name(k);
    let mut outbox = Outbox::new();
    let mut index = k;
    while index < plan.count {
        let Some(due) = plan.due(index) else { break };
        if due > Instant::now() {
            // About to sleep: get queued lines on the wire first.
            outbox
                .flush(stream, progress)
                .with_context(|| format!("sending to {}", plan.target))?;
            if replies.failed() {
                bail!("connection failed");
            }
            sleep_until(due);
        }
        if Instant::now() >= plan.deadline {
            break;
        }
        let seq = plan.seq(index);
        outbox.push(plan.framing, seq, &make_line(&name, seq, plan.size));
        if outbox.buf.len() >= FLUSH_AT {
            outbox
                .flush(stream, progress)
                .with_context(|| format!("sending to {}", plan.target))?;
            if replies.failed() {
                bail!("connection failed");
            }
        }
        index += plan.connections;
    }
    outbox
        .flush(stream, progress)
        .with_context(|| format!("sending to {}", plan.target))
}

// ---------------------------------------------------------------------------

fn print_progress(progress: &Progress, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_secs(1)) {
        let mut out = io::stdout().lock();
        // Progress is informational; a closed stdout must not stop the run.
        let _ = writeln!(out, "sent {}", progress.sent.load(Ordering::Relaxed));
        let _ = out.flush();
    }
}

fn build_plan(args: &Args) -> Result<Plan> {
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a finite number >= 0, got {}", args.rate);
    }
    if args.start.checked_add(args.count).is_none() {
        bail!("--start + --count overflows");
    }
    if args.proto == Proto::Udp && args.size > MAX_UDP_PAYLOAD {
        bail!(
            "--size {} exceeds the largest UDP payload ({MAX_UDP_PAYLOAD})",
            args.size
        );
    }
    let t0 = Instant::now();
    let deadline = t0
        .checked_add(Duration::from_secs(args.max_seconds))
        .context("--max-seconds too large")?;
    Ok(Plan {
        target: args.target,
        first_seq: args.start,
        count: args.count,
        interval: if args.rate > 0.0 {
            1.0 / args.rate
        } else {
            0.0
        },
        stream: args.stream.clone(),
        size: args.size,
        framing: args.framing,
        connections: match args.proto {
            Proto::Udp => 1,
            Proto::Tcp => args.connections,
        },
        hold: Duration::from_millis(args.hold_ms),
        t0,
        deadline,
    })
}

fn run(args: Args) -> Result<ExitCode> {
    let plan = Arc::new(build_plan(&args)?);
    let progress = Arc::new(Progress::new());

    let (done_tx, done_rx) = mpsc::channel::<()>();
    for k in 0..plan.connections {
        let (plan, progress, done) = (plan.clone(), progress.clone(), done_tx.clone());
        thread::Builder::new()
            .name(format!("conn-{k}"))
            .spawn(move || {
                let res = match args.proto {
                    Proto::Udp => run_udp(&plan, &progress),
                    Proto::Tcp => run_tcp_connection(&plan, &progress, k).inspect_err(|_| {
                        progress.tcp_error();
                    }),
                };
                if let Err(e) = res {
                    eprintln!("log-sender: connection {k}: {e:#}");
                }
                let _ = done.send(());
            })
            .context("spawning worker thread")?;
    }
    drop(done_tx);

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let printer = {
        let progress = progress.clone();
        thread::spawn(move || print_progress(&progress, &stop_rx))
    };

    // Hard bound: workers that overrun the deadline are abandoned (and
    // counted as failed) rather than waited for.
    let give_up = plan.deadline + GRACE;
    let mut finished = 0;
    while finished < plan.connections {
        let left = give_up.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(()) => finished += 1,
            Err(_) => break,
        }
    }
    let stuck = plan.connections - finished;
    if stuck > 0 {
        eprintln!("log-sender: {stuck} connection(s) still busy at the time bound; giving up");
        for _ in 0..stuck {
            progress.tcp_error();
        }
        progress.send_loop_done(plan.t0);
    }

    let _ = stop_tx.send(());
    if printer.join().is_err() {
        eprintln!("log-sender: progress thread panicked");
    }

    let json = serde_json::to_string(&progress.summary()).context("encoding summary")?;
    let mut out = io::stdout().lock();
    writeln!(out, "{json}").context("writing summary")?;
    out.flush().context("writing summary")?;
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    Ok(if progress.tcp_failed.load(Ordering::Relaxed) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error, which would read as a TCP failure here.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("log-sender: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_and_padding() {
        let line = make_line("s", 7, 0);
        assert_eq!(line, "<14>1 - lab log-sender - - - stream=s seq=7");
        let padded = make_line("s", 7, 60);
        assert_eq!(padded.len(), 60);
        assert!(padded.starts_with(&format!("{line} x")));
        assert!(padded.ends_with('x'));
    }

    #[test]
    fn framing() {
        let mut out = Vec::new();
        append_frame(&mut out, Framing::Octet, "abc");
        append_frame(&mut out, Framing::Lf, "de");
        assert_eq!(out, b"3 abcde\n");
    }

    #[test]
    fn schedule_is_bounded_by_deadline() {
        let t0 = Instant::now();
        let plan = Plan {
            target: SocketAddr::from(([127, 0, 0, 1], 9)),
            first_seq: 5,
            count: 100,
            interval: 0.5,
            stream: "s".into(),
            size: 0,
            framing: Framing::Octet,
            connections: 2,
            hold: Duration::ZERO,
            t0,
            deadline: t0 + Duration::from_secs(10),
        };
        assert_eq!(plan.due(0), Some(t0));
        assert_eq!(plan.due(4), Some(t0 + Duration::from_secs(2)));
        assert_eq!(plan.due(20), None);
        assert_eq!(plan.seq(3), 8);
        assert_eq!(plan.stream_name(1), "s-c1");
    }
}
