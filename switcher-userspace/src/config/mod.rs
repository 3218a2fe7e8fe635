//! The daemon's configuration: what the TOML file says ([`schema`]), checked whole into these
//! types ([`validate`]) and read from disk ([`load`]). Any error is reported with its field
//! path and nothing is applied.

mod load;
mod schema;
#[cfg(test)]
mod tests;
mod validate;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Serialize;

pub use load::{ConfigError, FieldError, ParseFailure};

use crate::domain::{Color, Forward, Protocol, XdpMode};
use crate::probe::{health::HealthRounds, load::LoadSpec};

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/switcher";
pub const DEFAULT_SOCKET: &str = "/run/switcher/switcher.sock";
/// Metrics and dashboard: localhost only unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_DRAIN_MS: u64 = 60_000;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/switcher";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub bpffs_dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// How often every backend's health is probed for metrics and the dashboard (None: not
    /// at all). Validation and the post-flip watch probe on their own schedule.
    pub probe_interval: Option<Duration>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// The initial colour only: after the first start the datapath's colour wins.
    pub active: Color,
    pub blue: Option<SocketAddr>,
    pub green: Option<SocketAddr>,
    pub forward: Forward,
    /// UDP only: per-source-flow affinity with this idle timeout.
    pub udp_affinity_idle: Option<Duration>,
    pub drain: Duration,
    pub checks: Checks,
}

impl Service {
    pub fn backend(&self, c: Color) -> Option<SocketAddr> {
        match c {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    pub fn backend_mut(&mut self, c: Color) -> &mut Option<SocketAddr> {
        match c {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }
}

/// How a candidate is validated before the flip and watched after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checks {
    pub health: Option<HealthCheck>,
    pub load: Option<LoadCheck>,
    pub metrics: Option<MetricsCheck>,
    pub canary: Option<CanaryCheck>,
    pub watch: WatchPolicy,
    /// How long the previous colour is kept warm (rollback target) after a promotion.
    pub warm: Duration,
}

/// `[service.health]`: what to probe on a candidate; the schedule is the probe's own type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    /// TCP connect to this port of the candidate's address (a TCP service's own port when
    /// neither this nor `http` is set).
    pub tcp_port: Option<u16>,
    /// `{addr}` and `{port}` are replaced with the candidate's address and port.
    pub http: Option<String>,
    #[serde(flatten)]
    pub rounds: HealthRounds,
}

/// `[service.load]`: one synthetic load run against the candidate and the serving colour,
/// and the thresholds that judge it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadCheck {
    /// Port on the backend's address that takes the load (default: the backend port).
    pub port: Option<u16>,
    #[serde(flatten)]
    pub run: LoadSpec,
    pub max_p99_ms: Option<f64>,
    pub min_throughput: Option<f64>,
    pub max_error_ratio: f64,
    pub max_p99_ratio: Option<f64>,
    pub min_throughput_ratio: Option<f64>,
}

/// `[service.metrics]`: the candidate's own Prometheus endpoint and the rules its series must
/// keep over a check interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsCheck {
    pub url: String,
    pub timeout: Duration,
    pub rules: Vec<MetricRule>,
}

/// One `[[service.metrics.check]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricRule {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The summed value may grow by at most this much over a check interval.
    pub max_increase: Option<f64>,
    /// The summed value must grow at least this fast (per second) over a check interval.
    pub min_rate: Option<f64>,
}

/// `[service.canary]`: a share of real new flows weighted to the candidate in the datapath.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryCheck {
    /// Share of new flows sent to the candidate, in percent.
    pub percent: f64,
    pub duration: Duration,
}

/// `[service.watch]`: how a promoted candidate is watched until it is declared stable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchPolicy {
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

impl Config {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// A backend (address, port, protocol) named by two services. Replies are translated back to
/// the VIP by backend address, so one backend cannot serve two services' VIPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConflict {
    pub backend: SocketAddr,
    pub protocol: Protocol,
    /// The service that named it first.
    pub owner: String,
    /// Index (in the slice checked) and colour of the service that named it again.
    pub index: usize,
    pub color: Color,
    pub name: String,
}

impl fmt::Display for BackendConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} would be a backend of both {} and {}",
            self.backend, self.protocol, self.owner, self.name
        )
    }
}

/// Every backend named by more than one service (one service may use the same backend for
/// both colours). The one check for the config file, deploys and reloads.
pub fn backend_conflicts(services: &[Service]) -> Vec<BackendConflict> {
    let mut seen: HashMap<(SocketAddr, Protocol), &str> = HashMap::new();
    let mut out = Vec::new();
    for (index, s) in services.iter().enumerate() {
        for color in Color::BOTH {
            let Some(b) = s.backend(color) else { continue };
            match seen.get(&(b, s.protocol)) {
                Some(owner) if *owner != s.name => out.push(BackendConflict {
                    backend: b,
                    protocol: s.protocol,
                    owner: owner.to_string(),
                    index,
                    color,
                    name: s.name.clone(),
                }),
                Some(_) => {}
                None => {
                    seen.insert((b, s.protocol), &s.name);
                }
            }
        }
    }
    out
}
