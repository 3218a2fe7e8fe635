//! Synthetic log load sent straight to one backend (not through the VIP), so the candidate and
//! the serving backend can be compared under the same load before a flip.
//!
//! Lines are RFC 5424 syslog, `<14>1 - switcher-probe switcher - - [switcher@32473 probe="1"]
//! seq=N`, padded to `line_size`. UDP sends one line per datagram; TCP uses RFC 6587 octet
//! counting. Line `seq` goes to connection `seq % connections`, due at `seq / rate` seconds
//! after that connection is ready, so the total rate is `rate` however many connections.

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream, UdpSocket,
    },
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

use super::Percentiles;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LoadProtocol {
    Udp,
    Tcp,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LoadSpec {
    pub protocol: LoadProtocol,
    /// Lines to send in total.
    pub lines: u64,
    /// Lines per second over all connections; 0 sends as fast as the backend takes them.
    pub rate: u64,
    /// Minimum line length in bytes (the line is padded with `x` up to it).
    pub line_size: usize,
    /// TCP connections (UDP: sockets, i.e. source ports) the lines are spread over.
    pub connections: u32,
    /// TCP only: the backend answers every message with one line (`ok\n`); latency is then
    /// measured from write to ack.
    pub ack: bool,
    /// Bound on the whole run: what is not sent (or acked) by then counts as errors.
    pub timeout: Duration,
}

/// Largest line accepted over TCP (the reference sink's frame limit).
pub const MAX_TCP_LINE: usize = 1 << 20;
/// Largest UDP payload over IPv4.
pub const MAX_UDP_LINE: usize = 65_507;
/// Bound on connections (each is a file descriptor and a task).
pub const MAX_CONNECTIONS: u32 = 4096;

impl LoadSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(format!(
                "connections must be 1..={MAX_CONNECTIONS}, got {}",
                self.connections
            ));
        }
        match self.protocol {
            LoadProtocol::Udp if self.ack => Err("ack needs protocol tcp".to_owned()),
            LoadProtocol::Udp if self.line_size > MAX_UDP_LINE => Err(format!(
                "line_size {} exceeds the UDP limit of {MAX_UDP_LINE}",
                self.line_size
            )),
            LoadProtocol::Tcp if self.line_size > MAX_TCP_LINE => Err(format!(
                "line_size {} exceeds {MAX_TCP_LINE}",
                self.line_size
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LoadReport {
    pub target: SocketAddr,
    /// Lines completely written to the socket.
    pub sent: u64,
    /// Lines acknowledged (ack mode only).
    pub acked: u64,
    /// Lines not delivered: never sent (connect failure, timeout), failed to send, or (ack
    /// mode) sent but not acked. `sent + errors = lines` without ack, `acked + errors = lines`
    /// with it.
    pub errors: u64,
    /// The earliest error seen (set whenever `errors > 0`).
    pub first_error: Option<String>,
    pub elapsed_ms: u64,
    /// Lines accepted per second: acked/elapsed with ack, sent/elapsed without.
    pub throughput_lps: f64,
    /// "write_to_ack" (TCP with ack), "connect" (TCP without ack: one sample per connection)
    /// or "none" (UDP: `latency.count` is 0).
    pub latency_kind: String,
    pub latency: Percentiles,
}

/// Bytes gathered from due lines into one write.
const BATCH_BYTES: usize = 64 * 1024;
/// Longest ack line accepted before the reply stream is declared garbage.
const MAX_ACK_LINE: usize = 1024;
/// Without ack, how long to wait for the backend's FIN after ours, so the close is graceful
/// (closing with unread data would reset the connection and could drop our tail).
const LINGER: Duration = Duration::from_secs(2);

const LINE_PREFIX: &[u8] = b"<14>1 - switcher-probe switcher - - [switcher@32473 probe=\"1\"] seq=";

/// Writes the syslog line for `seq` into `out` (replacing its contents).
pub fn format_line(out: &mut Vec<u8>, seq: u64, line_size: usize) {
    out.clear();
    out.extend_from_slice(LINE_PREFIX);
    out.extend_from_slice(seq.to_string().as_bytes());
    if out.len() < line_size {
        // The space keeps `seq=N` a token of its own for whoever parses it.
        out.push(b' ');
        out.resize(line_size.max(out.len()), b'x');
    }
}

/// Sends `spec.lines` lines to `target` and reports what the backend accepted.
pub async fn run(target: SocketAddr, spec: &LoadSpec) -> LoadReport {
    let latency_kind = match (&spec.protocol, spec.ack) {
        (LoadProtocol::Tcp, true) => "write_to_ack",
        (LoadProtocol::Tcp, false) => "connect",
        (LoadProtocol::Udp, _) => "none",
    };
    let mut report = LoadReport {
        target,
        sent: 0,
        acked: 0,
        errors: 0,
        first_error: None,
        elapsed_ms: 0,
        throughput_lps: 0.0,
        latency_kind: latency_kind.to_owned(),
        latency: Percentiles::default(),
    };
    if let Err(e) = spec.validate() {
        report.errors = spec.lines;
        report.first_error = Some(format!("invalid load spec: {e}"));
        return report;
    }

    let start = Instant::now();
    let plan = Arc::new(Plan {
        target,
        spec: spec.clone(),
        // A timeout too large for the clock is as good as none, but still a bound.
        deadline: start
            .checked_add(spec.timeout)
            .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365)),
    });
    let mut tasks = Tasks(Vec::new());
    for index in 0..u64::from(spec.connections) {
        let plan = plan.clone();
        let task = match spec.protocol {
            LoadProtocol::Tcp => tokio::spawn(async move { tcp_connection(&plan, index).await }),
            LoadProtocol::Udp => tokio::spawn(async move { udp_socket(&plan, index).await }),
        };
        tasks.0.push((index, task));
    }

    let mut samples = Vec::new();
    let mut first_error: Option<(Instant, String)> = None;
    let mut end = start;
    for (index, task) in &mut tasks.0 {
        let assigned = plan.assigned(*index);
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(e) => Outcome {
                error: Some((
                    Instant::now(),
                    format!("connection {index}: task failed: {e}"),
                )),
                done: Instant::now(),
                ..Outcome::default()
            },
        };
        report.sent += outcome.sent;
        report.acked += outcome.acked;
        let delivered = if spec.ack {
            outcome.acked
        } else {
            outcome.sent
        };
        report.errors += assigned.saturating_sub(delivered);
        samples.extend(outcome.samples);
        end = end.max(outcome.done);
        if let Some((at, e)) = outcome.error {
            if first_error.as_ref().is_none_or(|(t, _)| at < *t) {
                first_error = Some((at, e));
            }
        }
    }
    report.first_error = first_error.map(|(_, e)| e);
    if report.errors > 0 && report.first_error.is_none() {
        report.first_error = Some(format!("{} lines not delivered", report.errors));
    }
    let elapsed = end.duration_since(start);
    report.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let accepted = if spec.ack { report.acked } else { report.sent };
    let secs = elapsed.as_secs_f64();
    report.throughput_lps = if secs > 0.0 {
        accepted as f64 / secs
    } else {
        0.0
    };
    report.latency = Percentiles::compute(samples);
    report
}

