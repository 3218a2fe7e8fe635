//! Validation of a deployed candidate before its flip: health, a synthetic load compared with
//! the serving colour, the candidate's own metrics, and optionally a canary share of real
//! traffic. Every check that yields no data fails: silence is never a pass.

use std::{net::SocketAddr, time::Duration};

use anyhow::{anyhow, Result};
use serde_json::json;
use tokio::time::Instant;

use super::{Shared, AUTO};
use crate::{
    config::{expand_url, Checks, Color, HealthCfg, LoadCfg, MetricsCfg, Protocol},
    deploy::{Phase, Step},
    probe::{
        health::{self, HealthSpec},
        load::{self, LoadProtocol, LoadReport, LoadSpec},
        metrics::{self, Sample},
    },
};

pub fn spawn(shared: &Shared, service: &str, id: u64) -> tokio::task::AbortHandle {
    let shared = shared.clone();
    let service = service.to_string();
    tokio::spawn(async move {
        if let Err(e) = run(&shared, &service, id).await {
            tracing::warn!(%service, deployment = id, "validation ended: {e:#}");
            // An error is no verdict: reject explicitly rather than stay "validating".
            let mut c = shared.lock().await;
            let still = c.is_current(&service, Some(id), Phase::Validating);
            if still {
                let reason = format!("validation could not complete: {e:#}");
                let cleanup = c
                    .id(&service)
                    .and_then(|svc| c.dp.set_canary(svc, 0))
                    .and_then(|()| c.step(&service, Some(id), Step::ValidationFailed, AUTO, &reason, None))
                    .and_then(|_| c.finish(&service))
                    .and_then(|_| c.save());
                if let Err(e) = cleanup {
                    tracing::error!(%service, deployment = id, "recording the failed validation: {e:#}");
                }
                c.forget_task(&service);
            }
        }
    })
    .abort_handle()
}

struct Inputs {
    checks: Checks,
    protocol: Protocol,
    svc_id: u32,
    /// The candidate's slot.
    color: Color,
    candidate: SocketAddr,
    serving: Option<SocketAddr>,
}

async fn inputs(shared: &Shared, service: &str, id: u64) -> Result<Inputs> {
    let c = shared.lock().await;
    let cfg = c.service_cfg(service)?;
    let st = c
        .state
        .services
        .get(service)
        .ok_or_else(|| anyhow!("no service {service}"))?;
    let d = st
        .current
        .as_ref()
        .filter(|d| d.id == id)
        .ok_or_else(|| anyhow!("deployment {id} is gone"))?;
    Ok(Inputs {
        checks: cfg.checks.clone(),
        protocol: cfg.protocol,
        svc_id: c.id(service)?,
        color: d.color,
        candidate: d.backend,
        serving: st.slot(st.active).backend,
    })
}

