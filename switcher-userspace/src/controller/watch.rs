//! The watch after a flip: every interval for the watch window, the same health (of every
//! member: the environment's healthy share) and metrics checks as validation plus the datapath's own view of the candidate (TCP resets it sent,
//! ICMP unreachables about it, a sudden drop of its traffic). This task measures; the
//! [`WatchJudge`](crate::judge::WatchJudge) decides each round, and the controller applies
//! the verdict: enough consecutive failed rounds roll back, a clean window makes the
//! deployment stable with the previous colour kept warm.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;

use super::host::Host;
use crate::{
    domain::now_ms,
    judge::{self, RoundObservation, WatchJudge},
    probe::{health, health::HealthSpec, metrics},
};

/// One probe of every member, all at once: each member and its probe's error.
async fn probe_all(specs: &[(SocketAddr, HealthSpec)]) -> Vec<(SocketAddr, Option<String>)> {
    let mut probes = tokio::task::JoinSet::new();
    for (addr, spec) in specs {
        let (addr, spec) = (*addr, spec.clone());
        probes.spawn(async move { (addr, health::check_once(&spec).await.err()) });
    }
    let mut out = Vec::new();
    while let Some(done) = probes.join_next().await {
        match done {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("a health probe task failed: {e}"),
        }
    }
    out.sort_by_key(|(a, _)| *a);
    out
}

pub(super) async fn run(ctl: &impl Host, service: &str, resumed: bool) -> Result<()> {
    let inp = ctl.watch_inputs(service, resumed).await?;
    let w = &inp.checks.watch;
    let specs: Vec<(SocketAddr, HealthSpec)> = match &inp.checks.health {
        Some(h) => inp
            .candidate
            .iter()
            .map(|m| (m.addr, judge::health_spec(h, inp.protocol, m.addr)))
            .collect(),
        None => Vec::new(),
    };
    // The environment's metrics: the first member's endpoint stands for it (a URL without
    // `{addr}` is one endpoint for all).
    let metrics_check = inp
        .checks
        .metrics
        .as_ref()
        .zip(inp.candidate.first())
        .map(|(m, c)| (m, judge::expand_url(&m.url, c.addr)));
    let mut before = ctl.counters(service, inp.color).await?;
    let mut scrape_before = match &metrics_check {
        Some((m, u)) => Some(
            metrics::scrape(u, m.timeout)
                .await
                .map_err(|e| e.to_string()),
        ),
        None => None,
    };
    let mut judge = WatchJudge::new(w.clone());
    loop {
        let left = inp.until_ms.saturating_sub(now_ms());
        if left == 0 {
            return ctl
                .watch_passed(service, inp.id, judge.rounds(), inp.checks.warm)
                .await;
        }
        let interval = w.interval.min(Duration::from_millis(left));
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(interval).await;

        let mut o = RoundObservation::default();
        if !specs.is_empty() {
            let results = probe_all(&specs).await;
            o.health_error = judge::healthy_share(&results, w.min_healthy_share);
        }
        if let (Some((m, u)), Some(prev)) = (&metrics_check, scrape_before.take()) {
            let after = metrics::scrape(u, m.timeout)
                .await
                .map_err(|e| e.to_string());
            o.metrics_failures = judge::metrics(m, prev, after.clone(), t0.elapsed()).0;
            scrape_before = Some(after);
        }
        o.before = before;
        o.after = ctl.counters(service, inp.color).await?;
        o.seconds = t0.elapsed().as_secs_f64();
        before = o.after;
        if ctl.watch_round(service, inp.id, judge.round(o)).await? {
            return Ok(());
        }
    }
}
