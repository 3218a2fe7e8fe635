//! Validation of a deployed candidate before its flip: health of every member, a synthetic
//! load on a sample of members compared with the serving environment, the candidate's own
//! metrics, optionally a copy of live UDP traffic to the candidate's shadow port (its health
//! and metrics under it), and optionally a canary share of real traffic (spread over the candidate's members
//! by the datapath's hash). This task only measures; the judges in [`crate::judge`] decide, and the verdict
//! goes back to the controller, which applies it. Every check that yields no data fails:
//! silence is never a pass.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tokio::time::Instant;

use super::host::{Host, ValidationInputs, Verdict};
use crate::{
    config::{CanaryCheck, LoadCheck, Member, MetricsCheck, ShadowCheck},
    judge,
    probe::{health, load, load::LoadReport, metrics},
};

/// Measures deployment `id` of `service` and returns the verdict.
pub(super) async fn run(ctl: &impl Host, service: &str, id: u64) -> Result<Verdict> {
    let inp = ctl.validation_inputs(service, id).await?;
    let mut v = Verdict::default();
    let started = Instant::now();

    match &inp.checks.health {
        Some(h) => {
            // Every member must pass: probed concurrently, each with the full rounds.
            let mut probes = tokio::task::JoinSet::new();
            for m in &inp.candidate {
                let spec = judge::health_spec(h, inp.protocol, m.addr);
                let addr = m.addr;
                probes.spawn(async move { (addr, health::until_healthy(&spec).await) });
            }
            let mut results = Vec::new();
            while let Some(done) = probes.join_next().await {
                results.push(done?);
            }
            results.sort_by_key(|(a, _)| *a);
            let many = results.len() > 1;
            for (addr, r) in &results {
                if !r.passed {
                    v.failures.push(format!(
                        "health{}: {} of {} consecutive successes before the deadline ({})",
                        if many {
                            format!(" {addr}")
                        } else {
                            String::new()
                        },
                        r.consecutive,
                        h.rounds.successes,
                        r.last_error.as_deref().unwrap_or("no error recorded")
                    ));
                }
            }
            if inp.candidate.is_empty() {
                v.failures
                    .push("health: the candidate has no member".into());
            }
            v.evidence.insert(
                "health".into(),
                if let [(_, one)] = results.as_slice() {
                    json!(one)
                } else {
                    json!(results
                        .iter()
                        .map(|(a, r)| (a.to_string(), json!(r)))
                        .collect::<serde_json::Map<_, _>>())
                },
            );
        }
        None => v.failures.push(
            "health: no health check configured for this service (add [service.health])".into(),
        ),
    }

    // A dead candidate is not worth loading.
    if v.failures.is_empty() {
        let urls = metrics_urls(&inp);
        let before = scrape_all(&urls).await;
        let t0 = Instant::now();
        if let Some(l) = &inp.checks.load {
            let cand = load_all(l, &judge::sample(&inp.candidate, judge::LOAD_SAMPLE)).await?;
            let serving = load_all(l, &judge::sample(&inp.serving, judge::LOAD_SAMPLE)).await?;
            v.failures
                .extend(judge::load_environment(l, &cand, &serving));
            // One node on each side: the evidence keeps the shape it always had.
            let side = |r: &[LoadReport]| match r {
                [] => json!(null),
                [one] => json!(one),
                many => json!(many),
            };
            v.evidence.insert(
                "load".into(),
                json!({ "candidate": side(&cand), "serving": side(&serving), "thresholds": l }),
            );
        }
        let (f, mut evidence) = judge_metrics(&urls, before, t0).await;
        v.failures.extend(f);
        match evidence.len() {
            0 => {}
            1 => {
                v.evidence.insert("metrics".into(), evidence.remove(0));
            }
            _ => {
                v.evidence.insert("metrics".into(), json!(evidence));
            }
        }
    }

    if v.failures.is_empty() {
        if let Some(shadow) = &inp.checks.shadow {
            let (f, e) = run_shadow(ctl, service, id, &inp, shadow).await?;
            v.failures.extend(f);
            v.evidence.insert("shadow".into(), e);
        }
    }

    if v.failures.is_empty() {
        if let Some(canary) = &inp.checks.canary {
            let (f, e) = run_canary(ctl, service, id, &inp, canary).await?;
            v.failures.extend(f);
            v.evidence.insert("canary".into(), e);
        }
    }
    v.evidence.insert(
        "elapsed_ms".into(),
        json!(started.elapsed().as_millis() as u64),
    );
    v.evidence.insert("failures".into(), json!(v.failures));
    Ok(v)
}

