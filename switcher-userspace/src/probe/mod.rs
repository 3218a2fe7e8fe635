//! Probes the deployment controller uses to judge a backend: health checks before and after a
//! flip, a synthetic log load sent straight to one backend, and Prometheus/OpenMetrics scrapes.
//! Every probe is async, bounded by a timeout and returns data (or an error value), never panics.

pub mod health;
mod http;
pub mod load;
pub mod metrics;

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

/// Why a single probe (TCP connect, HTTP GET) failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("resolving {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("HTTP GET {url}: {reason}")]
    Http { url: String, reason: String },
}

/// Latency distribution in microseconds (nearest-rank percentiles). All zero when `count` is 0:
/// callers must check `count` before trusting the numbers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub count: u64,
}

impl Percentiles {
    /// Nearest-rank method: the p-th percentile is the smallest sample such that at least p% of
    /// the samples are less than or equal to it (rank ⌈p·n/100⌉, 1-based).
    pub fn compute(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        if n == 0 {
            return Self::default();
        }
        let at = |p: usize| -> u64 {
            // n ≥ 1, so the rank is in 1..=n.
            let rank = (p * n).div_ceil(100).max(1);
            samples.get(rank - 1).map_or(0, |d| micros(*d))
        };
        Self {
            p50_us: at(50),
            p90_us: at(90),
            p99_us: at(99),
            max_us: samples.last().map_or(0, |d| micros(*d)),
            count: n as u64,
        }
    }
}

/// Microseconds, saturating (a u64 of µs is 584 000 years).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|&u| Duration::from_micros(u)).collect()
    }

    #[test]
    fn empty_is_all_zero() {
        assert_eq!(Percentiles::compute(Vec::new()), Percentiles::default());
    }

    #[test]
    fn single_sample() {
        let p = Percentiles::compute(us(&[42]));
        assert_eq!(
            (p.p50_us, p.p90_us, p.p99_us, p.max_us, p.count),
            (42, 42, 42, 42, 1)
        );
    }

    #[test]
    fn nearest_rank_on_one_to_hundred() {
        // Shuffled input: the function must sort.
        let mut v: Vec<u64> = (1..=100).collect();
        v.reverse();
        v.swap(3, 70);
        let p = Percentiles::compute(us(&v));
        assert_eq!((p.p50_us, p.p90_us, p.p99_us, p.max_us), (50, 90, 99, 100));
        assert_eq!(p.count, 100);
    }

    #[test]
    fn nearest_rank_small_sets() {
        // n = 10: ranks 5, 9, 10.
        let p = Percentiles::compute(us(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]));
        assert_eq!((p.p50_us, p.p90_us, p.p99_us), (50, 90, 100));
        // n = 3: ranks ⌈1.5⌉ = 2, ⌈2.7⌉ = 3, ⌈2.97⌉ = 3.
        let p = Percentiles::compute(us(&[5, 1, 3]));
        assert_eq!((p.p50_us, p.p90_us, p.p99_us, p.max_us), (3, 5, 5, 5));
        // n = 4: p50 is rank 2 (no interpolation).
        let p = Percentiles::compute(us(&[1, 2, 3, 4]));
        assert_eq!(p.p50_us, 2);
    }

    #[test]
    fn sub_microsecond_and_huge() {
        let p = Percentiles::compute(vec![Duration::from_nanos(999), Duration::MAX]);
        assert_eq!(p.p50_us, 0);
        assert_eq!(p.max_us, u64::MAX);
    }
}