async fn run(shared: &Shared, service: &str, id: u64) -> Result<()> {
    let inp = inputs(shared, service, id).await?;
    let mut failures: Vec<String> = Vec::new();
    let mut evidence = serde_json::Map::new();
    let started = Instant::now();

    match &inp.checks.health {
        Some(h) => {
            let spec = health_spec(h, inp.protocol, inp.candidate);
            let r = health::until_healthy(&spec).await;
            if !r.passed {
                failures.push(format!(
                    "health: {} of {} consecutive successes before the deadline ({})",
                    r.consecutive,
                    h.successes,
                    r.last_error.as_deref().unwrap_or("no error recorded")
                ));
            }
            evidence.insert("health".into(), json!(r));
        }
        None => failures.push(
            "health: no health check configured for this service (add [service.health])".into(),
        ),
    }

    // A dead candidate is not worth loading.
    if failures.is_empty() {
        let before = match &inp.checks.metrics {
            Some(m) => Some(metrics::scrape(&expand_url(&m.url, inp.candidate), m.timeout).await),
            None => None,
        };
        let t0 = Instant::now();
        if let Some(l) = &inp.checks.load {
            let cand = load::run(load_target(l, inp.candidate), &load_spec(l)).await;
            let serving = match inp.serving {
                Some(s) => Some(load::run(load_target(l, s), &load_spec(l)).await),
                None => None,
            };
            failures.extend(judge_load(l, &cand, serving.as_ref()));
            evidence.insert(
                "load".into(),
                json!({ "candidate": cand, "serving": serving, "thresholds": l }),
            );
        }
        if let (Some(m), Some(before)) = (&inp.checks.metrics, before) {
            let after = metrics::scrape(&expand_url(&m.url, inp.candidate), m.timeout).await;
            let (f, e) = judge_metrics(
                m,
                before.map_err(|e| e.to_string()),
                after.map_err(|e| e.to_string()),
                t0.elapsed(),
            );
            failures.extend(f);
            evidence.insert("metrics".into(), e);
        }
    }

    if failures.is_empty() {
        if let Some(canary) = &inp.checks.canary {
            let (f, e) = run_canary(shared, &inp, canary.percent, canary.duration).await?;
            failures.extend(f);
            evidence.insert("canary".into(), e);
        }
    }
    evidence.insert(
        "elapsed_ms".into(),
        json!(started.elapsed().as_millis() as u64),
    );
    evidence.insert("failures".into(), json!(failures));

    let passed = failures.is_empty();
    {
        let mut c = shared.lock().await;
        let still = c.is_current(service, Some(id), Phase::Validating);
        if !still {
            return Ok(()); // aborted meanwhile: its transition is already recorded
        }
        if passed {
            c.step(
                service,
                Some(id),
                Step::ValidationPassed,
                AUTO,
                "all checks passed",
                Some(evidence.into()),
            )?;
            if let Some(st) = c.state.services.get_mut(service) {
                let color = st.current.as_ref().map(|d| d.color);
                if let Some(color) = color {
                    st.slot_mut(color).validated = true;
                }
            }
        } else {
            let reason = failures.join("; ");
            c.step(
                service,
                Some(id),
                Step::ValidationFailed,
                AUTO,
                &reason,
                Some(evidence.into()),
            )?;
            c.finish(service)?;
        }
        c.save()?;
    }
    if passed {
        flip_after_validation(shared, service, id).await?;
    }
    Ok(())
}

/// The flip of a validated deployment, then the watch.
pub async fn flip_after_validation(shared: &Shared, service: &str, id: u64) -> Result<()> {
    let mut c = shared.lock().await;
    let d = c
        .current(service)
        .cloned()
        .filter(|d| d.id == id && d.phase == Phase::Ready)
        .ok_or_else(|| anyhow!("deployment {id} is no longer ready"))?;
    let out = c.flip_datapath(service, d.color, AUTO, "validated: promoting")?;
    c.step(
        service,
        Some(id),
        Step::Flip { forced: false },
        AUTO,
        "flipped after validation",
        Some(json!({ "flip": out })),
    )?;
    c.start_watch_clock(service)?;
    c.forget_task(service);
    c.save()?;
    drop(c);
    super::watch::spawn(shared, service, false).await;
    Ok(())
}

pub(crate) fn health_spec(h: &HealthCfg, protocol: Protocol, backend: SocketAddr) -> HealthSpec {
    // A TCP service's own port is the natural connect check.
    let tcp_port = h
        .tcp_port
        .or((protocol == Protocol::Tcp).then_some(backend.port()));
    HealthSpec {
        tcp: tcp_port.map(|p| SocketAddr::new(backend.ip(), p)),
        http_url: h.http.as_ref().map(|u| expand_url(u, backend)),
        successes: h.successes,
        interval: h.interval,
        deadline: h.deadline,
        timeout: h.timeout,
    }
}

fn load_target(l: &LoadCfg, backend: SocketAddr) -> SocketAddr {
    SocketAddr::new(backend.ip(), l.port.unwrap_or(backend.port()))
}

fn load_spec(l: &LoadCfg) -> LoadSpec {
    LoadSpec {
        protocol: match l.protocol {
            Protocol::Udp => LoadProtocol::Udp,
            Protocol::Tcp => LoadProtocol::Tcp,
        },
        lines: l.lines,
        rate: l.rate,
        line_size: l.line_size,
        connections: l.connections,
        ack: l.ack,
        timeout: l.timeout,
    }
}

