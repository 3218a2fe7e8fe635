//! One UDP socket of a load run: one line per datagram, on schedule. UDP has no
//! acknowledgement, so only what the kernel refused to send counts as an error.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::{net::UdpSocket, time::Instant};

use super::{format_line, note, Outcome, Plan, LINE_PREFIX};

pub(super) async fn socket(plan: &Plan, index: u64) -> Outcome {
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
