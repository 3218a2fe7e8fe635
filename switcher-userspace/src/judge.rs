//! Pure judgement of a candidate backend: what its checks mean for one backend (health spec,
//! load target, metrics URL) and what the measured results say (load thresholds, metrics
//! rules, canary, the watch's rounds). No I/O here: the controller's tasks measure, these
//! functions decide, and the controller applies the verdict. No data is a failure.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::json;

mod pool;
pub use pool::{healthy_share, load_environment, sample, LOAD_SAMPLE};
use switcher_common::{ColorCounters, ShadowCounters};

use crate::{
    config::{HealthCheck, LoadCheck, MetricsCheck, WatchPolicy},
    domain::Protocol,
    probe::{health::HealthSpec, load::LoadReport, metrics},
};

/// `{addr}` → the address (IPv6 in brackets), `{port}` → the port.
pub fn expand_url(template: &str, backend: SocketAddr) -> String {
    let addr = match backend.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    template
        .replace("{addr}", &addr)
        .replace("{port}", &backend.port().to_string())
}

/// The health probe of `backend`: a TCP service's own port is the natural connect check.
pub fn health_spec(h: &HealthCheck, protocol: Protocol, backend: SocketAddr) -> HealthSpec {
    let tcp_port = h
        .tcp_port
        .or((protocol == Protocol::Tcp).then_some(backend.port()));
    HealthSpec {
        tcp: tcp_port.map(|p| SocketAddr::new(backend.ip(), p)),
        http_url: h.http.as_ref().map(|u| expand_url(u, backend)),
        rounds: h.rounds.clone(),
    }
}

/// Where a load run against `backend` goes.
pub fn load_target(l: &LoadCheck, backend: SocketAddr) -> SocketAddr {
    SocketAddr::new(backend.ip(), l.port.unwrap_or(backend.port()))
}

/// p99 latency of a load run in ms; `None` when it yielded no samples.
fn p99_ms(r: &LoadReport) -> Option<f64> {
    (r.latency.count > 0).then(|| r.latency.p99_us as f64 / 1000.0)
}

/// What a candidate's load run is compared with: the serving node's figures, or with several
/// serving nodes the environment's worst (its slowest p99, its lowest throughput).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reference {
    /// ms; `None` when the serving side yielded no latency samples.
    pub p99_ms: Option<f64>,
    pub throughput_lps: f64,
    /// The worst of several nodes (failures say so).
    many: bool,
}

impl Reference {
    /// One serving node's figures.
    pub fn of(r: &LoadReport) -> Self {
        Self {
            p99_ms: p99_ms(r),
            throughput_lps: r.throughput_lps,
            many: false,
        }
    }

    /// The worst figures of the serving environment's `reports`: a candidate member must not
    /// be worse than the serving environment's own spread by more than the ratio. (Against a
    /// typical serving node, the slowest of n identical candidates would fail ever more often
    /// as n grows: an order statistic, not a regression.) `None` without reports.
    pub fn worst(reports: &[LoadReport]) -> Option<Self> {
        match reports {
            [] => None,
            [one] => Some(Self::of(one)),
            many => Some(Self {
                p99_ms: many
                    .iter()
                    .map(p99_ms)
                    .try_fold(0.0f64, |acc, p| p.map(|p| acc.max(p))),
                throughput_lps: many
                    .iter()
                    .map(|r| r.throughput_lps)
                    .fold(f64::INFINITY, f64::min),
                many: true,
            }),
        }
    }

    fn name(&self) -> &'static str {
        if self.many {
            "the slowest serving member's"
        } else {
            "serving's"
        }
    }
}

/// Threshold verdicts of a load run; empty when it passed.
pub fn load(l: &LoadCheck, cand: &LoadReport, serving: Option<Reference>) -> Vec<String> {
    let mut f = Vec::new();
    let lines = l.run.lines;
    let error_ratio = cand.errors as f64 / lines.max(1) as f64;
    if error_ratio > l.max_error_ratio {
        f.push(format!(
            "load: {} errors in {} lines ({:.2}% > {:.2}%){}",
            cand.errors,
            lines,
            error_ratio * 100.0,
            l.max_error_ratio * 100.0,
            cand.first_error
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        ));
    }
    let wants_latency = l.max_p99_ms.is_some() || l.max_p99_ratio.is_some();
    if wants_latency && p99_ms(cand).is_none() {
        f.push("load: the candidate yielded no latency samples".into());
    }
    if let (Some(max), Some(p)) = (l.max_p99_ms, p99_ms(cand)) {
        if p > max {
            f.push(format!(
                "load: p99 {} latency {p:.2} ms > {max} ms",
                cand.latency_kind
            ));
        }
    }
    if let Some(min) = l.min_throughput {
        if cand.throughput_lps < min {
            f.push(format!(
                "load: throughput {:.0} lines/s < {min}",
                cand.throughput_lps
            ));
        }
    }
    if l.max_p99_ratio.is_some() || l.min_throughput_ratio.is_some() {
        match serving {
            None => f.push("load: no serving backend to compare with".into()),
            Some(s) => {
                if let Some(ratio) = l.max_p99_ratio {
                    match (p99_ms(cand), s.p99_ms) {
                        (Some(c), Some(b)) if c > ratio * b.max(0.001) => f.push(format!(
                            "load: p99 {c:.2} ms > {ratio} x {} {b:.2} ms",
                            s.name()
                        )),
                        (Some(_), None) => {
                            f.push("load: the serving backend yielded no latency samples".into())
                        }
                        _ => {}
                    }
                }
                if let Some(ratio) = l.min_throughput_ratio {
                    if cand.throughput_lps < ratio * s.throughput_lps {
                        f.push(format!(
                            "load: throughput {:.0} lines/s < {ratio} x {} {:.0}",
                            cand.throughput_lps,
                            s.name(),
                            s.throughput_lps
                        ));
                    }
                }
            }
        }
    }
    f
}