/// The candidate's metrics endpoints: one per member when the URL names `{addr}` or
/// `{port}`, else the one URL.
fn metrics_urls(inp: &ValidationInputs) -> Vec<(&MetricsCheck, String)> {
    let Some(m) = inp.checks.metrics.as_ref() else {
        return Vec::new();
    };
    let mut urls: Vec<String> = inp
        .candidate
        .iter()
        .map(|c| judge::expand_url(&m.url, c.addr))
        .collect();
    urls.dedup();
    urls.into_iter().map(|u| (m, u)).collect()
}

/// The configured load against each of `members`, all at once.
async fn load_all(l: &LoadCheck, members: &[Member]) -> Result<Vec<LoadReport>> {
    let mut runs = tokio::task::JoinSet::new();
    for (i, m) in members.iter().enumerate() {
        let (target, spec) = (judge::load_target(l, m.addr), l.run.clone());
        runs.spawn(async move { (i, load::run(target, &spec).await) });
    }
    let mut out = Vec::new();
    while let Some(done) = runs.join_next().await {
        out.push(done?);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// Sends a share of new flows to the candidate for the canary's duration while probing its
/// health; the datapath counters must show the candidate actually got traffic.
async fn run_canary(
    ctl: &impl Host,
    service: &str,
    id: u64,
    inp: &ValidationInputs,
    canary: &CanaryCheck,
) -> Result<(Vec<String>, serde_json::Value)> {
    let before = ctl
        .canary_begin(service, id, judge::canary_share(canary.percent))
        .await?;
    let health_failures = probe_for(inp, canary.duration).await;
    let after = ctl.canary_end(service).await?;
    Ok(judge::canary(
        canary.percent,
        canary.duration,
        &before,
        &after,
        health_failures,
    ))
}

/// Copies a share of the live packets to the candidate's shadow port for the step's duration
/// while probing its health; then its own metrics over that time decide, with the copies: a
/// candidate that got none proved nothing. The copies end whatever happens here (an error, an
/// abort); the datapath would end them by itself shortly after, should the daemon die.
async fn run_shadow(
    ctl: &impl Host,
    service: &str,
    id: u64,
    inp: &ValidationInputs,
    shadow: &ShadowCheck,
) -> Result<(Vec<String>, serde_json::Value)> {
    let urls = metrics_urls(inp);
    let before_metrics = scrape_all(&urls).await;
    let t0 = Instant::now();
    let before = ctl.shadow_begin(service, id, shadow).await?;
    let health_failures = probe_for(inp, shadow.duration).await;
    let after = ctl.shadow_end(service).await?;
    let (mut failures, mut evidence) = judge::shadow(
        shadow.percent,
        shadow.duration,
        &before,
        &after,
        health_failures,
    );
    let (f, seen) = judge_metrics(&urls, before_metrics, t0).await;
    failures.extend(f.into_iter().map(|f| format!("shadow: {f}")));
    evidence["metrics"] = json!(seen);
    Ok((failures, evidence))
}

/// Each of the candidate's metrics endpoints, scraped once.
async fn scrape_all(
    urls: &[(&MetricsCheck, String)],
) -> Vec<Result<Vec<metrics::Sample>, metrics::MetricsError>> {
    let mut out = Vec::with_capacity(urls.len());
    for (m, u) in urls {
        out.push(metrics::scrape(u, m.timeout).await);
    }
    out
}

/// Scrapes each endpoint again and judges its rules over the time since `since`, against
/// its `before` scrape: the failures, and each endpoint's evidence.
async fn judge_metrics(
    urls: &[(&MetricsCheck, String)],
    before: Vec<Result<Vec<metrics::Sample>, metrics::MetricsError>>,
    since: Instant,
) -> (Vec<String>, Vec<serde_json::Value>) {
    let (mut failures, mut evidence) = (Vec::new(), Vec::new());
    for ((m, u), before) in urls.iter().zip(before) {
        let after = metrics::scrape(u, m.timeout).await;
        let (f, e) = judge::metrics(
            m,
            before.map_err(|e| e.to_string()),
            after.map_err(|e| e.to_string()),
            since.elapsed(),
        );
        failures.extend(f);
        evidence.push(e);
    }
    (failures, evidence)
}

/// Probes every candidate member's health every 0.5 s for `duration`; the failed probes.
async fn probe_for(inp: &ValidationInputs, duration: Duration) -> u32 {
    let specs: Vec<_> = match &inp.checks.health {
        Some(h) => inp
            .candidate
            .iter()
            .map(|m| judge::health_spec(h, inp.protocol, m.addr))
            .collect(),
        None => Vec::new(),
    };
    let mut failures = 0u32;
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        for spec in &specs {
            if health::check_once(spec).await.is_err() {
                failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500).min(duration)).await;
    }
    failures
}
