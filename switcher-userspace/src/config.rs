//! The TOML config: parsed into raw structs, then validated whole into [`Config`]. Any error is
//! reported with its field path and nothing is applied.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use switcher_common::{BLUE, GREEN, MAX_SERVICES, PROTO_TCP, PROTO_UDP};

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/switcher";
pub const DEFAULT_SOCKET: &str = "/run/switcher/switcher.sock";
/// Metrics and dashboard: localhost only unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_DRAIN_MS: u64 = 60_000;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/switcher";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid config, nothing applied:\n{}", .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

/// One validation failure: `field` is a path like `service[1].blue.backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: RawDaemon,
    http: Option<RawHttp>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    interfaces: Vec<String>,
    xdp_mode: Option<String>,
    bpffs_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    forward: Option<String>,
    probe_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    enabled: Option<bool>,
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: String,
    port: i64,
    protocol: String,
    active: Option<String>,
    blue: Option<RawColor>,
    green: Option<RawColor>,
    forward: Option<String>,
    udp_affinity_idle_ms: Option<u64>,
    drain_ms: Option<u64>,
    warm_ms: Option<u64>,
    health: Option<RawHealth>,
    load: Option<RawLoad>,
    metrics: Option<RawMetrics>,
    canary: Option<RawCanary>,
    watch: Option<RawWatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    tcp_port: Option<i64>,
    http: Option<String>,
    successes: Option<u32>,
    interval_ms: Option<u64>,
    deadline_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    protocol: Option<String>,
    port: Option<i64>,
    lines: Option<u64>,
    rate: Option<u64>,
    line_size: Option<usize>,
    connections: Option<u32>,
    ack: Option<bool>,
    timeout_ms: Option<u64>,
    max_p99_ms: Option<f64>,
    min_throughput: Option<f64>,
    max_error_ratio: Option<f64>,
    max_p99_ratio: Option<f64>,
    min_throughput_ratio: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    url: String,
    timeout_ms: Option<u64>,
    #[serde(default, rename = "check")]
    checks: Vec<RawMetricCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetricCheck {
    name: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    max_increase: Option<f64>,
    min_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    percent: f64,
    duration_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    window_ms: Option<u64>,
    interval_ms: Option<u64>,
    failures: Option<u32>,
    max_resets: Option<u64>,
    max_unreachables: Option<u64>,
    min_rate_ratio: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColor {
    backend: String,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub fn index(self) -> u8 {
        match self {
            Color::Blue => BLUE,
            Color::Green => GREEN,
        }
    }
    pub fn from_index(i: u8) -> Self {
        if i & 1 == GREEN {
            Color::Green
        } else {
            Color::Blue
        }
    }
    pub fn other(self) -> Self {
        Self::from_index(self.index() ^ 1)
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Color::Blue => "blue",
            Color::Green => "green",
        })
    }
}

impl std::str::FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(format!("expected blue or green, got {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Udp => PROTO_UDP,
            Protocol::Tcp => PROTO_TCP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        })
    }
}

/// How rewritten packets leave the edge host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// bpf_fib_lookup + XDP_REDIRECT, XDP_PASS when that cannot apply.
    Redirect,
    /// Always XDP_PASS: the kernel routes to the backend (local backends, netfilter wanted).
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpModeCfg {
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeCfg,
    pub bpffs_dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// How often every backend's health is probed for metrics and the dashboard (None: not
    /// at all). Validation and the post-flip watch probe on their own schedule.
    pub probe_interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub active: Color,
    pub blue: Option<SocketAddr>,
    pub green: Option<SocketAddr>,
    pub forward: Forward,
    /// UDP only: per-source-flow affinity with this idle timeout.
    pub udp_affinity_idle: Option<Duration>,
    pub drain: Duration,
    pub checks: Checks,
}