/// The rules of the candidate's own metrics between two scrapes `elapsed` apart: the failures
/// and the evidence.
pub fn metrics(
    m: &MetricsCheck,
    before: Result<Vec<metrics::Sample>, String>,
    after: Result<Vec<metrics::Sample>, String>,
    elapsed: Duration,
) -> (Vec<String>, serde_json::Value) {
    let (before, after) = match (before, after) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => {
            return (
                vec![format!("metrics: scraping {} failed: {e}", m.url)],
                json!({ "error": e }),
            );
        }
    };
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for c in &m.rules {
        let b = metrics::sum(&before, &c.name, &c.labels);
        let a = metrics::sum(&after, &c.name, &c.labels);
        let (Some(b), Some(a)) = (b, a) else {
            failures.push(format!("metrics: {}{:?} is not exported", c.name, c.labels));
            rows.push(json!({ "name": c.name, "labels": c.labels, "missing": true }));
            continue;
        };
        let delta = a - b;
        let rate = delta / secs;
        if let Some(max) = c.max_increase {
            if delta > max {
                failures.push(format!("metrics: {} grew by {delta} (max {max})", c.name));
            }
        }
        if let Some(min) = c.min_rate {
            if rate < min {
                failures.push(format!("metrics: {} rate {rate:.1}/s < {min}/s", c.name));
            }
        }
        rows.push(json!({ "name": c.name, "labels": c.labels, "before": b, "after": a, "delta": delta, "rate_per_s": rate }));
    }
    (failures, json!({ "checks": rows, "seconds": secs }))
}

/// The datapath share of new flows for a canary of `percent`: 1/65536 units, never 0 (a
/// canary that sends nothing proves nothing) and never all.
pub fn canary_share(percent: f64) -> u32 {
    ((percent / 100.0) * 65536.0).round().clamp(1.0, 65535.0) as u32
}

/// The datapath share of packets copied for shadowing at `percent`: 1/65536 units, never 0;
/// 65536 (100%) copies every packet.
pub fn shadow_share(percent: f64) -> u32 {
    ((percent / 100.0) * 65536.0).round().clamp(1.0, 65536.0) as u32
}

/// What shadowing for `duration` at `percent` showed: the copies made before and after, and
/// the candidate's health probes that failed meanwhile. No copy at all is a failure: a
/// candidate that saw no production traffic proved nothing.
pub fn shadow(
    percent: f64,
    duration: Duration,
    before: &ShadowCounters,
    after: &ShadowCounters,
    health_failures: u32,
) -> (Vec<String>, serde_json::Value) {
    let mut failures = Vec::new();
    let copies = after.copies.saturating_sub(before.copies);
    let failed = after.failed.saturating_sub(before.failed);
    if copies == 0 {
        failures.push(format!(
            "shadow: no packet was copied to the candidate in {} s at {percent}%",
            duration.as_secs()
        ));
    }
    if health_failures > 0 {
        failures.push(format!("shadow: {health_failures} failed health probes"));
    }
    (
        failures,
        json!({ "percent": percent, "copies": copies, "failed_copies": failed, "health_failures": health_failures }),
    )
}

/// What a canary run of `duration` at `percent` showed: the candidate's counters before and
/// after, and the health probes that failed meanwhile.
pub fn canary(
    percent: f64,
    duration: Duration,
    before: &ColorCounters,
    after: &ColorCounters,
    health_failures: u32,
) -> (Vec<String>, serde_json::Value) {
    let mut failures = Vec::new();
    let packets = after.packets.saturating_sub(before.packets);
    let flows = after.new_flows.saturating_sub(before.new_flows);
    if packets == 0 {
        failures.push(format!(
            "canary: no traffic reached the candidate in {} s at {percent}% of new flows",
            duration.as_secs()
        ));
    }
    if health_failures > 0 {
        failures.push(format!("canary: {health_failures} failed health probes"));
    }
    let resets = after.resets.saturating_sub(before.resets);
    if resets > 0 {
        failures.push(format!(
            "canary: the candidate reset {resets} TCP connections"
        ));
    }
    let unreachables = after.unreachables.saturating_sub(before.unreachables);
    if unreachables > 0 {
        failures.push(format!(
            "canary: {unreachables} ICMP unreachables about the candidate"
        ));
    }
    (
        failures,
        json!({ "percent": percent, "packets": packets, "new_flows": flows, "resets": resets, "unreachables": unreachables, "health_failures": health_failures }),
    )
}

