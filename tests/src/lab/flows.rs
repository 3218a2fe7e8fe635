//! Many flows with chosen source ports: numbered syslog lines from a range of client ports,
//! each port its own flow (a UDP socket, or a TCP connection) named after it, sent by real
//! kernel sockets inside a lab namespace. log-sender keeps one UDP socket and lets the kernel
//! pick its TCP ports; here the test picks them, so it can send the same flows again (after a
//! flip, after a member left its pool) and see exactly which ones moved. Lines look like
//! log-sender's (`stream=NAME seq=N`), so the sinks' files parse the same way.
//!
//! Bounded like every load in the lab: `ports.len() * lines` lines at most, paced at `rate`,
//! and never past `max` (what was not sent by then is reported as not sent).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use super::netns::in_netns;
use super::{Host, Lab};

/// TCP connections in flight at once (each worker sends its ports' connections in turn).
const TCP_WORKERS: usize = 4;
/// How long a connection may take to connect, and the peer to close after our FIN.
const TCP_STEP: Duration = Duration::from_secs(3);
/// Errors kept verbatim in a report (the rest are counted).
const KEEP_ERRORS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowProto {
    /// One datagram per line; the flows take turns line by line (round-robin), so every flow
    /// spans the whole run.
    Udp,
    /// One connection per flow carrying its lines (RFC 6587 octet counting), closed by us
    /// (FIN) once sent; the peer's close is awaited, so its lines were read when this returns.
    /// Sockets are bound with SO_REUSEADDR: a port whose last connection is in TIME_WAIT can
    /// connect again (Linux allows it to a bound socket when TCP timestamps are on).
    Tcp,
}

/// What to send: `lines` numbered lines from each source port of `ports` (bound on `src`) to
/// `target`; the flow of port P is the stream `{stream}-p{P}`, its lines seq 0..lines.
#[derive(Debug, Clone)]
pub struct Flows {
    pub proto: FlowProto,
    pub src: IpAddr,
    pub target: SocketAddr,
    pub ports: Range<u16>,
    pub lines: u64,
    pub stream: String,
    /// Lines per second over all flows; 0: as fast as it goes.
    pub rate: u64,
    /// Hard bound on the whole run.
    pub max: Duration,
}

impl Flows {
    /// The stream name of port `port`'s flow.
    pub fn stream_of(&self, port: u16) -> String {
        flow_stream(&self.stream, port)
    }

    /// Lines in the whole run.
    pub fn total(&self) -> u64 {
        self.ports.len() as u64 * self.lines
    }
}

/// The stream name of a flow: `{stream}-p{port}`.
pub fn flow_stream(stream: &str, port: u16) -> String {
    format!("{stream}-p{port}")
}

/// The source port of a flow's stream name (see [`flow_stream`]), if it is one of `stream`'s.
pub fn flow_port(stream: &str, name: &str) -> Option<u16> {
    name.strip_prefix(stream)?.strip_prefix("-p")?.parse().ok()
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct FlowReport {
    /// Lines the kernel accepted (UDP: sent; TCP: written on a connection that then closed
    /// cleanly).
    pub sent: u64,
    /// Flows that failed (TCP: could not connect, or the connection failed), by port.
    pub failed_ports: Vec<u16>,
    pub errors: u64,
    /// The first errors, verbatim.
    pub first_errors: Vec<String>,
    pub elapsed: Duration,
}

impl FlowReport {
    /// Fails unless every line of `flows` was sent and no flow failed.
    pub fn check_complete(&self, flows: &Flows) -> Result<()> {
        if self.sent != flows.total() || self.errors != 0 || !self.failed_ports.is_empty() {
            bail!(
                "flows {}: sent {} of {} lines in {:?}, {} errors, {} failed flows; first errors: {:?}",
                flows.stream,
                self.sent,
                flows.total(),
                self.elapsed,
                self.errors,
                self.failed_ports.len(),
                self.first_errors
            );
        }
        Ok(())
    }
}

impl Lab {
    /// Sends `flows` from `host` (see the module docs); returns once done or at `flows.max`.
    pub fn send_flows(&self, host: Host, flows: &Flows) -> Result<FlowReport> {
        send_flows(self.ns(host), flows)
    }
}

/// [`Lab::send_flows`] by namespace name, for a thread that holds no `Lab`.
pub fn send_flows(ns: &str, flows: &Flows) -> Result<FlowReport> {
    if flows.ports.is_empty() || flows.lines == 0 {
        bail!("flows {}: nothing to send", flows.stream);
    }
    if flows.src.is_ipv4() != flows.target.is_ipv4() {
        bail!("flows {}: source and target differ in family", flows.stream);
    }
    let t0 = Instant::now();
    let tally = Tally::default();
    match flows.proto {
        FlowProto::Udp => in_netns(ns, || udp(flows, &tally, t0))??,
        FlowProto::Tcp => {
            let workers = TCP_WORKERS.min(flows.ports.len());
            thread::scope(|scope| -> Result<()> {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let tally = &tally;
                        scope.spawn(move || in_netns(ns, || tcp(flows, w, workers, tally, t0)))
                    })
                    .collect();
                for h in handles {
                    match h.join() {
                        Ok(r) => r??,
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                Ok(())
            })?;
        }
    }
    Ok(tally.report(t0.elapsed()))
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    errors: AtomicU64,
    failed: Mutex<Vec<u16>>,
    first: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < KEEP_ERRORS {
            first.push(what);
        }
    }

    fn failed(&self, port: u16, what: String) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(port);
        self.error(what);
    }

    fn report(self, elapsed: Duration) -> FlowReport {
        let mut failed_ports = self.failed.into_inner().unwrap_or_else(|p| p.into_inner());
        failed_ports.sort_unstable();
        FlowReport {
            sent: self.sent.into_inner(),
            failed_ports,
            errors: self.errors.into_inner(),
            first_errors: self.first.into_inner().unwrap_or_else(|p| p.into_inner()),
            elapsed,
        }
    }
}

