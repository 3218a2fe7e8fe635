//! One TCP connection of a load run: RFC 6587 octet-counted lines written on schedule, and in
//! ack mode the backend's one-line acknowledgements read back to time write-to-ack latency.

use std::collections::VecDeque;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{format_line, note, Outcome, Plan, BATCH_BYTES, LINE_PREFIX, LINGER, MAX_ACK_LINE};

/// Connects to the plan's target within its deadline; a failure is noted in `outcome` (and
/// ends it).
pub(super) async fn connect(
    plan: &Plan,
    assigned: u64,
    outcome: &mut Outcome,
) -> Option<TcpStream> {
    match tokio::time::timeout_at(plan.deadline, TcpStream::connect(plan.target)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            note(&mut outcome.error, format!("connect {}: {e}", plan.target));
            outcome.done = Instant::now();
            None
        }
        Err(_) => {
            note(&mut outcome.error, plan.timeout_error(0, assigned));
            outcome.done = Instant::now();
            None
        }
    }
}

pub(super) async fn connection(plan: &Plan, index: u64) -> Outcome {
    let assigned = plan.assigned(index);
    let mut outcome = Outcome::default();
    let t0 = Instant::now();
    let Some(stream) = connect(plan, assigned, &mut outcome).await else {
        return outcome;
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
