//! The validation and watch settings of one service ([`Checks`]), with their defaults.

use std::time::Duration;

use super::{
    port_field, url_field, Errors, INTERVALS, LOAD_LINES, LOAD_RATE, STEPS, TIMEOUTS, WINDOWS,
};
use crate::{
    config::{
        schema::{RawAck, RawService},
        CanaryCheck, Checks, HealthCheck, LoadCheck, MetricRule, MetricsCheck, Protocol,
        ShadowCheck, WatchPolicy, DEFAULT_MIN_HEALTHY_SHARE,
    },
    probe::{
        health::HealthRounds,
        load::{LoadProtocol, LoadSpec},
    },
};

/// Validation and watch settings of one service, with defaults: a TCP service is health
/// checked by a TCP connect to its backend port; everything else must be configured.
pub(super) fn checks(
    s: &RawService,
    protocol: Option<Protocol>,
    at: &dyn Fn(&str) -> String,
    errs: &mut Errors,
) -> Checks {
    let defaults = HealthRounds::default();
    let health = match &s.health {
        Some(h) => {
            let tcp_port = port_field(h.tcp_port, at("health.tcp_port"), errs);
            if let Some(u) = &h.http {
                url_field(u, at("health.http"), errs);
            }
            if tcp_port.is_none() && h.http.is_none() && protocol != Some(Protocol::Tcp) {
                errs.push(at("health"), "set tcp_port and/or http");
            }
            let successes = h.successes.unwrap_or(defaults.successes);
            if successes == 0 {
                errs.push(at("health.successes"), "must be at least 1");
            }
            Some(HealthCheck {
                tcp_port,
                http: h.http.clone(),
                rounds: HealthRounds {
                    successes,
                    interval: errs.ms(
                        h.interval_ms,
                        &at("health.interval_ms"),
                        INTERVALS,
                        defaults.interval,
                    ),
                    deadline: errs.ms(
                        h.deadline_ms,
                        &at("health.deadline_ms"),
                        STEPS,
                        defaults.deadline,
                    ),
                    timeout: errs.ms(
                        h.timeout_ms,
                        &at("health.timeout_ms"),
                        TIMEOUTS,
                        defaults.timeout,
                    ),
                },
            })
        }
        None if protocol == Some(Protocol::Tcp) => Some(HealthCheck {
            tcp_port: None,
            http: None,
            rounds: defaults,
        }),
        None => None,
    };
    let load = s.load.as_ref().map(|l| {
        let proto = errs.parsed(
            l.protocol.as_deref(),
            &at("load.protocol"),
            LoadProtocol::from(protocol.unwrap_or(Protocol::Tcp)),
        );
        let ack = match &l.ack {
            None => false,
            Some(RawAck::Mode(m)) if m == "none" => false,
            Some(RawAck::Mode(m)) if m == "line" => true,
            Some(RawAck::Mode(m)) => {
                errs.push(
                    at("load.ack"),
                    format!("expected \"line\" or \"none\", got {m:?}"),
                );
                false
            }
            Some(RawAck::Flag(flag)) => {
                errs.push(
                    at("load.ack"),
                    format!(
                        "ack = {flag} is now ack = \"{}\" (\"line\" is the reference sink's own \
                         one-line reply, no standard; against rsyslog use protocol = \"relp\")",
                        if *flag { "line" } else { "none" }
                    ),
                );
                false
            }
        };
        match proto {
            LoadProtocol::Udp if ack => {
                errs.push(at("load.ack"), "acknowledgements need tcp");
            }
            LoadProtocol::Relp if ack => errs.push(
                at("load.ack"),
                "relp acknowledges every message itself: ack is for plain tcp",
            ),
            _ => {}
        }
        let lines = errs.count(l.lines, &at("load.lines"), LOAD_LINES, 1000);
        for (name, v) in [
            ("max_p99_ratio", l.max_p99_ratio),
            ("min_throughput_ratio", l.min_throughput_ratio),
            ("max_p99_ms", l.max_p99_ms),
            ("min_throughput", l.min_throughput),
            ("max_error_ratio", l.max_error_ratio),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                errs.push(at(&format!("load.{name}")), "must be a finite number >= 0");
            }
        }
        let run = LoadSpec {
            protocol: proto,
            lines,
            rate: errs.count(l.rate, &at("load.rate"), LOAD_RATE, 1000),
            line_size: l.line_size.unwrap_or(200),
            connections: l.connections.unwrap_or(1).max(1),
            ack,
            timeout: errs.ms(
                l.timeout_ms,
                &at("load.timeout_ms"),
                STEPS,
                Duration::from_secs(30),
            ),
        };
        // The probe's own limits (line size, connections), told before any run; ack with udp
        // is reported above with its own field.
        let limits = LoadSpec {
            ack: false,
            ..run.clone()
        };
        if let Err(e) = limits.validate() {
            errs.push(at("load"), e);
        }
        LoadCheck {
            port: port_field(l.port, at("load.port"), errs),
            run,
            max_p99_ms: l.max_p99_ms,
            min_throughput: l.min_throughput,
            max_error_ratio: l.max_error_ratio.unwrap_or(0.0),
            max_p99_ratio: l.max_p99_ratio,
            min_throughput_ratio: l.min_throughput_ratio,
        }
    });
    let metrics = s.metrics.as_ref().map(|m| {
        url_field(&m.url, at("metrics.url"), errs);
        if m.checks.is_empty() {
            errs.push(
                at("metrics.check"),
                "at least one [[service.metrics.check]] is needed",
            );
        }
        for (i, c) in m.checks.iter().enumerate() {
            if c.max_increase.is_none() && c.min_rate.is_none() {
                errs.push(
                    at(&format!("metrics.check[{i}]")),
                    "set max_increase and/or min_rate",
                );
            }
        }
        MetricsCheck {
            url: m.url.clone(),
            timeout: errs.ms(
                m.timeout_ms,
                &at("metrics.timeout_ms"),
                TIMEOUTS,
                Duration::from_secs(2),
            ),
            rules: m
                .checks
                .iter()
                .map(|c| MetricRule {
                    name: c.name.clone(),
                    labels: c.labels.clone(),
                    max_increase: c.max_increase,
                    min_rate: c.min_rate,
                })
                .collect(),
        }
    });
    let canary = s.canary.as_ref().map(|c| {
        if !(c.percent > 0.0 && c.percent <= 50.0) {
            errs.push(
                at("canary.percent"),
                format!("{} is not in (0, 50]", c.percent),
            );
        }
        CanaryCheck {
            percent: c.percent,
            duration: errs.ms(
                Some(c.duration_ms),
                &at("canary.duration_ms"),
                STEPS,
                Duration::ZERO,
            ),
        }
    });
    let shadow = s.shadow.as_ref().map(|c| {
        if protocol == Some(Protocol::Tcp) {
            errs.push(
                at("shadow"),
                "only for udp services (a tcp stream cannot be copied packet by packet)",
            );
        }
        if !(c.percent > 0.0 && c.percent <= 100.0) {
            errs.push(
                at("shadow.percent"),
                format!("{} is not in (0, 100]", c.percent),
            );
        }
        let port = port_field(Some(c.port), at("shadow.port"), errs).unwrap_or(0);
        // The copies must not look like traffic to a member, or they would be copied again.
        if i64::from(port) == s.port {
            errs.push(
                at("shadow.port"),
                "must differ from the service's port: the copies go to a separate input",
            );
        }
        ShadowCheck {
            percent: c.percent,
            duration: errs.ms(
                Some(c.duration_ms),
                &at("shadow.duration_ms"),
                STEPS,
                Duration::ZERO,
            ),
            port,
        }
    });
    let w = s.watch.as_ref();
    let watch = WatchPolicy {
        window: errs.ms(
            w.and_then(|w| w.window_ms),
            &at("watch.window_ms"),
            WINDOWS,
            Duration::from_secs(30),
        ),
        interval: errs.ms(
            w.and_then(|w| w.interval_ms),
            &at("watch.interval_ms"),
            INTERVALS,
            Duration::from_secs(1),
        ),
        failures: w.and_then(|w| w.failures).unwrap_or(2).max(1),
        max_resets: w.and_then(|w| w.max_resets),
        max_unreachables: w.and_then(|w| w.max_unreachables),
        min_rate_ratio: w.and_then(|w| w.min_rate_ratio),
        min_healthy_share: w
            .and_then(|w| w.min_healthy_share)
            .unwrap_or(DEFAULT_MIN_HEALTHY_SHARE),
    };
    if !(watch.min_healthy_share.is_finite() && (0.0..=1.0).contains(&watch.min_healthy_share)) {
        errs.push(at("watch.min_healthy_share"), "must be in [0, 1]");
    }
    if watch
        .min_rate_ratio
        .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1.0))
    {
        errs.push(at("watch.min_rate_ratio"), "must be in (0, 1]");
    }
    Checks {
        health,
        load,
        metrics,
        canary,
        shadow,
        watch,
        warm: errs.ms(s.warm_ms, &at("warm_ms"), WINDOWS, Duration::from_secs(600)),
    }
}
