//! The config file as written: TOML sections deserialized as they are, before validation.
//! Unknown keys are errors, so a typo never silently keeps a default.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) daemon: RawDaemon,
    pub(super) http: Option<RawHttp>,
    pub(super) fleet: Option<RawFleet>,
    #[serde(default, rename = "service")]
    pub(super) services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) interfaces: Vec<String>,
    pub(super) xdp_mode: Option<String>,
    pub(super) bpffs_dir: Option<PathBuf>,
    pub(super) socket: Option<PathBuf>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) forward: Option<String>,
    pub(super) probe_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) enabled: Option<bool>,
    pub(super) listen: Option<String>,
    pub(super) token_file: Option<PathBuf>,
}

/// `[fleet]`: present only on hosts coordinated through etcd.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) endpoints: Vec<String>,
    pub(super) cluster: String,
    pub(super) host_id: Option<String>,
    pub(super) lease_ttl_s: Option<u64>,
    pub(super) ack_deadline_ms: Option<u64>,
    pub(super) promote_deadline_ms: Option<u64>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) tls: Option<RawFleetTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleetTls {
    pub(super) ca: PathBuf,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    pub(super) vip: String,
    pub(super) port: i64,
    pub(super) protocol: String,
    pub(super) active: Option<String>,
    pub(super) blue: Option<RawColor>,
    pub(super) green: Option<RawColor>,
    pub(super) forward: Option<String>,
    pub(super) udp_affinity_idle_ms: Option<u64>,
    pub(super) udp_affinity_max_age_ms: Option<u64>,
    pub(super) gelf: Option<bool>,
    pub(super) drain_ms: Option<u64>,
    pub(super) retire_after_ms: Option<u64>,
    pub(super) warm_ms: Option<u64>,
    pub(super) health: Option<RawHealth>,
    pub(super) load: Option<RawLoad>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) canary: Option<RawCanary>,
    pub(super) shadow: Option<RawShadow>,
    pub(super) watch: Option<RawWatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) tcp_port: Option<i64>,
    pub(super) http: Option<String>,
    pub(super) successes: Option<u32>,
    pub(super) interval_ms: Option<u64>,
    pub(super) deadline_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoad {
    pub(super) protocol: Option<String>,
    pub(super) port: Option<i64>,
    pub(super) lines: Option<u64>,
    pub(super) rate: Option<u64>,
    pub(super) line_size: Option<usize>,
    pub(super) connections: Option<u32>,
    pub(super) ack: Option<RawAck>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) max_p99_ms: Option<f64>,
    pub(super) min_throughput: Option<f64>,
    pub(super) max_error_ratio: Option<f64>,
    pub(super) max_p99_ratio: Option<f64>,
    pub(super) min_throughput_ratio: Option<f64>,
}

/// `ack = "line"` (or `"none"`); a boolean is the old spelling, refused with its new one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawAck {
    Flag(bool),
    Mode(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) url: String,
    pub(super) timeout_ms: Option<u64>,
    #[serde(default, rename = "check")]
    pub(super) checks: Vec<RawMetricCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetricCheck {
    pub(super) name: String,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    pub(super) max_increase: Option<f64>,
    pub(super) min_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCanary {
    pub(super) percent: f64,
    pub(super) duration_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadow {
    pub(super) percent: f64,
    pub(super) duration_ms: u64,
    pub(super) port: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    pub(super) window_ms: Option<u64>,
    pub(super) interval_ms: Option<u64>,
    pub(super) failures: Option<u32>,
    pub(super) max_resets: Option<u64>,
    pub(super) max_unreachables: Option<u64>,
    pub(super) min_rate_ratio: Option<f64>,
    pub(super) min_healthy_share: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawColor {
    /// A pool of one.
    pub(super) backend: Option<String>,
    pub(super) backends: Option<Vec<String>>,
    /// One per entry of `backends` (default 1 each).
    pub(super) weights: Option<Vec<i64>>,
}