/// What every connection task shares.
struct Plan {
    target: SocketAddr,
    spec: LoadSpec,
    deadline: Instant,
}

impl Plan {
    fn stride(&self) -> u64 {
        u64::from(self.spec.connections.max(1))
    }

    /// Lines of connection `index`: seqs index, index + stride, ... below `lines`.
    fn assigned(&self, index: u64) -> u64 {
        if index >= self.spec.lines {
            0
        } else {
            (self.spec.lines - index - 1) / self.stride() + 1
        }
    }

    /// When `seq` is due, counted from `origin`; None when unpaced.
    fn due(&self, origin: Instant, seq: u64) -> Option<Instant> {
        if self.spec.rate == 0 {
            return None;
        }
        let nanos = u128::from(seq) * 1_000_000_000 / u128::from(self.spec.rate);
        let offset = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        // Beyond the clock's range means "never" in practice: the deadline cuts it.
        Some(origin.checked_add(offset).unwrap_or(self.deadline))
    }

    fn timeout_error(&self, sent: u64, assigned: u64) -> String {
        format!(
            "run timeout of {} ms reached: {sent} of {assigned} lines sent",
            self.spec.timeout.as_millis()
        )
    }
}

/// Aborts still-running connection tasks if `run` itself is dropped (caller's timeout).
struct Tasks(Vec<(u64, JoinHandle<Outcome>)>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, task) in &self.0 {
            task.abort();
        }
    }
}

/// What one connection (or UDP socket) achieved.
struct Outcome {
    sent: u64,
    acked: u64,
    /// Write-to-ack latencies, or the connect time (TCP without ack).
    samples: Vec<Duration>,
    /// The first error of this connection and when it happened.
    error: Option<(Instant, String)>,
    /// When the last line was written (without ack) or acked (with ack).
    done: Instant,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            sent: 0,
            acked: 0,
            samples: Vec::new(),
            error: None,
            done: Instant::now(),
        }
    }
}

