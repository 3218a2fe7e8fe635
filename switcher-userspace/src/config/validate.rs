//! From the file as written to a [`Config`]: every field checked, defaults filled in, every
//! error collected with its field path. Nothing partial comes out: one error rejects the whole
//! file.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use switcher_common::MAX_SERVICES;

use super::{
    backend_conflicts,
    schema::{RawColor, RawConfig, RawHttp, RawService},
    CanaryCheck, Checks, Color, Config, DaemonConfig, FieldError, Forward, HealthCheck, HttpConfig,
    LoadCheck, MetricRule, MetricsCheck, Protocol, Service, WatchPolicy, XdpMode,
    DEFAULT_BPFFS_DIR, DEFAULT_DRAIN_MS, DEFAULT_HTTP_LISTEN, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
};
use crate::probe::{health::HealthRounds, load::LoadSpec};

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// `text` parsed as `T`, or `default` with the parse error recorded at `field`.
    fn parsed<T: FromStr<Err = String>>(
        &mut self,
        text: Option<&str>,
        field: &str,
        default: T,
    ) -> T {
        match text.map(str::parse::<T>) {
            None => default,
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                self.push(field, e);
                default
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    if raw.daemon.interfaces.is_empty() {
        errs.push("daemon.interfaces", "at least one interface is required");
    }
    for (i, ifname) in raw.daemon.interfaces.iter().enumerate() {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
            errs.push(
                format!("daemon.interfaces[{i}]"),
                format!("{ifname:?} is not a valid interface name"),
            );
        }
    }
    let xdp_mode = errs.parsed(
        raw.daemon.xdp_mode.as_deref(),
        "daemon.xdp_mode",
        XdpMode::Auto,
    );
    let default_forward = errs.parsed(
        raw.daemon.forward.as_deref(),
        "daemon.forward",
        Forward::Redirect,
    );
    let http = http_config(raw.http.unwrap_or_default(), &mut errs);
    let probe_interval = match raw.daemon.probe_interval_ms {
        Some(0) => None,
        Some(ms) if ms < 100 => {
            errs.push(
                "daemon.probe_interval_ms",
                format!("{ms} ms would hammer the backends: 0 (off) or at least 100"),
            );
            None
        }
        ms => Some(Duration::from_millis(ms.unwrap_or(1000))),
    };

    if raw.services.len() > MAX_SERVICES as usize {
        errs.push(
            "service",
            format!("{} services, at most {MAX_SERVICES}", raw.services.len()),
        );
    }

    let mut services = Vec::new();
    // The file index of each entry of `services`, for field paths.
    let mut indexes = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    for (i, s) in raw.services.into_iter().enumerate() {
        if let Some(svc) = service(i, s, default_forward, &mut names, &mut keys, &mut errs) {
            services.push(svc);
            indexes.push(i);
        }
    }
    for c in backend_conflicts(&services) {
        errs.push(
            format!("service[{}].{}.backend", indexes[c.index], c.color),
            format!(
                "{}/{} is already the backend of service {:?}",
                c.backend, c.protocol, c.owner
            ),
        );
    }

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Config {
        daemon: DaemonConfig {
            interfaces: raw.daemon.interfaces,
            xdp_mode,
            bpffs_dir: raw
                .daemon
                .bpffs_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR)),
            socket: raw
                .daemon
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            state_dir: raw
                .daemon
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            probe_interval,
        },
        http,
        services,
    })
}

/// One `[[service]]`; None when its key (VIP, port, protocol) is unusable.
fn service(
    i: usize,
    mut s: RawService,
    default_forward: Forward,
    names: &mut HashMap<String, usize>,
    keys: &mut HashMap<(IpAddr, u16, Protocol), usize>,
    errs: &mut Errors,
) -> Option<Service> {
    let at = |f: &str| format!("service[{i}].{f}");
    if s.name.is_empty()
        || !s
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        errs.push(
            at("name"),
            format!("{:?}: use letters, digits, - _ .", s.name),
        );
    } else if let Some(prev) = names.insert(s.name.clone(), i) {
        errs.push(
            at("name"),
            format!("{:?} already used by service[{prev}]", s.name),
        );
    }
    let vip: Option<IpAddr> = match s.vip.parse() {
        Ok(v) => Some(v),
        Err(_) => {
            errs.push(
                at("vip"),
                format!("{:?} is not an IPv4 or IPv6 address", s.vip),
            );
            None
        }
    };
    let port = match u16::try_from(s.port) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errs.push(at("port"), format!("{} is not a port (1-65535)", s.port));
            None
        }
    };
    let protocol = match s.protocol.parse::<Protocol>() {
        Ok(p) => Some(p),
        Err(e) => {
            errs.push(at("protocol"), e);
            None
        }
    };
    let active = errs.parsed(s.active.as_deref(), &at("active"), Color::Blue);
    let blue = backend(s.blue.take(), &at("blue.backend"), vip, errs);
    let green = backend(s.green.take(), &at("green.backend"), vip, errs);
    let has_active = match active {
        Color::Blue => blue.is_some(),
        Color::Green => green.is_some(),
    };
    if !has_active {
        errs.push(at("active"), format!("{active} has no backend"));
    }
    if let (Some(v), Some(p), Some(pr)) = (vip, port, protocol) {
        if let Some(prev) = keys.insert((v, p, pr), i) {
            errs.push(
                at("vip"),
                format!("{v}:{p}/{pr} is already service[{prev}]"),
            );
        }
    }
    let forward = errs.parsed(s.forward.as_deref(), &at("forward"), default_forward);
    let udp_affinity_idle = match s.udp_affinity_idle_ms {
        None | Some(0) => None,
        Some(ms) => {
            if protocol == Some(Protocol::Tcp) {
                errs.push(
                    at("udp_affinity_idle_ms"),
                    "only for udp services (tcp is always pinned)",
                );
            }
            Some(Duration::from_millis(ms))
        }
    };
    let drain = Duration::from_millis(s.drain_ms.unwrap_or(DEFAULT_DRAIN_MS));
    let checks = checks(&s, protocol, &at, errs);
    Some(Service {
        name: s.name,
        vip: vip?,
        port: port?,
        protocol: protocol?,
        active,
        blue,
        green,
        forward,
        udp_affinity_idle,
        drain,
        checks,
    })
}

