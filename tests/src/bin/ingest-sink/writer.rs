//! The output file writer: batches of pre-formatted lines from the receivers, the single task
//! that owns the file, and the counters bumped only once lines are flushed.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncWriteExt, BufWriter},
    sync::{mpsc, watch},
};

use crate::{
    framing::append_line,
    metrics::{SinkState, Transport},
};

const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Set once from --stamp before any receiver starts.
pub(crate) static STAMP: AtomicBool = AtomicBool::new(false);

fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 marks the impossible case.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Pre-formatted output lines from one datagram or one TCP read.
pub(crate) struct Batch {
    transport: Transport,
    pub(crate) messages: u64,
    bytes: u64,
    pub(crate) data: Vec<u8>,
    /// `t=NS ` put before every line (--stamp): one receive, one arrival time.
    stamp: Option<String>,
}

impl Batch {
    pub(crate) fn new(transport: Transport) -> Self {
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

    pub(crate) fn add(&mut self, msg: &[u8]) {
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
pub(crate) async fn run_writer(
    file: tokio::fs::File,
    mut batches: mpsc::Receiver<Batch>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<SinkState>,
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
    shared: &SinkState,
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