fn note(slot: &mut Option<(Instant, String)>, msg: String) {
    if slot.is_none() {
        *slot = Some((Instant::now(), msg));
    }
}

async fn tcp_connection(plan: &Plan, index: u64) -> Outcome {
    let assigned = plan.assigned(index);
    let mut outcome = Outcome::default();
    let t0 = Instant::now();
    let stream = match tokio::time::timeout_at(plan.deadline, TcpStream::connect(plan.target)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            note(&mut outcome.error, format!("connect {}: {e}", plan.target));
            outcome.done = Instant::now();
            return outcome;
        }
        Err(_) => {
            note(&mut outcome.error, plan.timeout_error(0, assigned));
            outcome.done = Instant::now();
            return outcome;
        }
    };
    let origin = Instant::now();
    if !plan.spec.ack {
        outcome.samples.push(origin.duration_since(t0));
    }
    // Acks and small batches must not wait for Nagle: it would add to the measured latency.
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();

    // Both halves record progress here, outside the timed future, so a timeout keeps it.
    let mut written = Written::default();
    let mut acks = Acks::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let ack = plan.spec.ack;
    let finished = tokio::time::timeout_at(plan.deadline, async {
        let writer = write_lines(plan, index, origin, wr, ack.then_some(tx), &mut written);
        if ack {
            let (wr, ()) = tokio::join!(writer, read_acks(rd, rx, &mut acks));
            drop(wr);
        } else {
            let wr = writer.await;
            linger(wr, rd, plan.deadline).await;
        }
    })
    .await
    .is_ok();

    let (sent, acked) = (written.sent, acks.acked);
    outcome.sent = sent;
    outcome.acked = acked;
    outcome.samples.append(&mut acks.samples);
    // Without ack the close (linger) is not part of the run; a connection with no lines is
    // done once connected.
    outcome.done = if ack {
        acks.last.unwrap_or_else(Instant::now)
    } else {
        written.done.unwrap_or(origin)
    };
    // Keep whichever error came first; the timeout is only the cause if nothing failed before.
    for e in [written.error, acks.error].into_iter().flatten() {
        if outcome.error.as_ref().is_none_or(|(t, _)| e.0 < *t) {
            outcome.error = Some(e);
        }
    }
    let short = if ack {
        acked < assigned
    } else {
        sent < assigned
    };
    // A timeout during the linger (everything already written) costs nothing.
    if !finished && short {
        outcome.done = Instant::now();
        let msg = if ack {
            format!("{}, {acked} acked", plan.timeout_error(sent, assigned))
        } else {
            plan.timeout_error(sent, assigned)
        };
        note(&mut outcome.error, msg);
    }
    outcome
}

/// Progress of the writing half of a TCP connection.
#[derive(Default)]
struct Written {
    sent: u64,
    error: Option<(Instant, String)>,
    /// When the last write completed.
    done: Option<Instant>,
}

/// Progress of the ack-reading half.
#[derive(Default)]
struct Acks {
    acked: u64,
    samples: Vec<Duration>,
    error: Option<(Instant, String)>,
    /// When the last ack arrived.
    last: Option<Instant>,
}

/// Writes this connection's lines on schedule. With ack, every write is announced to the
/// reader first as (instant, lines) so acks can be matched in order. Returns the write half
/// so the caller decides how to close it.
async fn write_lines(
    plan: &Plan,
    index: u64,
    origin: Instant,
    mut wr: OwnedWriteHalf,
    announce: Option<mpsc::UnboundedSender<(Instant, u64)>>,
    progress: &mut Written,
) -> OwnedWriteHalf {
    let stride = plan.stride();
    let mut seq = index;
    let mut line = Vec::with_capacity(plan.spec.line_size.max(LINE_PREFIX.len() + 20));
    let mut batch = Vec::with_capacity(BATCH_BYTES + line.capacity() + 8);
    while seq < plan.spec.lines {
        if let Some(due) = plan.due(origin, seq) {
            tokio::time::sleep_until(due).await;
        }
        // Everything already due goes out in one write (always at least the line we woke for).
        let now = Instant::now();
        batch.clear();
        let mut count = 0u64;
        while seq < plan.spec.lines
            && batch.len() < BATCH_BYTES
            && (count == 0 || plan.due(origin, seq).is_none_or(|d| d <= now))
        {
            format_line(&mut line, seq, plan.spec.line_size);
            batch.extend_from_slice(line.len().to_string().as_bytes());
            batch.push(b' ');
            batch.extend_from_slice(&line);
            count += 1;
            seq = seq.saturating_add(stride);
        }
        if let Some(tx) = &announce {
            // The reader only goes away on a read error, which it records itself.
            let _ = tx.send((Instant::now(), count));
        }
        if let Err(e) = wr.write_all(&batch).await {
            note(
                &mut progress.error,
                format!("write to {}: {e}", plan.target),
            );
            break;
        }
        progress.sent += count;
        progress.done = Some(Instant::now());
    }
    wr
}