/// Below this baseline (packets/s) the traffic-drop rule does not judge: a trickle cannot tell
/// a drop from a quiet client, and any single sender could make one.
pub const RATE_FLOOR: f64 = 10.0;
/// How many earlier rounds the baseline is the median of.
const RATE_HISTORY: usize = 64;

/// A sudden drop of the traffic the switch delivers to the candidate: this round's packet rate
/// below `ratio` times the baseline (clients backing off, connections dying). The baseline is
/// the median rate of the earlier rounds with traffic, so one sender's burst cannot raise it
/// (a burst then silence is no drop); rounds before any traffic, or a baseline under
/// [`RATE_FLOOR`], judge nothing.
pub fn traffic_dropped(rate: f64, baseline: Option<f64>, ratio: f64) -> bool {
    baseline.is_some_and(|b| b >= RATE_FLOOR && rate < ratio * b)
}

/// The median of `v`, the upper one of an even count (None when empty).
fn median(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// What one watch round measured.
#[derive(Debug, Clone, Default)]
pub struct RoundObservation {
    /// The health probe's error, if it failed.
    pub health_error: Option<String>,
    /// Failures of the metrics rules this round.
    pub metrics_failures: Vec<String>,
    /// The candidate's datapath counters at the start and end of the round.
    pub before: ColorCounters,
    pub after: ColorCounters,
    pub seconds: f64,
}

/// The verdict on one watch round.
#[derive(Debug, Clone, PartialEq)]
pub enum Round {
    Passed,
    Failed {
        round: u64,
        consecutive: u32,
        /// Consecutive failures the policy allows before rolling back.
        allowed: u32,
        failures: Vec<String>,
        /// Enough consecutive failures: roll back.
        rollback: bool,
    },
}

/// The post-flip watch's judge: counts rounds and consecutive failures, and keeps the recent
/// packet rates that make the baseline of the traffic-drop rule.
#[derive(Debug, Clone)]
pub struct WatchJudge {
    policy: WatchPolicy,
    rounds: u64,
    consecutive: u32,
    rates: std::collections::VecDeque<f64>,
}

impl WatchJudge {
    pub fn new(policy: WatchPolicy) -> Self {
        Self {
            policy,
            rounds: 0,
            consecutive: 0,
            rates: std::collections::VecDeque::new(),
        }
    }

    /// Rounds judged so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    pub fn round(&mut self, o: RoundObservation) -> Round {
        self.rounds += 1;
        let w = &self.policy;
        let mut failures = Vec::new();
        if let Some(e) = o.health_error {
            failures.push(format!("health: {e}"));
        }
        failures.extend(o.metrics_failures);
        let new_resets = o.after.resets.saturating_sub(o.before.resets);
        let new_unreachables = o.after.unreachables.saturating_sub(o.before.unreachables);
        let rate = o.after.packets.saturating_sub(o.before.packets) as f64 / o.seconds.max(0.001);
        if let Some(max) = w.max_resets {
            if new_resets > max {
                failures.push(format!(
                    "datapath: the candidate reset {new_resets} TCP connections (max {max})"
                ));
            }
        }
        if let Some(max) = w.max_unreachables {
            if new_unreachables > max {
                failures.push(format!(
                    "datapath: {new_unreachables} ICMP unreachables about the candidate (max {max})"
                ));
            }
        }
        if let Some(ratio) = w.min_rate_ratio {
            let baseline = median(self.rates.iter().copied());
            if traffic_dropped(rate, baseline, ratio) {
                failures.push(format!(
                    "datapath: traffic to the candidate fell to {rate:.0} packets/s (< {ratio} x \
                     the usual {:.0})",
                    baseline.unwrap_or_default()
                ));
            }
        }
        if rate > 0.0 {
            if self.rates.len() == RATE_HISTORY {
                self.rates.pop_front();
            }
            self.rates.push_back(rate);
        }
        if failures.is_empty() {
            self.consecutive = 0;
            return Round::Passed;
        }
        self.consecutive += 1;
        Round::Failed {
            round: self.rounds,
            consecutive: self.consecutive,
            allowed: w.failures,
            failures,
            rollback: self.consecutive >= w.failures,
        }
    }
}

#[cfg(test)]
mod tests;
