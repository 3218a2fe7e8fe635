//! TCP: one connection per worker sending its share of the lines (batched, framed), draining
//! whatever the peer sends back, holding the connection open and closing it cleanly.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    line::{append_frame, make_line, Framing},
    plan::{sleep_until, Plan},
    progress::Progress,
    GRACE,
};

/// Queued TCP bytes are written out once they reach this size, or before sleeping.
const FLUSH_AT: usize = 64 * 1024;
/// After our FIN, how long to wait for the peer's EOF (or a reset).
const CLOSE_WAIT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

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
pub(crate) fn run_tcp_connection(plan: &Plan, progress: &Progress, k: u64) -> Result<()> {
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
