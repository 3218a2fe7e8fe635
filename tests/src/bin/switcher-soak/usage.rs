//! The daemon's memory and file descriptors over the run: a thread samples VmRSS
//! (/proc/PID/status) and the number of open descriptors (/proc/PID/fd) of the current daemon
//! every [`EVERY`], and [`judge`] holds each incarnation (one daemon process, from its start
//! to its kill or stop) to the bounds below.
//!
//! Bounds, after a warm-up of [`WARMUP`] from the daemon's start (the runtime, the datapath,
//! the first probes and validations settle): the median of the last three samples may exceed
//! the median of the first three by at most [`MAX_RSS_GROWTH`] (RSS) and [`MAX_FD_GROWTH`]
//! descriptors. Medians, so a sample taken in the middle of a validation (its connections,
//! its buffers) does not decide. An incarnation with fewer than [`MIN_JUDGED`] samples after
//! its warm-up is reported but not judged: too short to tell growth from noise. The schedule
//! keeps the last 40% of the run to one incarnation, so a run always has one long enough.

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub const EVERY: Duration = Duration::from_secs(3);
pub const WARMUP: Duration = Duration::from_secs(20);
/// RSS may grow by this share of its baseline.
pub const MAX_RSS_GROWTH: f64 = 0.20;
pub const MAX_FD_GROWTH: i64 = 10;
pub const MIN_JUDGED: usize = 6;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the start of the run.
    pub at: Duration,
    pub rss_kb: u64,
    pub fds: u64,
}

#[derive(Debug, Clone)]
pub struct Incarnation {
    pub pid: u32,
    /// Since the start of the run.
    pub started: Duration,
    pub ended: Option<Duration>,
    pub samples: Vec<Sample>,
}

impl Incarnation {
    /// The samples after the warm-up.
    pub fn settled(&self) -> &[Sample] {
        let from = self.started + WARMUP;
        let i = self.samples.partition_point(|s| s.at < from);
        &self.samples[i..]
    }
}

#[derive(Default)]
struct Inner {
    incarnations: Vec<Incarnation>,
    errors: Vec<String>,
}

pub struct Usage {
    t0: Instant,
    inner: Mutex<Inner>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Usage {
    pub fn start(t0: Instant) -> (Arc<Usage>, thread::JoinHandle<()>) {
        let usage = Arc::new(Usage {
            t0,
            inner: Mutex::new(Inner::default()),
            stop: AtomicBool::new(false),
        });
        let u = Arc::clone(&usage);
        let handle = thread::spawn(move || {
            while !u.stop.load(Ordering::Relaxed) {
                u.sample();
                // Short sleeps, so stopping does not wait a whole period.
                let next = Instant::now() + EVERY;
                while Instant::now() < next && !u.stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                }
            }
        });
        (usage, handle)
    }

    /// A new daemon `pid` runs from now on.
    pub fn started(&self, pid: u32) {
        let at = self.t0.elapsed();
        let mut inner = lock(&self.inner);
        if let Some(last) = inner.incarnations.last_mut() {
            last.ended.get_or_insert(at);
        }
        inner.incarnations.push(Incarnation {
            pid,
            started: at,
            ended: None,
            samples: Vec::new(),
        });
    }

