//! The watch after a flip: the same health and metrics checks as validation plus the
//! datapath's own view (TCP resets sent by the candidate), every interval for the watch
//! window. Enough consecutive failed rounds roll back automatically; a clean window makes the
//! deployment stable and keeps the previous colour warm.

use std::{net::SocketAddr, time::Duration};

use anyhow::{anyhow, Result};
use serde_json::json;
use switcher_common::ColorCounters;

use super::{
    now_ms,
    validate::{health_spec, judge_metrics},
    Event, Shared, AUTO,
};
use crate::{
    config::{expand_url, Checks, Color, Protocol},
    deploy::{Phase, Step},
    probe::{health, metrics},
};

/// Starts (or, after a daemon restart, resumes) watching the promoted deployment of `service`.
pub async fn spawn(shared: &Shared, service: &str, resumed: bool) {
    let task = {
        let shared = shared.clone();
        let service = service.to_string();
        tokio::spawn(async move {
            if let Err(e) = run(&shared, &service, resumed).await {
                tracing::warn!(%service, "watch ended: {e:#}");
                // A watch that cannot watch is no data, and no data is a failure.
                let mut c = shared.lock().await;
                let promoted = c.is_current(&service, None, Phase::Promoted);
                if promoted {
                    c.forget_task(&service);
                    let reason = format!("automatic rollback: the watch failed: {e:#}");
                    if let Err(e) = c.rollback(&service, AUTO, &reason, None) {
                        tracing::error!(%service, "rolling back after the watch failed: {e:#}");
                    }
                }
            }
        })
    };
    shared.lock().await.set_task(service, task.abort_handle());
}

struct Inputs {
    id: u64,
    until_ms: u64,
    checks: Checks,
    protocol: Protocol,
    svc_id: u32,
    color: Color,
    candidate: SocketAddr,
}

async fn inputs(shared: &Shared, service: &str) -> Result<Inputs> {
    let mut c = shared.lock().await;
    let cfg = c.service_cfg(service)?.clone();
    let svc_id = c.id(service)?;
    let st = c
        .state
        .services
        .get_mut(service)
        .ok_or_else(|| anyhow!("no service {service}"))?;
    let d = st
        .current
        .as_mut()
        .filter(|d| d.phase == Phase::Promoted)
        .ok_or_else(|| anyhow!("{service} has no promoted deployment"))?;
    // A deployment promoted by an older daemon without a recorded window gets a full one.
    let until_ms = *d
        .watch_until_ms
        .get_or_insert(now_ms() + cfg.checks.watch.window.as_millis() as u64);
    Ok(Inputs {
        id: d.id,
        until_ms,
        checks: cfg.checks,
        protocol: cfg.protocol,
        svc_id,
        color: d.color,
        candidate: d.backend,
    })
}

