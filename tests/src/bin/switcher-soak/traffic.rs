//! The soak's traffic: every stream of numbered lines, who sends it, which service it goes
//! through and what may happen to it; the log-sender processes (long-lived UDP senders and TCP
//! connections that run the whole soak, and the new connections the schedule opens).
//!
//! Rates are modest on purpose (about 900 lines/s in all): the machine has two cores and the
//! soak looks for lost lines and leaks, not for throughput.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use switcher::domain::Color;
use switcher_tests::{
    lab::{Proc, VIP_V4, VIP_V6},
    rig::{Rig, TCP_PORT, UDP_PORT},
};

use crate::sinks::Tally;

/// Long-lived log-sender streams: (stream, service, proto, v6, lines/s, TCP connections).
const LONG: [(&str, &str, &str, bool, u64, u64); 4] = [
    ("u4", "udp4", "udp", false, 300, 1),
    ("u6", "udp6", "udp", true, 200, 1),
    ("t4", "tcp4", "tcp", false, 150, 3),
    ("t6", "tcp6", "tcp", true, 100, 1),
];
/// Lines/s of a new connection opened by the schedule.
const CONNECT_RATE: u64 = 100;
/// How far past its planned end a sender may run (log-sender's own hard bound).
pub const SENDER_SLACK: Duration = Duration::from_secs(60);

/// What a stream's lines may do across the soak's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Any colour, line by line (UDP, or TCP connections made while flips happen).
    AnyColour,
    /// Every line at this colour: a TCP connection stays where it was established.
    On(Color),
}

/// One stream of numbered lines: the lines `offset + i * step` for `i` in `0..count`.
#[derive(Debug, Clone)]
pub struct Stream {
    pub name: String,
    /// Who sends it and how, for the report.
    pub client: String,
    pub service: &'static str,
    pub offset: u64,
    pub step: u64,
    pub count: u64,
    pub expect: Expect,
    /// When its first line was due (since the start of the soak) and its rate, to place a
    /// missing line in time.
    pub start: Duration,
    pub rate: f64,
    /// Index into [`Traffic::senders`], for streams log-sender sends.
    pub sender: Option<usize>,
}

impl Stream {
    /// When line `seq` was due, since the start of the soak.
    pub fn due(&self, seq: u64) -> Duration {
        let i = seq.saturating_sub(self.offset) / self.step.max(1);
        self.start + Duration::from_secs_f64(i as f64 * self.step as f64 / self.rate.max(1e-9))
    }
}

/// One log-sender process.
pub struct Sender {
    pub label: String,
    pub proc: Proc,
    pub count: u64,
    /// Long-lived (runs the whole soak) or opened by the schedule.
    pub long: bool,
}

#[derive(Default)]
pub struct Traffic {
    pub streams: Vec<Stream>,
    pub senders: Vec<Sender>,
    connections: u64,
}

pub fn vip(v6: bool, port: u16) -> String {
    if v6 {
        format!("[{VIP_V6}]:{port}")
    } else {
        format!("{VIP_V4}:{port}")
    }
}

