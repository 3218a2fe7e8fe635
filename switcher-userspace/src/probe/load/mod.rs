//! Synthetic log load sent straight to one backend (not through the VIP), so the candidate and
//! the serving backend can be compared under the same load before a flip.
//!
//! Lines are RFC 5424 syslog, `<14>1 - switcher-probe switcher - - [switcher@32473 probe="1"]
//! seq=N`, padded to `line_size`. UDP sends one line per datagram; TCP uses RFC 6587 octet
//! counting; RELP (rsyslog's imrelp) sends each line as a `syslog` command the collector
//! answers with `rsp 200` once it has taken it. Line `seq` goes to connection `seq % connections`, due at `seq / rate` seconds
//! after that connection is ready, so the total rate is `rate` however many connections.

mod relp;
mod tcp;
#[cfg(test)]
mod tests;
mod udp;

use std::{fmt, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{task::JoinHandle, time::Instant};

use super::Percentiles;
use crate::domain::Protocol;

/// How a load run talks to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadProtocol {
    Udp,
    /// Plain syslog over TCP, RFC 6587 octet counting.
    Tcp,
    /// RELP (Reliable Event Logging Protocol) as rsyslog's imrelp speaks it: every message is
    /// acknowledged by the collector.
    Relp,
}

impl From<Protocol> for LoadProtocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Udp => LoadProtocol::Udp,
            Protocol::Tcp => LoadProtocol::Tcp,
        }
    }
}

impl fmt::Display for LoadProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadProtocol::Udp => "udp",
            LoadProtocol::Tcp => "tcp",
            LoadProtocol::Relp => "relp",
        })
    }
}

impl FromStr for LoadProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(LoadProtocol::Udp),
            "tcp" => Ok(LoadProtocol::Tcp),
            "relp" => Ok(LoadProtocol::Relp),
            other => Err(format!("expected udp, tcp or relp, got {other:?}")),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
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
    /// TCP only (`ack = "line"`): the backend answers every message with one line (`ok\n`),
    /// the reference sink's own convention, not a standard; latency is then measured from
    /// write to ack. RELP is always acknowledged, by the protocol itself.
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
            LoadProtocol::Relp if self.ack => {
                Err("relp acknowledges every message itself: ack is for plain tcp".to_owned())
            }
            LoadProtocol::Udp if self.line_size > MAX_UDP_LINE => Err(format!(
                "line_size {} exceeds the UDP limit of {MAX_UDP_LINE}",
                self.line_size
            )),
            LoadProtocol::Tcp | LoadProtocol::Relp if self.line_size > MAX_TCP_LINE => Err(
                format!("line_size {} exceeds {MAX_TCP_LINE}", self.line_size),
            ),
            _ => Ok(()),
        }
    }

    /// Whether the backend acknowledges each line (the run then counts acknowledged lines and
    /// measures write-to-acknowledgement latency).
    pub fn acknowledged(&self) -> bool {
        self.ack || self.protocol == LoadProtocol::Relp
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LoadReport {
    pub target: SocketAddr,
    /// Lines completely written to the socket.
    pub sent: u64,
    /// Lines acknowledged (`ack = "line"` and RELP).
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
    /// "write_to_ack" (TCP with ack), "write_to_rsp" (RELP: the `syslog` command to its
    /// `rsp 200`), "connect" (TCP without ack: one sample per connection) or "none" (UDP:
    /// `latency.count` is 0).
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
        (LoadProtocol::Relp, _) => "write_to_rsp",
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
            LoadProtocol::Tcp => tokio::spawn(async move { tcp::connection(&plan, index).await }),
            LoadProtocol::Relp => tokio::spawn(async move { relp::session(&plan, index).await }),
            LoadProtocol::Udp => tokio::spawn(async move { udp::socket(&plan, index).await }),
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
        let delivered = if spec.acknowledged() {
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
    let accepted = if spec.acknowledged() {
        report.acked
    } else {
        report.sent
    };
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
