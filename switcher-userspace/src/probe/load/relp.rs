//! One RELP session of a load run, as rsyslog's imrelp (librelp) speaks it. Every frame is
//! `TXNR SP COMMAND SP DATALEN [SP DATA] LF`. The session opens with `open`, offering the
//! `syslog` command (the collector answers `rsp` with `200 OK` and its own offers); each line is
//! a `syslog` command the collector answers with `rsp 6 200 OK` once it has taken the message;
//! `close` ends it (answered by `rsp 0`, then the collector's `serverclose`).
//!
//! Latency is write-to-rsp per message. At most [`WINDOW`] messages are unanswered at once (as
//! librelp's client), so a collector that stops answering stops the run, as it would stop a
//! real forwarder, and the unanswered lines count as errors.

use std::collections::HashMap;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    sync::{mpsc, Semaphore},
    time::{Duration, Instant},
};

use super::{format_line, note, tcp::connect, Outcome, Plan, BATCH_BYTES, LINE_PREFIX, LINGER};

/// Messages sent but not yet answered, at most (librelp's default window).
pub(super) const WINDOW: usize = 128;
const OFFER: &str = concat!(
    "relp_version=0\nrelp_software=switcher,",
    env!("CARGO_PKG_VERSION"),
    "\ncommands=syslog"
);
/// Largest reply data accepted (a collector's answer to `open` is about 100 bytes).
const MAX_REPLY: usize = 64 * 1024;
/// Transaction numbers run 1..=999_999_999, then start again at 1.
const MAX_TXNR: u64 = 999_999_999;

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame {
    pub(super) txnr: u64,
    pub(super) command: String,
    pub(super) data: Vec<u8>,
}

/// One frame off the front of `buf` and the bytes it took; `Ok(None)` while incomplete.
pub(super) fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let Some(sp1) = delimiter(buf, 0, 9, b" ", "transaction number")? else {
        return Ok(None);
    };
    let Some(sp2) = delimiter(buf, sp1 + 1, 32, b" ", "command")? else {
        return Ok(None);
    };
    // The data length ends with SP (data follows) or LF (no data).
    let Some(end) = delimiter(buf, sp2 + 1, 9, b" \n", "data length")? else {
        return Ok(None);
    };
    let txnr = digits(&buf[..sp1], "transaction number")?;
    let command = &buf[sp1 + 1..sp2];
    if !command.iter().all(u8::is_ascii_alphabetic) {
        return Err(format!(
            "bad command {:?}",
            String::from_utf8_lossy(command)
        ));
    }
    let len = usize::try_from(digits(&buf[sp2 + 1..end], "data length")?)
        .map_err(|_| "data length out of range".to_owned())?;
    if len > MAX_REPLY {
        return Err(format!("reply of {len} bytes (at most {MAX_REPLY})"));
    }
    let frame = |data: &[u8]| Frame {
        txnr,
        command: String::from_utf8_lossy(command).into_owned(),
        data: data.to_vec(),
    };
    if buf[end] == b'\n' {
        if len != 0 {
            return Err(format!("data length {len} but no data"));
        }
        return Ok(Some((frame(&[]), end + 1)));
    }
    let (start, stop) = (end + 1, end + 1 + len);
    match buf.get(stop) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((frame(&buf[start..stop]), stop + 1))),
        Some(_) => Err("frame not ended by LF".to_owned()),
    }
}

/// The position of the first of `delims` at or after `from`, within `max` bytes of a field;
/// `None` when the buffer ends first.
fn delimiter(
    buf: &[u8],
    from: usize,
    max: usize,
    delims: &[u8],
    what: &str,
) -> Result<Option<usize>, String> {
    let field = buf.get(from..).unwrap_or_default();
    match field.iter().take(max + 1).position(|b| delims.contains(b)) {
        Some(0) => Err(format!("empty {what}")),
        Some(i) => Ok(Some(from + i)),
        None if field.len() > max => Err(format!("{what} longer than {max} bytes")),
        None => Ok(None),
    }
}

fn digits(s: &[u8], what: &str) -> Result<u64, String> {
    std::str::from_utf8(s)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("bad {what} {:?}", String::from_utf8_lossy(s)))
}

const fn next_txnr(t: u64) -> u64 {
    if t >= MAX_TXNR {
        1
    } else {
        t + 1
    }
}

