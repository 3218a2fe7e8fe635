//! The daemon's configuration: what the TOML file says ([`schema`]), checked whole into these
//! types ([`validate`]) and read from disk ([`load`]). Any error is reported with its field
//! path and nothing is applied.

mod load;
mod pool;
mod schema;
#[cfg(test)]
mod tests;
mod validate;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Serialize;

pub use load::{ConfigError, FieldError, ParseFailure};
pub use pool::{
    backend_conflicts, check_pool, describe, deserialize_members, parse_list, BackendConflict,
    Member,
};

use crate::domain::{Color, Forward, Protocol, XdpMode};
use crate::probe::{health::HealthRounds, load::LoadSpec};

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/switcher";
pub const DEFAULT_SOCKET: &str = "/run/switcher/switcher.sock";
/// Metrics and dashboard: localhost only unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_DRAIN_MS: u64 = 60_000;
pub const DEFAULT_UDP_AFFINITY_MAX_AGE_MS: u64 = 300_000;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/switcher";
/// The watch rolls back when fewer of the candidate's members than this share pass health.
pub const DEFAULT_MIN_HEALTHY_SHARE: f64 = 0.5;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    /// None: single-host mode, the default.
    pub fleet: Option<FleetConfig>,
    pub services: Vec<Service>,
}

/// `[fleet]`: this host is one of many kept on the same colours and service config through
/// etcd (`crate::fleet`).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// `http://host:port` or `https://host:port` (then `tls` is required).
    pub endpoints: Vec<String>,
    /// The key prefix: `/switcher/<cluster>/`.
    pub cluster: String,
    /// This host's name in the fleet (default: the hostname).
    pub host_id: String,
    /// The lease this host's report lives under: how long after it goes silent it counts as
    /// disconnected.
    pub lease_ttl: Duration,
    /// How long a fleet flip waits for every connected host's acknowledgement.
    pub ack_deadline: Duration,
    /// How long a fleet promote waits for every host's validation verdict.
    pub promote_deadline: Duration,
    /// One connection attempt, and one etcd request.
    pub connect_timeout: Duration,
    pub tls: Option<FleetTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetTls {
    pub ca: PathBuf,
    /// Client certificate and key, both or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
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
    /// Each colour's pool (empty: the colour has no backend).
    pub blue: Vec<Member>,
    pub green: Vec<Member>,
    pub forward: Forward,
    /// UDP only: per-source-flow affinity with this idle timeout.
    pub udp_affinity_idle: Option<Duration>,
    /// With affinity: how long after its first packet a source flow may stay on a colour that
    /// is no longer active (a sender that never goes idle still follows a flip).
    pub udp_affinity_max_age: Duration,
    /// UDP: every chunk of a chunked GELF message goes where its first-seen chunk went.
    pub gelf: bool,
    pub drain: Duration,
    /// After a flip, the colour left is reported ready to stop at the latest this long after
    /// it (its still pinned connections then reconnect to the active colour when closed).
    pub retire_after: Option<Duration>,
    pub checks: Checks,
}

impl Service {
    /// The members of `c`'s pool (none: the colour has no backend).
    pub fn members(&self, c: Color) -> &[Member] {
        match c {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    pub fn members_mut(&mut self, c: Color) -> &mut Vec<Member> {
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
    pub shadow: Option<ShadowCheck>,
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

/// `[service.shadow]` (UDP services): a copy of a share of the live packets sent to the
/// candidate's shadow port while the serving colour keeps the originals; the candidate's
/// health and metrics under that load decide.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowCheck {
    /// Share of the service's packets copied, in percent.
    pub percent: f64,
    pub duration: Duration,
    /// The port on each candidate member that takes the copies (its validation input, so
    /// its downstream never stores them).
    pub port: u16,
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
    /// Traffic to the candidate may not fall below this share of its usual rate (the median
    /// of the earlier rounds; see `judge::traffic_dropped`).
    pub min_rate_ratio: Option<f64>,
    /// A round fails when fewer of the candidate's members than this share pass health.
    pub min_healthy_share: f64,
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}