/// Threshold verdicts of a load run; empty when it passed.
pub(super) fn judge_load(
    l: &LoadCfg,
    cand: &LoadReport,
    serving: Option<&LoadReport>,
) -> Vec<String> {
    let mut f = Vec::new();
    let error_ratio = cand.errors as f64 / l.lines.max(1) as f64;
    if error_ratio > l.max_error_ratio {
        f.push(format!(
            "load: {} errors in {} lines ({:.2}% > {:.2}%){}",
            cand.errors,
            l.lines,
            error_ratio * 100.0,
            l.max_error_ratio * 100.0,
            cand.first_error
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        ));
    }
    let wants_latency = l.max_p99_ms.is_some() || l.max_p99_ratio.is_some();
    let p99 = |r: &LoadReport| (r.latency.count > 0).then(|| r.latency.p99_us as f64 / 1000.0);
    if wants_latency && p99(cand).is_none() {
        f.push("load: the candidate yielded no latency samples".into());
    }
    if let (Some(max), Some(p)) = (l.max_p99_ms, p99(cand)) {
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
                    match (p99(cand), p99(s)) {
                        (Some(c), Some(b)) if c > ratio * b.max(0.001) => f.push(format!(
                            "load: p99 {c:.2} ms > {ratio} x serving's {b:.2} ms"
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
                            "load: throughput {:.0} lines/s < {ratio} x serving's {:.0}",
                            cand.throughput_lps, s.throughput_lps
                        ));
                    }
                }
            }
        }
    }
    f
}