/// Matches `ok` lines to the announced writes, in order, until every announced line is
/// answered and the writer has finished, or the connection fails.
async fn read_acks(
    mut rd: OwnedReadHalf,
    mut announced: mpsc::UnboundedReceiver<(Instant, u64)>,
    progress: &mut Acks,
) {
    let error = &mut progress.error;
    // (write instant, lines of that write still unanswered)
    let mut pending: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut writer_done = false;
    let mut buf = vec![0u8; 16 * 1024];
    let mut line = Vec::new();
    loop {
        if writer_done && pending.is_empty() {
            return;
        }
        tokio::select! {
            // Announcements first, so an ack never looks unexpected.
            biased;
            msg = announced.recv(), if !writer_done => match msg {
                Some(write) => pending.push_back(write),
                None => writer_done = true,
            },
            read = rd.read(&mut buf) => {
                let len = match read {
                    Ok(0) => {
                        let unanswered: u64 = pending.iter().map(|p| p.1).sum();
                        note(error, format!(
                            "backend closed the connection with {unanswered} lines unacked"
                        ));
                        return;
                    }
                    Ok(len) => len,
                    Err(e) => {
                        note(error, format!("read acks: {e}"));
                        return;
                    }
                };
                let now = Instant::now();
                for &b in &buf[..len] {
                    if b != b'\n' {
                        if line.len() >= MAX_ACK_LINE {
                            note(error, format!("reply line longer than {MAX_ACK_LINE} bytes"));
                            return;
                        }
                        line.push(b);
                        continue;
                    }
                    while let Ok(write) = announced.try_recv() {
                        pending.push_back(write);
                    }
                    let Some(front) = pending.front_mut() else {
                        note(error, "reply with no message outstanding".to_owned());
                        return;
                    };
                    let sent_at = front.0;
                    front.1 -= 1;
                    if front.1 == 0 {
                        pending.pop_front();
                    }
                    let reply = line.strip_suffix(b"\r").unwrap_or(&line);
                    if reply == b"ok" {
                        progress.acked += 1;
                        progress.samples.push(now.duration_since(sent_at));
                        progress.last = Some(now);
                    } else {
                        // Counted as not acked; the stream stays in step.
                        note(error, format!(
                            "backend replied {:?} instead of ok",
                            String::from_utf8_lossy(reply)
                        ));
                    }
                    line.clear();
                }
            }
        }
    }
}

