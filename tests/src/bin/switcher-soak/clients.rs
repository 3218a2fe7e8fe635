//! Real syslog clients on the client host besides log-sender: an rsyslogd that forwards what
//! it receives on a local TCP input to tcp4 (omfwd, one long-lived connection, RFC 6587 octet
//! counting), and `logger` (bsdutils) sending a numbered line over UDP to udp4 and another
//! over TCP to tcp6 twice a second, each call its own process (and, over TCP, its own
//! connection).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use switcher_tests::{
    lab::{Forwarder, Host, Proc, Shipping, VIP_V4, VIP_V6},
    rig::{Rig, TCP_PORT, UDP_PORT},
};

use crate::traffic::{Expect, Stream};

/// rsyslogd's local input in the client's namespace.
pub const RSYSLOG_INPUT: &str = "127.0.0.1:10514";
/// Lines/s log-sender feeds the forwarder.
pub const RSYSLOG_RATE: u64 = 50;
/// One `logger` line per stream this often.
const LOGGER_EVERY: Duration = Duration::from_millis(500);
/// A `logger` call that takes longer is killed and counted as failed.
const LOGGER_TIMEOUT: Duration = Duration::from_secs(10);
pub const LOGGER_UDP: &str = "lgu";
pub const LOGGER_TCP: &str = "lgt";

/// Starts rsyslogd in the client host, forwarding its TCP input [`RSYSLOG_INPUT`] to tcp4's
/// VIP over one long-lived connection; returns once it listens. Tracked by the lab (stopped at
/// teardown). Its action retries for ever: a connection it had to re-open would land on the
/// active colour, which the soak reports (its lines must all stay at blue).
pub fn start_forwarder(rig: &Rig, work: &Path) -> Result<(Proc, SocketAddr)> {
    let local: SocketAddr = RSYSLOG_INPUT.parse().context("rsyslog input address")?;
    let f = Forwarder {
        input: local,
        target: SocketAddr::new(VIP_V4.into(), TCP_PORT),
        shipping: Shipping::Tcp,
    };
    let proc = rig
        .lab
        .start_forwarder(Host::Client, &f, work)
        .context("starting the rsyslog forwarder (Debian package rsyslog)")?;
    Ok((proc, local))
}

/// What the logger thread did.
#[derive(Debug, Default)]
pub struct LoggerRun {
    /// Calls made per stream (their seqs are 0..calls).
    pub udp_calls: u64,
    pub tcp_calls: u64,
    /// (stream, seq, why) of every call that did not exit 0.
    pub failures: Vec<(String, u64, String)>,
}

impl LoggerRun {
    /// The seqs of `stream` whose `logger` call failed (reported on their own).
    pub fn failed(&self, stream: &str) -> BTreeSet<u64> {
        self.failures
            .iter()
            .filter(|(s, _, _)| s == stream)
            .map(|(_, seq, _)| *seq)
            .collect()
    }

    /// Its two streams, for the checks; `start`: when the first call was made.
    pub fn streams(&self, start: Duration) -> Vec<Stream> {
        [
            (LOGGER_UDP, self.udp_calls, "udp4", "udp"),
            (LOGGER_TCP, self.tcp_calls, "tcp6", "tcp --octet-count"),
        ]
        .into_iter()
        .map(|(name, calls, service, how)| Stream {
            name: name.into(),
            client: format!("logger --{how} (a process per line)"),
            service,
            offset: 0,
            step: 1,
            count: calls,
            expect: Expect::AnyColour,
            start,
            rate: 1.0 / LOGGER_EVERY.as_secs_f64(),
            sender: None,
        })
        .collect()
    }
}

pub struct Logger {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<LoggerRun>,
}

impl Logger {
    /// Calls `logger` in the client's namespace `ns` until `until` (or [`Logger::finish`]).
    pub fn start(ns: &str, until: Instant) -> Logger {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, stop2) = (ns.to_string(), Arc::clone(&stop));
        let handle = thread::spawn(move || {
            let mut run = LoggerRun::default();
            let mut next = Instant::now();
            // Bounded by time, and so by count (one round per LOGGER_EVERY).
            while Instant::now() < until && !stop2.load(Ordering::Relaxed) {
                let udp = vec![
                    "--udp".to_string(),
                    "-n".into(),
                    VIP_V4.to_string(),
                    "-P".into(),
                    UDP_PORT.to_string(),
                ];
                let tcp = vec![
                    "--tcp".to_string(),
                    "--octet-count".into(),
                    "-n".into(),
                    VIP_V6.to_string(),
                    "-P".into(),
                    TCP_PORT.to_string(),
                ];
                for (stream, how, calls) in [
                    (LOGGER_UDP, udp, &mut run.udp_calls),
                    (LOGGER_TCP, tcp, &mut run.tcp_calls),
                ] {
                    let seq = *calls;
                    *calls += 1;
                    if let Err(e) = call_logger(&ns, &how, &format!("stream={stream} seq={seq}")) {
                        run.failures
                            .push((stream.to_string(), seq, format!("{e:#}")));
                    }
                }
                next += LOGGER_EVERY;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            run
        });
        Logger { stop, handle }
    }

    pub fn finish(self) -> Result<LoggerRun> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the logger thread panicked"))
    }
}

/// `ip netns exec NS logger HOW -t soak MESSAGE`, killed after [`LOGGER_TIMEOUT`].
fn call_logger(ns: &str, how: &[String], message: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "logger"])
        .args(how)
        .args(["-t", "soak", message])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting logger (Debian package bsdutils)")?;
    let deadline = Instant::now() + LOGGER_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().context("waiting for logger")? {
            if st.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read as _;
                let _ = e.read_to_string(&mut err);
            }
            bail!("logger {}: {st}: {}", how.join(" "), err.trim());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("logger {} took over {LOGGER_TIMEOUT:?}", how.join(" "));
        }
        thread::sleep(Duration::from_millis(5));
    }
}