/// How a candidate is validated before the flip and watched after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checks {
    pub health: Option<HealthCfg>,
    pub load: Option<LoadCfg>,
    pub metrics: Option<MetricsCfg>,
    pub canary: Option<CanaryCfg>,
    pub watch: WatchCfg,
    /// How long the previous colour is kept warm (rollback target) after a promotion.
    pub warm: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCfg {
    /// TCP connect to this port of the candidate's address.
    pub tcp_port: Option<u16>,
    /// `{addr}` and `{port}` are replaced with the candidate's address and port.
    pub http: Option<String>,
    pub successes: u32,
    pub interval: Duration,
    pub deadline: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadCfg {
    pub protocol: Protocol,
    /// Port on the backend's address that takes the load (default: the backend port).
    pub port: Option<u16>,
    pub lines: u64,
    pub rate: u64,
    pub line_size: usize,
    pub connections: u32,
    pub ack: bool,
    pub timeout: Duration,
    pub max_p99_ms: Option<f64>,
    pub min_throughput: Option<f64>,
    pub max_error_ratio: f64,
    pub max_p99_ratio: Option<f64>,
    pub min_throughput_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsCfg {
    pub url: String,
    pub timeout: Duration,
    pub checks: Vec<MetricCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricCheck {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The summed value may grow by at most this much over a check interval.
    pub max_increase: Option<f64>,
    /// The summed value must grow at least this fast (per second) over a check interval.
    pub min_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryCfg {
    /// Share of new flows sent to the candidate, in percent.
    pub percent: f64,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchCfg {
    pub window: Duration,
    pub interval: Duration,
    /// Consecutive failed rounds that trigger the automatic rollback.
    pub failures: u32,
    /// TCP resets the candidate may send during one interval.
    pub max_resets: Option<u64>,
    /// ICMP unreachables about packets to the candidate allowed during one interval.
    pub max_unreachables: Option<u64>,
    /// Traffic to the candidate may not fall below this share of its best rate so far.
    pub min_rate_ratio: Option<f64>,
}

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

impl Service {
    pub fn backend(&self, c: Color) -> Option<SocketAddr> {
        match c {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    pub services: Vec<Service>,
}

/// The HTTP listener: `/metrics` and the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// None: no listener.
    pub listen: Option<SocketAddr>,
    /// Holds the token that mutating dashboard actions need. None: one is generated at start
    /// into `<state_dir>/http.token` (0600).
    pub token_file: Option<PathBuf>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseFailure::Syntax(message) => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ParseFailure::Invalid(errors) => ConfigError::Invalid {
                path: path.to_path_buf(),
                errors,
            },
        })
    }

    pub fn parse(text: &str) -> Result<Config, ParseFailure> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ParseFailure::Syntax(e.to_string()))?;
        validate(raw).map_err(ParseFailure::Invalid)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Debug)]
pub enum ParseFailure {
    Syntax(String),
    Invalid(Vec<FieldError>),
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
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
    let xdp_mode = match raw.daemon.xdp_mode.as_deref() {
        None | Some("auto") => XdpModeCfg::Auto,
        Some("native") => XdpModeCfg::Native,
        Some("generic") => XdpModeCfg::Generic,
        Some(other) => {
            errs.push(
                "daemon.xdp_mode",
                format!("expected auto, native or generic, got {other:?}"),
            );
            XdpModeCfg::Auto
        }
    };
    let default_forward = parse_forward(raw.daemon.forward.as_deref(), "daemon.forward", &mut errs);
    let http = http_config(raw.http, &mut errs);
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
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    let mut backends: HashMap<(SocketAddr, Protocol), String> = HashMap::new();
    for (i, mut s) in raw.services.into_iter().enumerate() {
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
        let protocol = match s.protocol.as_str() {
            "udp" => Some(Protocol::Udp),
            "tcp" => Some(Protocol::Tcp),
            other => {
                errs.push(
                    at("protocol"),
                    format!("expected udp or tcp, got {other:?}"),
                );
                None
            }
        };
        let active = match s.active.as_deref().map(str::parse::<Color>).transpose() {
            Ok(c) => c.unwrap_or(Color::Blue),
            Err(e) => {
                errs.push(at("active"), e);
                Color::Blue
            }
        };
        let mut backend = |c: Option<RawColor>, color: Color| -> Option<SocketAddr> {
            let c = c?;
            let field = at(&format!("{color}.backend"));
            match c.backend.parse::<SocketAddr>() {
                Ok(a) if a.port() == 0 => {
                    errs.push(field, "port 0 is not a backend port");
                    None
                }
                Ok(a) => {
                    if let Some(v) = vip {
                        if v.is_ipv4() != a.is_ipv4() {
                            errs.push(
                                field.clone(),
                                format!("{a} is not the same address family as vip {v}"),
                            );
                        }
                    }
                    if let Some(p) = protocol {
                        // Replies are translated back by backend address, so one backend
                        // cannot serve two services' VIPs.
                        if let Some(other) = backends.insert((a, p), s.name.clone()) {
                            if other != s.name {
                                errs.push(
                                    field.clone(),
                                    format!("{a}/{p} is already the backend of service {other:?}"),
                                );
                            }
                        }
                    }
                    Some(a)
                }
                Err(_) => {
                    errs.push(field, format!("{:?} is not ADDR:PORT", c.backend));
                    None
                }
            }
        };
        let blue = backend(s.blue.take(), Color::Blue);
        let green = backend(s.green.take(), Color::Green);
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
        let forward = match s.forward.as_deref() {
            None => default_forward,
            f => parse_forward(f, &at("forward"), &mut errs),
        };
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
        let checks = checks(&s, protocol, &at, &mut errs);
        if let (Some(vip), Some(port), Some(protocol)) = (vip, port, protocol) {
            services.push(Service {
                name: s.name,
                vip,
                port,
                protocol,
                active,
                blue,
                green,
                forward,
                udp_affinity_idle,
                drain,
                checks,
            });
        }
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

fn http_config(raw: Option<RawHttp>, errs: &mut Errors) -> HttpConfig {
    let raw = raw.unwrap_or(RawHttp {
        enabled: None,
        listen: None,
        token_file: None,
    });
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

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
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
    let health = match &s.health {
        Some(h) => {
            let tcp_port = port_field(h.tcp_port, at("health.tcp_port"), errs);
            if let Some(u) = &h.http {
                url_field(u, at("health.http"), errs);
            }
            if tcp_port.is_none() && h.http.is_none() && protocol != Some(Protocol::Tcp) {
                errs.push(at("health"), "set tcp_port and/or http");
            }
            let successes = h.successes.unwrap_or(3);
            if successes == 0 {
                errs.push(at("health.successes"), "must be at least 1");
            }
            Some(HealthCfg {
                tcp_port,
                http: h.http.clone(),
                successes,
                interval: ms(h.interval_ms, 200),
                deadline: ms(h.deadline_ms, 10_000),
                timeout: ms(h.timeout_ms, 1_000),
            })
        }
        None if protocol == Some(Protocol::Tcp) => Some(HealthCfg {
            tcp_port: None,
            http: None,
            successes: 3,
            interval: ms(None, 200),
            deadline: ms(None, 10_000),
            timeout: ms(None, 1_000),
        }),
        None => None,
    };
    let load = s.load.as_ref().map(|l| {
        let proto = match l.protocol.as_deref() {
            None => protocol.unwrap_or(Protocol::Tcp),
            Some("udp") => Protocol::Udp,
            Some("tcp") => Protocol::Tcp,
            Some(other) => {
                errs.push(
                    at("load.protocol"),
                    format!("expected udp or tcp, got {other:?}"),
                );
                Protocol::Tcp
            }
        };
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
        LoadCfg {
            protocol: proto,
            port: port_field(l.port, at("load.port"), errs),
            lines,
            rate: l.rate.unwrap_or(1000),
            line_size: l.line_size.unwrap_or(200),
            connections: l.connections.unwrap_or(1).max(1),
            ack,
            timeout: ms(l.timeout_ms, 30_000),
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
        MetricsCfg {
            url: m.url.clone(),
            timeout: ms(m.timeout_ms, 2_000),
            checks: m
                .checks
                .iter()
                .map(|c| MetricCheck {
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
        CanaryCfg {
            percent: c.percent,
            duration: Duration::from_millis(c.duration_ms),
        }
    });
    let w = s.watch.as_ref();
    let watch = WatchCfg {
        window: ms(w.and_then(|w| w.window_ms), 30_000),
        interval: ms(w.and_then(|w| w.interval_ms), 1_000),
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
        warm: ms(s.warm_ms, 600_000),
    }
}

fn parse_forward(v: Option<&str>, field: &str, errs: &mut Errors) -> Forward {
    match v {
        None | Some("redirect") => Forward::Redirect,
        Some("pass") => Forward::Pass,
        Some(other) => {
            errs.push(field, format!("expected redirect or pass, got {other:?}"));
            Forward::Redirect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "syslog-udp"
vip = "198.18.0.10"
port = 514
protocol = "udp"
active = "blue"
blue  = { backend = "198.18.1.2:514" }
green = { backend = "198.18.2.2:514" }

[[service]]
name = "syslog-tcp6"
vip = "2001:2:0:10::10"
port = 601
protocol = "tcp"
blue  = { backend = "[2001:2:0:1::2]:601" }
forward = "pass"
"#;

    fn errors(text: &str) -> Vec<FieldError> {
        match Config::parse(text) {
            Err(ParseFailure::Invalid(e)) => e,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD).expect("valid config");
        assert_eq!(c.daemon.interfaces, vec!["eth0"]);
        assert_eq!(c.daemon.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
        assert_eq!(c.services.len(), 2);
        let s = &c.services[0];
        assert_eq!(s.port, 514);
        assert_eq!(s.protocol, Protocol::Udp);
        assert_eq!(s.green, Some("198.18.2.2:514".parse().expect("addr")));
        assert_eq!(s.forward, Forward::Redirect);
        assert_eq!(c.services[1].forward, Forward::Pass);
        assert_eq!(c.services[1].active, Color::Blue);
    }

    #[test]
    fn reports_every_bad_field_with_its_path() {
        let text = GOOD
            .replace("port = 514", "port = 70000")
            .replace("\"198.18.2.2:514\"", "\"198.18.2.2\"")
            .replace("protocol = \"tcp\"", "protocol = \"sctp\"");
        let e = errors(&text);
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"service[0].port"), "{e:?}");
        assert!(fields.contains(&"service[0].green.backend"), "{e:?}");
        assert!(fields.contains(&"service[1].protocol"), "{e:?}");
    }

    #[test]
    fn rejects_duplicates_family_mismatch_and_missing_active_backend() {
        let text = GOOD
            .replace("name = \"syslog-tcp6\"", "name = \"syslog-udp\"")
            .replace("[2001:2:0:1::2]:601", "198.18.1.9:601")
            .replace(
                "active = \"blue\"",
                "active = \"green\"\nudp_affinity_idle_ms = 5",
            )
            .replace("green = { backend = \"198.18.2.2:514\" }", "");
        let e = errors(&text);
        let msg = e
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            msg.contains("service[1].name: \"syslog-udp\" already used"),
            "{msg}"
        );
        assert!(
            msg.contains("service[1].blue.backend") && msg.contains("address family"),
            "{msg}"
        );
        assert!(
            msg.contains("service[0].active: green has no backend"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_shared_backend_and_duplicate_service_key() {
        let text = format!(
            "{GOOD}\n[[service]]\nname = \"dup\"\nvip = \"198.18.0.10\"\nport = 514\nprotocol = \"udp\"\nblue = {{ backend = \"198.18.1.2:514\" }}\n"
        );
        let e = errors(&text);
        let msg = e
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            msg.contains("service[2].vip: 198.18.0.10:514/udp is already service[0]"),
            "{msg}"
        );
        assert!(
            msg.contains("already the backend of service \"syslog-udp\""),
            "{msg}"
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_rejected() {
        let text = GOOD.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\ninterface = 1",
        );
        match Config::parse(&text) {
            Err(ParseFailure::Syntax(m)) => assert!(m.contains("interface"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Config::parse("[daemon"),
            Err(ParseFailure::Syntax(_))
        ));
    }

    #[test]
    fn http_listener_defaults_to_localhost_and_rejects_bad_addresses() {
        let c = Config::parse(GOOD).expect("good config");
        assert_eq!(c.http.listen, DEFAULT_HTTP_LISTEN.parse().ok());
        assert_eq!(c.http.token_file, None);
        assert_eq!(c.daemon.probe_interval, Some(Duration::from_secs(1)));
        let quiet = GOOD.replace("[daemon]", "[daemon]\nprobe_interval_ms = 0");
        assert_eq!(
            Config::parse(&quiet)
                .expect("probes off")
                .daemon
                .probe_interval,
            None
        );
        let e = errors(&GOOD.replace("[daemon]", "[daemon]\nprobe_interval_ms = 5"));
        assert!(
            e.iter().any(|e| e.field == "daemon.probe_interval_ms"),
            "{e:?}"
        );
        let off = GOOD.replace("[daemon]", "[http]\nenabled = false\n\n[daemon]");
        assert_eq!(Config::parse(&off).expect("http off").http.listen, None);
        let bad = GOOD.replace(
            "[daemon]",
            "[http]\nlisten = \"localhost\"\ntoken_file = \"relative\"\n\n[daemon]",
        );
        let e = errors(&bad);
        assert!(e.iter().any(|e| e.field == "http.listen"), "{e:?}");
        assert!(e.iter().any(|e| e.field == "http.token_file"), "{e:?}");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let c = Config::parse(include_str!("../dist/switcher.toml")).expect("dist/switcher.toml");
        assert_eq!(c.http.listen, "127.0.0.1:9477".parse().ok());
        let tcp = c.service("syslog-tcp").expect("tcp service");
        let load = tcp.checks.load.as_ref().expect("load");
        assert!(load.ack);
        assert_eq!(load.max_p99_ratio, Some(1.5));
        assert_eq!(tcp.checks.canary.as_ref().map(|c| c.percent), Some(10.0));
        assert_eq!(tcp.checks.metrics.as_ref().map(|m| m.checks.len()), Some(1));
        assert_eq!(
            c.service("syslog-udp")
                .and_then(|s| s.checks.health.as_ref())
                .and_then(|h| h.tcp_port),
            Some(601)
        );
    }

    #[test]
    fn check_settings_are_validated_with_their_path() {
        let text = GOOD.replace(
            "forward = \"pass\"",
            "forward = \"pass\"\n[service.load]\nprotocol = \"udp\"\nack = true\nmax_p99_ratio = -1\n[service.canary]\npercent = 80\nduration_ms = 1\n[service.metrics]\nurl = \"https://x/metrics\"",
        );
        let e = errors(&text);
        let msg = e
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for want in [
            "service[1].load.ack: acknowledgements need tcp",
            "service[1].load.max_p99_ratio",
            "service[1].canary.percent",
            "service[1].metrics.url",
            "service[1].metrics.check",
        ] {
            assert!(msg.contains(want), "missing {want}:\n{msg}");
        }
        // A udp service without a health section gets no default health check.
        let c = Config::parse(GOOD).expect("valid");
        assert!(c.services[0].checks.health.is_none());
        assert_eq!(
            c.services[1].checks.health.as_ref().map(|h| h.successes),
            Some(3)
        );
    }

    #[test]
    fn tcp_service_rejects_udp_affinity() {
        let text = GOOD.replace("forward = \"pass\"", "udp_affinity_idle_ms = 1000");
        let e = errors(&text);
        assert_eq!(e[0].field, "service[1].udp_affinity_idle_ms");
    }
}