    /// The current daemon is about to go (kill, stop): no more samples of it.
    pub fn ended(&self) {
        let at = self.t0.elapsed();
        if let Some(last) = lock(&self.inner).incarnations.last_mut() {
            last.ended.get_or_insert(at);
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn sample(&self) {
        let pid = {
            let inner = lock(&self.inner);
            match inner.incarnations.last() {
                Some(i) if i.ended.is_none() => i.pid,
                _ => return,
            }
        };
        let read = read_usage(pid);
        let at = self.t0.elapsed();
        let mut inner = lock(&self.inner);
        let Some(inc) = inner.incarnations.last_mut() else {
            return;
        };
        // The daemon may have been replaced while this sample was read.
        if inc.pid != pid || inc.ended.is_some() {
            return;
        }
        match read {
            Ok((rss_kb, fds)) => inc.samples.push(Sample { at, rss_kb, fds }),
            Err(e) => inner.errors.push(format!("pid {pid}: {e:#}")),
        }
    }

    pub fn incarnations(&self) -> Vec<Incarnation> {
        lock(&self.inner).incarnations.clone()
    }

    pub fn errors(&self) -> Vec<String> {
        lock(&self.inner).errors.clone()
    }
}

/// (VmRSS in kB, open descriptors) of `pid`.
fn read_usage(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    Ok((rss, fds))
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// One incarnation's figures and verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub pid: u32,
    pub lived: Duration,
    pub samples: usize,
    /// (baseline, end, peak) after the warm-up; None when there are fewer than 3 samples.
    pub rss_kb: Option<(u64, u64, u64)>,
    pub fds: Option<(u64, u64, u64)>,
    pub judged: bool,
    pub problems: Vec<String>,
}

pub fn judge(inc: &Incarnation, now: Duration) -> Verdict {
    let settled = inc.settled();
    let lived = inc.ended.unwrap_or(now).saturating_sub(inc.started);
    let figures = |f: fn(&Sample) -> u64| -> Option<(u64, u64, u64)> {
        if settled.len() < 3 {
            return None;
        }
        let first = median(settled[..3].iter().map(f).collect());
        let last = median(settled[settled.len() - 3..].iter().map(f).collect());
        let peak = settled.iter().map(f).max().unwrap_or(0);
        Some((first, last, peak))
    };
    let rss_kb = figures(|s| s.rss_kb);
    let fds = figures(|s| s.fds);
    let judged = settled.len() >= MIN_JUDGED;
    let mut problems = Vec::new();
    if judged {
        if let Some((first, last, _)) = rss_kb {
            let limit = first as f64 * (1.0 + MAX_RSS_GROWTH);
            if last as f64 > limit {
                problems.push(format!(
                    "daemon pid {}: RSS grew from {first} kB to {last} kB (more than {:.0}%)",
                    inc.pid,
                    MAX_RSS_GROWTH * 100.0
                ));
            }
        }
        if let Some((first, last, _)) = fds {
            if last as i64 - first as i64 > MAX_FD_GROWTH {
                problems.push(format!(
                    "daemon pid {}: open descriptors grew from {first} to {last} (more than +{MAX_FD_GROWTH})",
                    inc.pid
                ));
            }
        }
    }
    Verdict {
        pid: inc.pid,
        lived,
        samples: settled.len(),
        rss_kb,
        fds,
        judged,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(series: &[(u64, u64)]) -> Incarnation {
        Incarnation {
            pid: 1,
            started: Duration::ZERO,
            ended: None,
            samples: series
                .iter()
                .enumerate()
                .map(|(i, (rss_kb, fds))| Sample {
                    at: WARMUP + EVERY * i as u32,
                    rss_kb: *rss_kb,
                    fds: *fds,
                })
                .collect(),
        }
    }

    #[test]
    fn flat_series_pass_and_growth_fails() {
        let flat = inc(&[
            (100, 20),
            (130, 25),
            (101, 20),
            (102, 21),
            (101, 20),
            (103, 21),
        ]);
        let v = judge(&flat, Duration::from_secs(60));
        assert!(v.judged && v.problems.is_empty(), "{v:?}");
        assert_eq!(v.rss_kb, Some((101, 102, 130)));
        let leak = inc(&[
            (100, 20),
            (100, 20),
            (100, 20),
            (150, 40),
            (160, 41),
            (170, 42),
        ]);
        let v = judge(&leak, Duration::from_secs(60));
        assert_eq!(v.problems.len(), 2, "{v:?}");
    }

    #[test]
    fn short_incarnations_are_not_judged() {
        let short = inc(&[(100, 20), (100, 20), (500, 90)]);
        let v = judge(&short, Duration::from_secs(60));
        assert!(!v.judged && v.problems.is_empty());
    }
}