impl Traffic {
    /// Starts log-sender `args` to `target` as stream(s) `name`: one stream, or one per TCP
    /// connection (`NAME-cK`, lines K, K+n, ... as log-sender spreads them).
    #[allow(clippy::too_many_arguments)]
    fn start_sender(
        &mut self,
        rig: &Rig,
        tally: &Tally,
        t0: Instant,
        target: &str,
        (name, service, proto): (&str, &'static str, &str),
        (count, rate, connections): (u64, u64, u64),
        (expect, long, seconds): (Expect, bool, u64),
    ) -> Result<()> {
        let max = (Duration::from_secs(seconds) + SENDER_SLACK).as_secs();
        let proc = rig
            .send(
                target,
                &[
                    "--proto",
                    proto,
                    "--count",
                    &count.to_string(),
                    "--rate",
                    &rate.to_string(),
                    "--stream",
                    name,
                    "--connections",
                    &connections.to_string(),
                    "--max-seconds",
                    &max.to_string(),
                ],
            )
            .with_context(|| format!("starting log-sender {name}"))?;
        let start = t0.elapsed();
        let index = self.senders.len();
        self.senders.push(Sender {
            label: format!("log-sender {name} ({proto} to {target})"),
            proc,
            count,
            long,
        });
        let names: Vec<String> = if connections > 1 {
            (0..connections).map(|k| format!("{name}-c{k}")).collect()
        } else {
            vec![name.to_string()]
        };
        for (k, stream) in names.into_iter().enumerate() {
            tally.track(&stream);
            self.streams.push(Stream {
                name: stream,
                client: if connections > 1 {
                    format!("log-sender {proto}, connection {k} of {connections}")
                } else {
                    format!("log-sender {proto}")
                },
                service,
                offset: k as u64,
                step: connections,
                count: count.saturating_sub(k as u64).div_ceil(connections),
                expect,
                start,
                rate: rate as f64,
                sender: Some(index),
            });
        }
        Ok(())
    }

    /// The long-lived streams, for `seconds`: UDP to udp4 and udp6, three TCP connections to
    /// tcp4 and one to tcp6, all established while blue is active (before any operation), so
    /// every TCP line must arrive at blue.
    pub fn start_long(
        &mut self,
        rig: &Rig,
        tally: &Tally,
        t0: Instant,
        seconds: u64,
    ) -> Result<()> {
        for (name, service, proto, v6, rate, connections) in LONG {
            let port = if proto == "udp" { UDP_PORT } else { TCP_PORT };
            let expect = if proto == "tcp" {
                Expect::On(Color::Blue)
            } else {
                Expect::AnyColour
            };
            self.start_sender(
                rig,
                tally,
                t0,
                &vip(v6, port),
                (name, service, proto),
                (rate * seconds, rate, connections),
                (expect, true, seconds),
            )?;
        }
        Ok(())
    }

    /// A log-sender stream through the client host's rsyslog (TCP to its local input), which
    /// forwards it over its own connection to tcp4.
    pub fn start_via_rsyslog(
        &mut self,
        rig: &Rig,
        tally: &Tally,
        t0: Instant,
        local: SocketAddr,
        seconds: u64,
        rate: u64,
    ) -> Result<()> {
        self.start_sender(
            rig,
            tally,
            t0,
            &local.to_string(),
            ("rf", "tcp4", "tcp"),
            (rate * seconds, rate, 1),
            (Expect::On(Color::Blue), true, seconds),
        )?;
        if let Some(s) = self.streams.last_mut() {
            s.client = "log-sender → rsyslogd (client host) → omfwd tcp".into();
        }
        Ok(())
    }

    /// Opens a new TCP connection to tcp4 or tcp6 sending for `secs`; returns its stream
    /// name. Its colour is decided by the caller once its first lines arrived.
    pub fn connect(
        &mut self,
        rig: &Rig,
        tally: &Tally,
        t0: Instant,
        v6: bool,
        secs: u64,
    ) -> Result<String> {
        let name = format!("n{}", self.connections);
        self.connections += 1;
        let service = if v6 { "tcp6" } else { "tcp4" };
        self.start_sender(
            rig,
            tally,
            t0,
            &vip(v6, TCP_PORT),
            (&name, service, "tcp"),
            (CONNECT_RATE * secs, CONNECT_RATE, 1),
            (Expect::AnyColour, false, secs),
        )?;
        Ok(name)
    }

    pub fn stream_mut(&mut self, name: &str) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.name == name)
    }

    /// Names of the streams of the long-lived senders of `proto` ("udp" or "tcp").
    pub fn long_streams(&self, udp: bool) -> Vec<String> {
        self.streams
            .iter()
            .filter(|s| {
                s.sender
                    .is_some_and(|i| self.senders[i].long && s.service.starts_with("udp") == udp)
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// Fails if a long-lived sender has already exited (the soak must not run without it).
    pub fn check_long_running(&self) -> Result<()> {
        for s in self.senders.iter().filter(|s| s.long) {
            if let Some(st) = s.proc.try_wait()? {
                bail!("{} exited early ({st}): {}", s.label, s.proc.stderr_tail(5));
            }
        }
        Ok(())
    }
}

/// Waits until `stream` has `n` lines at either colour; returns (blue, green).
pub fn wait_lines(
    tally: &Tally,
    stream: &str,
    n: usize,
    timeout: Duration,
) -> Result<(usize, usize)> {
    let deadline = Instant::now() + timeout;
    loop {
        tally.read_new()?;
        let (b, g) = tally.counts(stream);
        if b + g >= n {
            return Ok((b, g));
        }
        if Instant::now() >= deadline {
            bail!("{stream}: {b} lines at blue and {g} at green after {timeout:?}, want {n}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_placed_in_time_by_its_connection_and_rate() {
        let s = Stream {
            name: "t-c1".into(),
            client: String::new(),
            service: "tcp4",
            offset: 1,
            step: 3,
            count: 10,
            expect: Expect::AnyColour,
            start: Duration::from_secs(5),
            rate: 150.0,
            sender: None,
        };
        // Line 301 is the 100th of connection 1; the sender's 300th line, due 2 s in.
        assert_eq!(s.due(301), Duration::from_secs(7));
    }
}