/// The syslog line `seq` of a flow (log-sender's format).
fn line(stream: &str, seq: u64) -> String {
    format!("<14>1 - lab flows - - - stream={stream} seq={seq}")
}

/// Sleeps until line number `index` of the run is due; false once past the run's bound.
fn pace(flows: &Flows, t0: Instant, index: u64) -> bool {
    let deadline = t0 + flows.max;
    if flows.rate > 0 {
        let due = t0 + Duration::from_secs_f64(index as f64 / flows.rate as f64);
        if due >= deadline {
            return false;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
    }
    Instant::now() < deadline
}

fn bound_socket(flows: &Flows, port: u16, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(flows.target), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::new(flows.src, port).into())?;
    Ok(s)
}

/// Round-robin: line r of every flow, then line r + 1; a fresh socket per datagram, bound to
/// the flow's port (1000s of flows would otherwise need 1000s of descriptors).
fn udp(flows: &Flows, tally: &Tally, t0: Instant) -> Result<()> {
    let mut index = 0;
    for seq in 0..flows.lines {
        for port in flows.ports.clone() {
            if !pace(flows, t0, index) {
                return Ok(());
            }
            index += 1;
            let sent = bound_socket(flows, port, Type::DGRAM, Protocol::UDP)
                .map(UdpSocket::from)
                .and_then(|s| {
                    s.send_to(line(&flows.stream_of(port), seq).as_bytes(), flows.target)
                });
            match sent {
                Ok(_) => {
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tally.error(format!("udp from port {port} seq {seq}: {e}")),
            }
        }
    }
    Ok(())
}

/// Worker `w` of `workers`: the connections of every `workers`-th port, one after the other.
fn tcp(flows: &Flows, w: usize, workers: usize, tally: &Tally, t0: Instant) -> Result<()> {
    let lines = flows.lines;
    for (i, port) in flows.ports.clone().enumerate().skip(w).step_by(workers) {
        // Paced by connection: its lines are due together.
        if !pace(flows, t0, i as u64 * lines) {
            return Ok(());
        }
        match connection(flows, port) {
            Ok(()) => {
                tally.sent.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => tally.failed(port, format!("tcp from port {port}: {e:#}")),
        }
    }
    Ok(())
}

/// One connection: connect, send the flow's lines, FIN, wait for the peer's close.
fn connection(flows: &Flows, port: u16) -> Result<()> {
    let s = bound_socket(flows, port, Type::STREAM, Protocol::TCP).context("bind")?;
    s.connect_timeout(&flows.target.into(), TCP_STEP)
        .context("connect")?;
    let mut c: TcpStream = s.into();
    c.set_nodelay(true).context("nodelay")?;
    c.set_write_timeout(Some(TCP_STEP))
        .context("write timeout")?;
    c.set_read_timeout(Some(TCP_STEP)).context("read timeout")?;
    let name = flows.stream_of(port);
    let mut buf = Vec::new();
    for seq in 0..flows.lines {
        let l = line(&name, seq);
        buf.extend_from_slice(format!("{} {l}", l.len()).as_bytes());
    }
    c.write_all(&buf).context("send")?;
    c.shutdown(Shutdown::Write).context("shutdown")?;
    // The peer closes once it has read everything we sent: then the lines are with it.
    let mut sink = [0u8; 512];
    loop {
        match c.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting for the peer to close"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_names_round_trip() {
        assert_eq!(flow_stream("u1", 20000), "u1-p20000");
        assert_eq!(flow_port("u1", "u1-p20000"), Some(20000));
        assert_eq!(flow_port("u1", "u12-p20000"), None);
        assert_eq!(flow_port("u1", "u1-c3"), None);
        assert_eq!(
            line("u1-p5", 7),
            "<14>1 - lab flows - - - stream=u1-p5 seq=7"
        );
    }
}
