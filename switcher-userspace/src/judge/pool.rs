//! Judging an environment (a colour's pool) rather than one node: which members the load
//! runs against, how per-member load results compare with the serving environment, and when
//! too few members are healthy.

use std::net::SocketAddr;

use super::{load, median, p99_ms, Reference};
use crate::{
    config::{LoadCheck, Member},
    probe::load::LoadReport,
};

/// At most this many members of each environment take the synthetic load in one validation
/// (spread evenly over the pool): each runs the configured load in full, so the cost of a
/// validation stays bounded whatever the pool's size.
pub const LOAD_SAMPLE: usize = 8;

/// Up to `k` members spread evenly over `members` (all of them when there are no more).
pub fn sample(members: &[Member], k: usize) -> Vec<Member> {
    let n = members.len();
    if n <= k {
        return members.to_vec();
    }
    (0..k).map(|i| members[i * n / k]).collect()
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = v.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| sum / n as f64)
}

/// Every candidate member against the thresholds and against the serving environment's
/// worst member (a member may not fall outside serving's own spread by more than the ratio),
/// then the candidate environment as a whole against the serving one, like with like: the
/// median p99 across members and the mean throughput per node. Failures name the member;
/// empty when everything passed.
pub fn load_environment(
    l: &LoadCheck,
    candidate: &[LoadReport],
    serving: &[LoadReport],
) -> Vec<String> {
    if candidate.is_empty() {
        return vec!["load: the candidate has no member to load".into()];
    }
    let reference = Reference::worst(serving);
    let many = candidate.len() > 1;
    let mut f = Vec::new();
    for c in candidate {
        for failure in load(l, c, reference) {
            f.push(if many {
                failure.replacen("load:", &format!("load {}:", c.target), 1)
            } else {
                failure
            });
        }
    }
    if !(many || serving.len() > 1) {
        return f;
    }
    if let Some(ratio) = l.max_p99_ratio {
        let c = median(candidate.iter().filter_map(p99_ms));
        let s = median(serving.iter().filter_map(p99_ms));
        if let (Some(c), Some(s)) = (c, s) {
            if c > ratio * s.max(0.001) {
                f.push(format!(
                    "load (environment): median p99 across members {c:.2} ms > {ratio} x \
                     serving's {s:.2} ms"
                ));
            }
        }
    }
    if let Some(ratio) = l.min_throughput_ratio {
        let c = mean(candidate.iter().map(|r| r.throughput_lps));
        let s = mean(serving.iter().map(|r| r.throughput_lps));
        if let (Some(c), Some(s)) = (c, s) {
            if c < ratio * s {
                f.push(format!(
                    "load (environment): mean throughput per node {c:.0} lines/s < {ratio} x \
                     serving's {s:.0}"
                ));
            }
        }
    }
    f
}

/// One watch round's health of an environment: a failure when fewer members than `min_share`
/// passed their probe, or none did (an environment without a healthy node is down whatever
/// the threshold). `results`: each member and its probe's error.
pub fn healthy_share(results: &[(SocketAddr, Option<String>)], min_share: f64) -> Option<String> {
    if results.is_empty() {
        return None;
    }
    let healthy = results.iter().filter(|(_, e)| e.is_none()).count();
    let share = healthy as f64 / results.len() as f64;
    if share >= min_share && healthy > 0 {
        return None;
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(m, e)| e.as_ref().map(|e| format!("{m}: {e}")))
        .collect();
    Some(if results.len() == 1 {
        failed.join("; ")
    } else {
        format!(
            "{healthy} of {} members healthy ({:.0}% < {:.0}%): {}",
            results.len(),
            share * 100.0,
            min_share * 100.0,
            failed.join("; ")
        )
    })
}