/// Checks of the candidate's own metrics between two scrapes `elapsed` apart.
pub(super) fn judge_metrics(
    m: &MetricsCfg,
    before: Result<Vec<Sample>, String>,
    after: Result<Vec<Sample>, String>,
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
    for c in &m.checks {
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

/// Sends `percent` of new flows to the candidate for `duration` while probing its health;
/// the datapath counters must show the candidate actually got traffic.
async fn run_canary(
    shared: &Shared,
    inp: &Inputs,
    percent: f64,
    duration: Duration,
) -> Result<(Vec<String>, serde_json::Value)> {
    let share = ((percent / 100.0) * 65536.0).round().clamp(1.0, 65535.0) as u32;
    let before = {
        let mut c = shared.lock().await;
        c.dp.set_canary(inp.svc_id, share)?;
        c.dp.color_counters(inp.svc_id, inp.color)?
    };
    let mut failures = Vec::new();
    let mut health_failures = 0u32;
    let deadline = Instant::now() + duration;
    let spec = inp
        .checks
        .health
        .as_ref()
        .map(|h| health_spec(h, inp.protocol, inp.candidate));
    while Instant::now() < deadline {
        if let Some(spec) = &spec {
            if health::check_once(spec).await.is_err() {
                health_failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500).min(duration)).await;
    }
    let after = {
        let mut c = shared.lock().await;
        c.dp.set_canary(inp.svc_id, 0)?;
        c.dp.color_counters(inp.svc_id, inp.color)?
    };
    let packets = after.packets - before.packets;
    let flows = after.new_flows - before.new_flows;
    if packets == 0 {
        failures.push(format!(
            "canary: no traffic reached the candidate in {} s at {percent}% of new flows",
            duration.as_secs()
        ));
    }
    if health_failures > 0 {
        failures.push(format!("canary: {health_failures} failed health probes"));
    }
    let resets = after.resets - before.resets;
    if resets > 0 {
        failures.push(format!(
            "canary: the candidate reset {resets} TCP connections"
        ));
    }
    let unreachables = after.unreachables - before.unreachables;
    if unreachables > 0 {
        failures.push(format!(
            "canary: {unreachables} ICMP unreachables about the candidate"
        ));
    }
    Ok((
        failures,
        json!({ "percent": percent, "packets": packets, "new_flows": flows, "resets": resets, "unreachables": unreachables, "health_failures": health_failures }),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::probe::Percentiles;

    fn cfg() -> LoadCfg {
        LoadCfg {
            protocol: Protocol::Tcp,
            port: None,
            lines: 1000,
            rate: 1000,
            line_size: 100,
            connections: 1,
            ack: true,
            timeout: Duration::from_secs(5),
            max_p99_ms: Some(20.0),
            min_throughput: Some(500.0),
            max_error_ratio: 0.0,
            max_p99_ratio: Some(1.5),
            min_throughput_ratio: Some(0.8),
        }
    }

    fn report(p99_ms: u64, lps: f64, errors: u64, samples: u64) -> LoadReport {
        LoadReport {
            target: "198.18.2.2:601".parse().expect("addr"),
            sent: 1000,
            acked: 1000 - errors,
            errors,
            first_error: (errors > 0).then(|| "reset".to_string()),
            elapsed_ms: 1000,
            throughput_lps: lps,
            latency_kind: "write_to_ack".into(),
            latency: Percentiles {
                p50_us: p99_ms * 500,
                p90_us: p99_ms * 900,
                p99_us: p99_ms * 1000,
                max_us: p99_ms * 1000,
                count: samples,
            },
        }
    }

    #[test]
    fn load_within_thresholds_passes() {
        let f = judge_load(
            &cfg(),
            &report(5, 990.0, 0, 1000),
            Some(&report(4, 1000.0, 0, 1000)),
        );
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn load_failures_name_the_threshold() {
        let serving = report(4, 1000.0, 0, 1000);
        let f = judge_load(&cfg(), &report(30, 990.0, 0, 1000), Some(&serving));
        assert!(f.iter().any(|m| m.contains("> 20 ms")), "{f:?}");
        assert!(f.iter().any(|m| m.contains("1.5 x serving")), "{f:?}");
        let f = judge_load(&cfg(), &report(5, 400.0, 3, 1000), Some(&serving));
        assert!(
            f.iter()
                .any(|m| m.contains("3 errors") && m.contains("reset")),
            "{f:?}"
        );
        assert!(f.iter().any(|m| m.contains("< 500")), "{f:?}");
        assert!(f.iter().any(|m| m.contains("0.8 x serving")), "{f:?}");
    }

    #[test]
    fn load_without_data_fails() {
        let f = judge_load(
            &cfg(),
            &report(0, 990.0, 0, 0),
            Some(&report(4, 1000.0, 0, 1000)),
        );
        assert!(f.iter().any(|m| m.contains("no latency samples")), "{f:?}");
        let f = judge_load(&cfg(), &report(5, 990.0, 0, 1000), None);
        assert!(f.iter().any(|m| m.contains("no serving backend")), "{f:?}");
    }

    fn sample(name: &str, v: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: BTreeMap::new(),
            value: v,
        }
    }

    #[test]
    fn metrics_checks_use_the_delta_and_missing_data_fails() {
        let m = MetricsCfg {
            url: "http://x/metrics".into(),
            timeout: Duration::from_secs(1),
            checks: vec![
                crate::config::MetricCheck {
                    name: "errors_total".into(),
                    labels: BTreeMap::new(),
                    max_increase: Some(0.0),
                    min_rate: None,
                },
                crate::config::MetricCheck {
                    name: "lines_total".into(),
                    labels: BTreeMap::new(),
                    max_increase: None,
                    min_rate: Some(100.0),
                },
            ],
        };
        let secs = Duration::from_secs(2);
        let ok = judge_metrics(
            &m,
            Ok(vec![
                sample("errors_total", 7.0),
                sample("lines_total", 0.0),
            ]),
            Ok(vec![
                sample("errors_total", 7.0),
                sample("lines_total", 400.0),
            ]),
            secs,
        );
        assert!(ok.0.is_empty(), "{:?}", ok.0);
        let bad = judge_metrics(
            &m,
            Ok(vec![
                sample("errors_total", 7.0),
                sample("lines_total", 0.0),
            ]),
            Ok(vec![
                sample("errors_total", 9.0),
                sample("lines_total", 100.0),
            ]),
            secs,
        );
        assert_eq!(bad.0.len(), 2, "{:?}", bad.0);
        let missing = judge_metrics(&m, Ok(vec![]), Ok(vec![]), secs);
        assert!(
            missing.0.iter().all(|f| f.contains("not exported")),
            "{:?}",
            missing.0
        );
        let down = judge_metrics(&m, Err("refused".into()), Ok(vec![]), secs);
        assert!(down.0[0].contains("scraping"), "{:?}", down.0);
    }
}
