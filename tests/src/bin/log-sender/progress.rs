//! Progress: the run-wide counters the workers update, the `sent N` line printed each second and
//! the final JSON summary.

use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

/// Run-wide counters, shared by the workers, the progress printer and main.
pub(crate) struct Progress {
    pub(crate) sent: AtomicU64,
    errors: AtomicU64,
    pub(crate) tcp_failed: AtomicBool,
    min_seq: AtomicU64,
    max_seq: AtomicU64,
    /// Milliseconds from t0 to the end of the last worker's send loop.
    send_end_ms: AtomicU64,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            tcp_failed: AtomicBool::new(false),
            min_seq: AtomicU64::new(u64::MAX),
            max_seq: AtomicU64::new(0),
            send_end_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, first: u64, last: u64, lines: u64) {
        self.min_seq.fetch_min(first, Ordering::Relaxed);
        self.max_seq.fetch_max(last, Ordering::Relaxed);
        self.sent.fetch_add(lines, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) -> u64 {
        self.errors.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn tcp_error(&self) {
        self.error();
        self.tcp_failed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn send_loop_done(&self, t0: Instant) {
        let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.send_end_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub(crate) fn summary(&self) -> Summary {
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
pub(crate) struct Summary {
    sent: u64,
    errors: u64,
    /// Duration of the send phase (holding excluded).
    elapsed_ms: u64,
    /// Lowest and highest seq actually sent; null when nothing was sent.
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

pub(crate) fn print_progress(progress: &Progress, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_secs(1)) {
        let mut out = io::stdout().lock();
        // Progress is informational; a closed stdout must not stop the run.
        let _ = writeln!(out, "sent {}", progress.sent.load(Ordering::Relaxed));
        let _ = out.flush();
    }
}