/// Graceful close without ack: FIN, then wait (bounded) for the backend's FIN while
/// discarding whatever it sends. Failures here cost no line: the data was already written.
async fn linger(mut wr: OwnedWriteHalf, mut rd: OwnedReadHalf, deadline: Instant) {
    if wr.shutdown().await.is_err() {
        return;
    }
    let until = deadline.min(Instant::now() + LINGER);
    let _ = tokio::time::timeout_at(until, async {
        let mut buf = vec![0u8; 16 * 1024];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn udp_socket(plan: &Plan, index: u64) -> Outcome {
    let assigned = plan.assigned(index);
    let mut outcome = Outcome::default();
    let local: SocketAddr = if plan.target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match UdpSocket::bind(local).await {
        Ok(sock) => sock,
        Err(e) => {
            note(&mut outcome.error, format!("bind UDP {local}: {e}"));
            return outcome;
        }
    };
    // Connected: the kernel then reports ICMP port unreachable as ECONNREFUSED on a later send.
    if let Err(e) = sock.connect(plan.target).await {
        note(
            &mut outcome.error,
            format!("connect UDP {}: {e}", plan.target),
        );
        return outcome;
    }
    let origin = Instant::now();
    let mut sent = 0u64;
    let mut error = None;
    let mut done = None;
    let finished = tokio::time::timeout_at(plan.deadline, async {
        let mut line = Vec::with_capacity(plan.spec.line_size.max(LINE_PREFIX.len() + 20));
        let mut seq = index;
        while seq < plan.spec.lines {
            if let Some(due) = plan.due(origin, seq) {
                tokio::time::sleep_until(due).await;
            }
            format_line(&mut line, seq, plan.spec.line_size);
            match sock.send(&line).await {
                Ok(_) => sent += 1,
                // Per datagram: a refused or dropped one does not stop the run.
                Err(e) => note(&mut error, format!("send to {}: {e}", plan.target)),
            }
            done = Some(Instant::now());
            seq = seq.saturating_add(plan.stride());
        }
    })
    .await
    .is_ok();
    outcome.sent = sent;
    outcome.error = error;
    outcome.done = done.unwrap_or(origin);
    if !finished {
        outcome.done = Instant::now();
        note(&mut outcome.error, plan.timeout_error(sent, assigned));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::net::TcpListener;

    use super::*;

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

    /// A sink that acks every octet-counted frame with `ok\n` (or never acks) and counts the
    /// frames and checks every line's format.
    async fn tcp_sink(
        ack: bool,
        ack_delay: Duration,
    ) -> std::io::Result<(SocketAddr, Arc<AtomicU64>, JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let frames = Arc::new(AtomicU64::new(0));
        let count = frames.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = count.clone();
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
                            assert!(m.starts_with(LINE_PREFIX), "{m:?}");
                            assert_eq!(m.len(), 120);
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
        Ok((addr, frames, task))
    }

    async fn closed_port() -> std::io::Result<SocketAddr> {
        TcpListener::bind("127.0.0.1:0").await?.local_addr()
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
        let (addr, frames, task) = tcp_sink(true, Duration::ZERO).await?;
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
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn tcp_ack_latency_reflects_a_slow_backend() -> TestResult {
        let (addr, _, task) = tcp_sink(true, Duration::from_millis(30)).await?;
        let mut s = spec(LoadProtocol::Tcp, 20, true);
        s.rate = 200;
        let r = run(addr, &s).await;
        assert_eq!((r.acked, r.errors), (20, 0), "{r:?}");
        assert!(r.latency.p50_us >= 30_000, "{r:?}");
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn tcp_paced_takes_the_scheduled_time() -> TestResult {
        let (addr, frames, task) = tcp_sink(false, Duration::ZERO).await?;
        let mut s = spec(LoadProtocol::Tcp, 50, false);
        s.rate = 250; // 50 lines: the last one is due at 196 ms
        s.connections = 2;
        let r = run(addr, &s).await;
        assert_eq!((r.sent, r.errors), (50, 0), "{r:?}");
        assert!(r.elapsed_ms >= 190 && r.elapsed_ms < 2000, "{r:?}");
        assert_eq!(r.latency_kind, "connect");
        assert_eq!(r.latency.count, 2);
        assert!(
            r.throughput_lps > 100.0 && r.throughput_lps < 300.0,
            "{r:?}"
        );
        // The linger waited for the sink to read everything and close.
        assert_eq!(frames.load(Ordering::SeqCst), 50);
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn tcp_never_acked_times_out_cleanly() -> TestResult {
        let (addr, frames, task) = tcp_sink(false, Duration::ZERO).await?;
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
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn tcp_paced_past_the_timeout_counts_unsent_lines() -> TestResult {
        let (addr, _, task) = tcp_sink(false, Duration::ZERO).await?;
        let mut s = spec(LoadProtocol::Tcp, 1000, false);
        s.rate = 100; // would take 10 s
        s.timeout = Duration::from_millis(250);
        let r = run(addr, &s).await;
        assert!(r.sent >= 20 && r.sent <= 30, "{r:?}");
        assert_eq!(r.sent + r.errors, 1000);
        assert!(r.first_error.unwrap_or_default().contains("lines sent"));
        assert!(r.elapsed_ms < 1000);
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn tcp_refused_is_errors() -> TestResult {
        let addr = closed_port().await?;
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
        let addr = UdpSocket::bind("127.0.0.1:0").await?.local_addr()?;
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
        let (addr, _, task) = tcp_sink(true, Duration::ZERO).await?;
        let r = run(addr, &spec(LoadProtocol::Tcp, 0, true)).await;
        assert_eq!((r.sent, r.acked, r.errors), (0, 0, 0));
        assert_eq!(r.first_error, None);
        task.abort();
        Ok(())
    }
}