/// Frames as they arrive on the read half.
struct Reader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Reader {
    /// The next frame. Cancel-safe: bytes read are kept in `buf` until a frame is complete.
    async fn next(&mut self) -> Result<Frame, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((f, used)) = parse_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(f);
            }
            match self.rd.read(&mut chunk).await {
                Ok(0) => return Err("the collector closed the connection".to_owned()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

pub(super) async fn session(plan: &Plan, index: u64) -> Outcome {
    let assigned = plan.assigned(index);
    let mut outcome = Outcome::default();
    let Some(stream) = connect(plan, assigned, &mut outcome).await else {
        return outcome;
    };
    // Small writes must not wait for Nagle: it would add to the measured latency.
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut reader = Reader {
        rd,
        buf: Vec::new(),
    };
    match tokio::time::timeout_at(plan.deadline, open(&mut wr, &mut reader)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            note(&mut outcome.error, format!("RELP {}: {e}", plan.target));
            outcome.done = Instant::now();
            return outcome;
        }
        Err(_) => {
            note(
                &mut outcome.error,
                format!("{} (RELP open unanswered)", plan.timeout_error(0, assigned)),
            );
            outcome.done = Instant::now();
            return outcome;
        }
    }

    let origin = Instant::now();
    let window = Semaphore::new(WINDOW);
    let mut written = Written {
        next_txnr: 2,
        ..Written::default()
    };
    let mut answers = Answers::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let finished = tokio::time::timeout_at(plan.deadline, async {
        let (wr, ()) = tokio::join!(
            write_messages(plan, index, origin, wr, tx, &window, &mut written),
            read_answers(&mut reader, rx, &window, &mut answers),
        );
        wr
    })
    .await;
    let all_answered = answers.acked >= assigned;
    if let Ok(wr) = finished {
        close(wr, &mut reader, written.next_txnr, plan.deadline).await;
    }

    outcome.sent = written.sent;
    outcome.acked = answers.acked;
    outcome.samples = answers.samples;
    outcome.done = answers.last.unwrap_or_else(Instant::now);
    for e in [written.error, answers.error].into_iter().flatten() {
        if outcome.error.as_ref().is_none_or(|(t, _)| e.0 < *t) {
            outcome.error = Some(e);
        }
    }
    if !all_answered && outcome.error.is_none() {
        outcome.done = Instant::now();
        note(
            &mut outcome.error,
            format!(
                "{}, {} answered",
                plan.timeout_error(outcome.sent, assigned),
                outcome.acked
            ),
        );
    }
    outcome
}

async fn open(wr: &mut OwnedWriteHalf, reader: &mut Reader) -> Result<(), String> {
    let frame = format!("1 open {} {OFFER}\n", OFFER.len());
    wr.write_all(frame.as_bytes())
        .await
        .map_err(|e| format!("write open: {e}"))?;
    let f = reader.next().await?;
    let text = String::from_utf8_lossy(&f.data);
    if f.txnr != 1 || f.command != "rsp" {
        return Err(format!("open answered by {} {}", f.txnr, f.command));
    }
    if !text.starts_with("200") {
        return Err(format!(
            "open refused: {}",
            text.lines().next().unwrap_or_default()
        ));
    }
    let offers_syslog = text.lines().any(|l| {
        l.strip_prefix("commands=")
            .is_some_and(|c| c.split(',').any(|c| c == "syslog"))
    });
    if !offers_syslog {
        return Err(format!(
            "the collector does not offer the syslog command: {text:?}"
        ));
    }
    Ok(())
}

/// Progress of the writing half.
#[derive(Default)]
struct Written {
    sent: u64,
    next_txnr: u64,
    error: Option<(Instant, String)>,
}

/// Progress of the reading half.
#[derive(Default)]
struct Answers {
    acked: u64,
    samples: Vec<Duration>,
    error: Option<(Instant, String)>,
    last: Option<Instant>,
}

/// Writes this session's messages on schedule, each taking a place in the window, and
/// announces each (transaction number, write instant) to the reader first. Returns the write
/// half for the close.
async fn write_messages(
    plan: &Plan,
    index: u64,
    origin: Instant,
    mut wr: OwnedWriteHalf,
    announce: mpsc::UnboundedSender<(u64, Instant)>,
    window: &Semaphore,
    progress: &mut Written,
) -> OwnedWriteHalf {
    let stride = plan.stride();
    let mut seq = index;
    let mut line = Vec::with_capacity(plan.spec.line_size.max(LINE_PREFIX.len() + 20));
    let mut batch = Vec::with_capacity(BATCH_BYTES + line.capacity() + 32);
    let mut txnrs = Vec::new();
    while seq < plan.spec.lines {
        if let Some(due) = plan.due(origin, seq) {
            tokio::time::sleep_until(due).await;
        }
        let now = Instant::now();
        batch.clear();
        txnrs.clear();
        while seq < plan.spec.lines
            && batch.len() < BATCH_BYTES
            && (txnrs.is_empty() || plan.due(origin, seq).is_none_or(|d| d <= now))
        {
            // The first message of a write waits for a place; later ones go only if one is
            // free. A closed window means the reader gave up.
            let permit = if txnrs.is_empty() {
                window.acquire().await.ok()
            } else {
                window.try_acquire().ok()
            };
            let Some(permit) = permit else { break };
            permit.forget();
            format_line(&mut line, seq, plan.spec.line_size);
            let txnr = progress.next_txnr;
            progress.next_txnr = next_txnr(txnr);
            batch.extend_from_slice(format!("{txnr} syslog {} ", line.len()).as_bytes());
            batch.extend_from_slice(&line);
            batch.push(b'\n');
            txnrs.push(txnr);
            seq = seq.saturating_add(stride);
        }
        if txnrs.is_empty() {
            break;
        }
        let at = Instant::now();
        for &t in &txnrs {
            // The reader only goes away after an error it records itself.
            let _ = announce.send((t, at));
        }
        if let Err(e) = wr.write_all(&batch).await {
            note(
                &mut progress.error,
                format!("write to {}: {e}", plan.target),
            );
            break;
        }
        progress.sent += txnrs.len() as u64;
    }
    wr
}

/// Matches the collector's `rsp` frames to the announced messages until every one is
/// answered and the writer has finished, or the session fails (the window is then closed so
/// the writer stops too).
async fn read_answers(
    reader: &mut Reader,
    mut announced: mpsc::UnboundedReceiver<(u64, Instant)>,
    window: &Semaphore,
    progress: &mut Answers,
) {
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let mut writer_done = false;
    loop {
        if writer_done && pending.is_empty() {
            return;
        }
        tokio::select! {
            // Announcements first, so an answer never looks unexpected.
            biased;
            msg = announced.recv(), if !writer_done => match msg {
                Some((t, at)) => {
                    pending.insert(t, at);
                }
                None => writer_done = true,
            },
            frame = reader.next() => {
                let now = Instant::now();
                let failure = match frame {
                    Err(e) => Some(e),
                    Ok(f) => {
                        while let Ok((t, at)) = announced.try_recv() {
                            pending.insert(t, at);
                        }
                        answer(f, now, &mut pending, window, progress)
                    }
                };
                if let Some(e) = failure {
                    note(
                        &mut progress.error,
                        format!("{e} ({} messages unanswered)", pending.len()),
                    );
                    window.close();
                    return;
                }
            }
        }
    }
}

/// Books one frame from the collector; `Some(reason)` ends the session.
fn answer(
    f: Frame,
    now: Instant,
    pending: &mut HashMap<u64, Instant>,
    window: &Semaphore,
    progress: &mut Answers,
) -> Option<String> {
    match f.command.as_str() {
        "rsp" => {
            let Some(sent_at) = pending.remove(&f.txnr) else {
                return Some(format!("rsp for transaction {} never sent", f.txnr));
            };
            window.add_permits(1);
            if f.data.starts_with(b"200") {
                progress.acked += 1;
                progress.samples.push(now.duration_since(sent_at));
                progress.last = Some(now);
            } else {
                // Counted as not acknowledged; the session goes on.
                note(
                    &mut progress.error,
                    format!(
                        "the collector answered {:?}",
                        String::from_utf8_lossy(&f.data)
                    ),
                );
            }
            None
        }
        "serverclose" => Some("the collector closed the session (serverclose)".to_owned()),
        other => Some(format!("unexpected RELP command {other:?}")),
    }
}

/// `close`, then the collector's `rsp`, bounded; failures cost nothing (every message was
/// answered or counted already).
async fn close(mut wr: OwnedWriteHalf, reader: &mut Reader, txnr: u64, deadline: Instant) {
    let until = deadline.min(Instant::now() + LINGER);
    let _ = tokio::time::timeout_at(until, async {
        wr.write_all(format!("{txnr} close 0\n").as_bytes())
            .await
            .ok()?;
        loop {
            let f = reader.next().await.ok()?;
            if f.command == "rsp" && f.txnr == txnr {
                break;
            }
        }
        wr.shutdown().await.ok()
    })
    .await;
}

#[cfg(test)]
mod tests;
