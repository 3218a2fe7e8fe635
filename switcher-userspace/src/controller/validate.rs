//! Validation of a deployed candidate before its flip: health, a synthetic load compared with
//! the serving colour, the candidate's own metrics, and optionally a canary share of real
//! traffic. This task only measures; the judges in [`crate::judge`] decide, and the verdict
//! goes back to the controller, which applies it. Every check that yields no data fails:
//! silence is never a pass.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tokio::time::Instant;

use super::host::{Host, ValidationInputs, Verdict};
use crate::{
    config::CanaryCheck,
    judge,
    probe::{health, load, metrics},
};

/// Measures deployment `id` of `service` and returns the verdict.
pub(super) async fn run(ctl: &impl Host, service: &str, id: u64) -> Result<Verdict> {
    let inp = ctl.validation_inputs(service, id).await?;
    let mut v = Verdict::default();
    let started = Instant::now();

    match &inp.checks.health {
        Some(h) => {
            let r =
                health::until_healthy(&judge::health_spec(h, inp.protocol, inp.candidate)).await;
            if !r.passed {
                v.failures.push(format!(
                    "health: {} of {} consecutive successes before the deadline ({})",
                    r.consecutive,
                    h.rounds.successes,
                    r.last_error.as_deref().unwrap_or("no error recorded")
                ));
            }
            v.evidence.insert("health".into(), json!(r));
        }
        None => v.failures.push(
            "health: no health check configured for this service (add [service.health])".into(),
        ),
    }

    // A dead candidate is not worth loading.
    if v.failures.is_empty() {
        let url = inp
            .checks
            .metrics
            .as_ref()
            .map(|m| (m, judge::expand_url(&m.url, inp.candidate)));
        let before = match &url {
            Some((m, u)) => Some(metrics::scrape(u, m.timeout).await),
            None => None,
        };
        let t0 = Instant::now();
        if let Some(l) = &inp.checks.load {
            let cand = load::run(judge::load_target(l, inp.candidate), &l.run).await;
            let serving = match inp.serving {
                Some(s) => Some(load::run(judge::load_target(l, s), &l.run).await),
                None => None,
            };
            v.failures.extend(judge::load(l, &cand, serving.as_ref()));
            v.evidence.insert(
                "load".into(),
                json!({ "candidate": cand, "serving": serving, "thresholds": l }),
            );
        }
        if let (Some((m, u)), Some(before)) = (&url, before) {
            let after = metrics::scrape(u, m.timeout).await;
            let (f, e) = judge::metrics(
                m,
                before.map_err(|e| e.to_string()),
                after.map_err(|e| e.to_string()),
                t0.elapsed(),
            );
            v.failures.extend(f);
            v.evidence.insert("metrics".into(), e);
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
    let mut health_failures = 0u32;
    let deadline = Instant::now() + canary.duration;
    let spec = inp
        .checks
        .health
        .as_ref()
        .map(|h| judge::health_spec(h, inp.protocol, inp.candidate));
    while Instant::now() < deadline {
        if let Some(spec) = &spec {
            if health::check_once(spec).await.is_err() {
                health_failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500).min(canary.duration)).await;
    }
    let after = ctl.canary_end(service).await?;
    Ok(judge::canary(
        canary.percent,
        canary.duration,
        &before,
        &after,
        health_failures,
    ))
}