async fn run(shared: &Shared, service: &str, resumed: bool) -> Result<()> {
    let inp = inputs(shared, service).await?;
    let w = &inp.checks.watch;
    if resumed {
        let c = shared.lock().await;
        c.emit(Event {
            at_ms: now_ms(),
            service: service.to_string(),
            deployment: Some(inp.id),
            kind: "watch".into(),
            phase: Some(Phase::Promoted),
            actor: AUTO.into(),
            message: format!(
                "watch of deployment {} resumed after a daemon restart ({} ms left)",
                inp.id,
                inp.until_ms.saturating_sub(now_ms())
            ),
            evidence: None,
        });
    }
    let spec = inp
        .checks
        .health
        .as_ref()
        .map(|h| health_spec(h, inp.protocol, inp.candidate));
    let metrics_url = inp
        .checks
        .metrics
        .as_ref()
        .map(|m| expand_url(&m.url, inp.candidate));
    let mut before = counters(shared, &inp).await?;
    let mut best_rate = 0.0f64;
    let mut scrape_before = match (&inp.checks.metrics, &metrics_url) {
        (Some(m), Some(u)) => Some(
            metrics::scrape(u, m.timeout)
                .await
                .map_err(|e| e.to_string()),
        ),
        _ => None,
    };
    let mut consecutive = 0u32;
    let mut rounds = 0u64;
    loop {
        let left = inp.until_ms.saturating_sub(now_ms());
        if left == 0 {
            return finish_clean(shared, service, inp.id, rounds, &inp.checks).await;
        }
        let interval = w.interval.min(Duration::from_millis(left));
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(interval).await;
        rounds += 1;

        let mut failures = Vec::new();
        if let Some(spec) = &spec {
            if let Err(e) = health::check_once(spec).await {
                failures.push(format!("health: {e}"));
            }
        }
        if let (Some(m), Some(u), Some(before)) =
            (&inp.checks.metrics, &metrics_url, scrape_before.take())
        {
            let after = metrics::scrape(u, m.timeout)
                .await
                .map_err(|e| e.to_string());
            let (f, _) = judge_metrics(m, before, after.clone(), t0.elapsed());
            failures.extend(f);
            scrape_before = Some(after);
        }
        let now = counters(shared, &inp).await?;
        let new_resets = now.resets - before.resets;
        let new_unreachables = now.unreachables - before.unreachables;
        let rate = (now.packets - before.packets) as f64 / t0.elapsed().as_secs_f64().max(0.001);
        before = now;
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
            if traffic_dropped(rate, best_rate, ratio) {
                failures.push(format!(
                    "datapath: traffic to the candidate fell to {rate:.0} packets/s (< {ratio} x {best_rate:.0})"
                ));
            }
        }
        best_rate = best_rate.max(rate);

        if failures.is_empty() {
            consecutive = 0;
            continue;
        }
        consecutive += 1;
        let reason = failures.join("; ");
        let evidence =
            json!({ "round": rounds, "consecutive_failures": consecutive, "failures": failures });
        let mut c = shared.lock().await;
        c.emit(Event {
            at_ms: now_ms(),
            service: service.to_string(),
            deployment: Some(inp.id),
            kind: "check".into(),
            phase: Some(Phase::Promoted),
            actor: AUTO.into(),
            message: format!(
                "watch round {rounds} failed ({consecutive}/{}): {reason}",
                w.failures
            ),
            evidence: Some(evidence.clone()),
        });
        if consecutive >= w.failures {
            let still = c.is_current(service, Some(inp.id), Phase::Promoted);
            if still {
                c.forget_task(service);
                c.rollback(
                    service,
                    AUTO,
                    &format!("automatic rollback: {reason}"),
                    Some(evidence),
                )?;
            }
            return Ok(());
        }
    }
}

/// The candidate's (resets, unreachables) so far.
/// The candidate's counters so far.
async fn counters(shared: &Shared, inp: &Inputs) -> Result<ColorCounters> {
    let c = shared.lock().await;
    c.dp.color_counters(inp.svc_id, inp.color)
}

/// A sudden drop of the traffic the switch delivers to the candidate: this round's packet rate
/// below `ratio` times the best rate of the earlier rounds (clients backing off, connections
/// dying). Rounds before any traffic set no baseline.
pub(super) fn traffic_dropped(rate: f64, best: f64, ratio: f64) -> bool {
    best > 0.0 && rate < ratio * best
}

async fn finish_clean(
    shared: &Shared,
    service: &str,
    id: u64,
    rounds: u64,
    checks: &Checks,
) -> Result<()> {
    let mut c = shared.lock().await;
    let still = c.is_current(service, Some(id), Phase::Promoted);
    if !still {
        return Ok(());
    }
    let warm_until = now_ms() + checks.warm.as_millis() as u64;
    c.step(
        service,
        Some(id),
        Step::WatchPassed,
        AUTO,
        "watch window passed",
        Some(json!({ "rounds": rounds, "warm_until_ms": warm_until })),
    )?;
    if let Some(st) = c.state.services.get_mut(service) {
        if let Some(d) = st.current.as_mut() {
            d.warm_until_ms = Some(warm_until);
            // It served through the whole window: known good, even if it was forced in.
            let color = d.color;
            st.slot_mut(color).validated = true;
        }
    }
    c.forget_task(service);
    c.save()
}

#[cfg(test)]
mod tests {
    use super::traffic_dropped;

    #[test]
    fn a_sudden_drop_needs_a_baseline() {
        assert!(
            !traffic_dropped(0.0, 0.0, 0.5),
            "no traffic yet: no baseline"
        );
        assert!(!traffic_dropped(900.0, 1000.0, 0.5));
        assert!(traffic_dropped(400.0, 1000.0, 0.5));
        assert!(traffic_dropped(0.0, 10.0, 0.5));
    }
}
