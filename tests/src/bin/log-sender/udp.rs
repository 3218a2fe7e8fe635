//! UDP: one connected socket sending one line per datagram on the global schedule.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    gelf::{run_gelf, GelfShape},
    line::make_line,
    plan::{sleep_until, Plan},
    progress::Progress,
};

const UDP_SNDBUF: usize = 8 * 1024 * 1024;
/// Cap on per-error log lines (a dead UDP target fails every send).
const MAX_LOGGED_ERRORS: u64 = 10;

/// Sends the plan's lines, one per datagram, or as GELF messages when `gelf` says how.
pub(crate) fn run_udp(plan: &Plan, progress: &Progress, gelf: Option<GelfShape>) -> Result<()> {
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
    if let Some(shape) = gelf {
        return run_gelf(plan, progress, &sock, shape);
    }
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