/// A colour's `backend = "ADDR:PORT"`, in the VIP's address family.
fn backend(
    c: Option<RawColor>,
    field: &str,
    vip: Option<IpAddr>,
    errs: &mut Errors,
) -> Option<SocketAddr> {
    let c = c?;
    match c.backend.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            errs.push(field, "port 0 is not a backend port");
            None
        }
        Ok(a) => {
            if let Some(v) = vip {
                if v.is_ipv4() != a.is_ipv4() {
                    errs.push(
                        field,
                        format!("{a} is not the same address family as vip {v}"),
                    );
                }
            }
            Some(a)
        }
        Err(_) => {
            errs.push(field, format!("{:?} is not ADDR:PORT", c.backend));
            None
        }
    }
}

fn http_config(raw: RawHttp, errs: &mut Errors) -> HttpConfig {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
    let listen = match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                "http.listen",
                format!("{text:?} is not an address:port (e.g. {DEFAULT_HTTP_LISTEN})"),
            );
            None
        }
    };
    if raw.token_file.as_ref().is_some_and(|p| !p.is_absolute()) {
        errs.push("http.token_file", "must be an absolute path");
    }
    HttpConfig {
        listen: listen.filter(|_| raw.enabled.unwrap_or(true)),
        token_file: raw.token_file,
    }
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_millis)
}

fn port_field(v: Option<i64>, field: String, errs: &mut Errors) -> Option<u16> {
    let v = v?;
    match u16::try_from(v) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errs.push(field, format!("{v} is not a port (1-65535)"));
            None
        }
    }
}

fn url_field(v: &str, field: String, errs: &mut Errors) {
    if !v.starts_with("http://") {
        errs.push(field, format!("{v:?}: only http:// URLs are supported"));
    }
}

/// Validation and watch settings of one service, with defaults: a TCP service is health
/// checked by a TCP connect to its backend port; everything else must be configured.
fn checks(
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
                    interval: ms(h.interval_ms, defaults.interval),
                    deadline: ms(h.deadline_ms, defaults.deadline),
                    timeout: ms(h.timeout_ms, defaults.timeout),
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
            protocol.unwrap_or(Protocol::Tcp),
        );
        let ack = l.ack.unwrap_or(false);
        if ack && proto == Protocol::Udp {
            errs.push(at("load.ack"), "acknowledgements need tcp");
        }
        let lines = l.lines.unwrap_or(1000);
        if lines == 0 {
            errs.push(at("load.lines"), "must be at least 1");
        }
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
        LoadCheck {
            port: port_field(l.port, at("load.port"), errs),
            run: LoadSpec {
                protocol: proto,
                lines,
                rate: l.rate.unwrap_or(1000),
                line_size: l.line_size.unwrap_or(200),
                connections: l.connections.unwrap_or(1).max(1),
                ack,
                timeout: ms(l.timeout_ms, Duration::from_secs(30)),
            },
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
            timeout: ms(m.timeout_ms, Duration::from_secs(2)),
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
            duration: Duration::from_millis(c.duration_ms),
        }
    });
    let w = s.watch.as_ref();
    let watch = WatchPolicy {
        window: ms(w.and_then(|w| w.window_ms), Duration::from_secs(30)),
        interval: ms(w.and_then(|w| w.interval_ms), Duration::from_secs(1)),
        failures: w.and_then(|w| w.failures).unwrap_or(2).max(1),
        max_resets: w.and_then(|w| w.max_resets),
        max_unreachables: w.and_then(|w| w.max_unreachables),
        min_rate_ratio: w.and_then(|w| w.min_rate_ratio),
    };
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
        watch,
        warm: ms(s.warm_ms, Duration::from_secs(600)),
    }
}
