//! What fleet mode stores in etcd (JSON values under [`super::keys`]) and the pure judgement
//! of drift: which hosts run what the fleet wants.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    config::{Member, Service},
    domain::Color,
};

/// `desired/<service>`: what every host must run. Its etcd `mod_revision` is the revision
/// hosts acknowledge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub active: Color,
    /// [`config_hash`] of the service definition the writer ran: a host running another one
    /// refuses (NACKs) the revision rather than flip a service it defines differently.
    pub config_hash: String,
    /// Who wrote it: `cli:root@host-a`, `seed:host-a`, `fleet-rollback:host-a`, ...
    pub actor: String,
    pub reason: String,
    pub at_ms: u64,
    /// The fleet deployment in progress or last finished, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<FleetDeployment>,
    /// The service definition every host runs: its `[[service]]` table as TOML. A host whose
    /// own differs takes this one (validated whole with its config, or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

impl Desired {
    /// The next desired state: this one, written by `actor` for `reason`, now.
    pub fn next(&self, actor: String, reason: String) -> Desired {
        Desired {
            actor,
            reason,
            at_ms: crate::domain::now_ms(),
            ..self.clone()
        }
    }

    /// With its fleet deployment moved to `phase` (and, when given, why).
    pub fn with_phase(mut self, phase: FleetPhase, why: Option<String>) -> Desired {
        if let Some(d) = self.deployment.as_mut() {
            d.phase = phase;
            if let Some(w) = why {
                d.reason = w;
            }
        }
        self
    }
}

/// One deployment of a candidate to every host: deployed everywhere, validated by every host
/// from its own vantage point, flipped to only when all passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDeployment {
    /// Unique in the fleet: `<desired revision it was created at>-<host>`.
    pub id: String,
    pub color: Color,
    pub members: Vec<Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Replace the slot even with connections pinned to it.
    #[serde(default)]
    pub force: bool,
    pub phase: FleetPhase,
    /// Why it is in this phase (who failed validation, ...).
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetPhase {
    /// On every host's idle slot; no traffic.
    Deployed,
    /// Every host validates; a driver holds `driver/<service>` and decides.
    Validating,
    /// Every host passed and the flip was written.
    Promoted,
    /// Some host failed validation or did not answer: nobody flipped.
    Rejected,
}

impl FleetPhase {
    pub fn is_open(self) -> bool {
        matches!(self, FleetPhase::Deployed | FleetPhase::Validating)
    }
}

/// `hosts/<host>`: one host's report, under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    pub at_ms: u64,
    pub services: BTreeMap<String, ServiceReport>,
}

/// One service on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The last desired revision this host applied (0: none yet).
    pub applied_revision: i64,
    /// Read back from this host's BPF maps, not from what it was told.
    pub active: Color,
    pub generation: u32,
    pub config_hash: String,
    /// The last revision it could not apply, and why; it kept its previous state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<Nack>,
    /// A local emergency override since the last applied revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden: Option<Override>,
    /// How long applying the last revision took here: from its watch event to the map
    /// written (this host's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_us: Option<u64>,
    /// This host's side of the fleet deployment: its local deployment and phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<HostDeployment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDeployment {
    pub fleet_id: String,
    pub local_id: u64,
    pub phase: crate::deploy::Phase,
    /// The last transition's reason (a failed validation says what failed).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nack {
    pub revision: i64,
    pub error: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub actor: String,
    pub reason: String,
    pub at_ms: u64,
}

/// One line of the fleet's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Who asked, on which host (`cli:root` on `edge-3`).
    pub actor: String,
    pub host: String,
    pub service: String,
    /// `flip`, `rollback`, `fleet-rollback`, `local-override`, `seed`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Color>,
    pub to: Color,
    pub reason: String,
    /// The desired revision written (None for a local override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

/// A short, stable digest of what defines `s` on the wire: VIP, port, protocol, both pools,
/// forwarding, timers and checks. Leaves out the initial `active` colour (after the first
/// start the datapath's colour wins, and the fleet's colour is the desired one).
pub fn config_hash(s: &Service) -> String {
    let mut s = s.clone();
    s.active = Color::Blue;
    // Debug lists every field in declaration order, maps sorted: the same definition gives
    // the same text on every host running this build.
    let digest = Sha256::digest(format!("{s:?}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `switcher fleet status`: the fleet as etcd has it, read from one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub cluster: String,
    /// The host that answered, and whether it reaches etcd now.
    pub host: String,
    pub connected: bool,
    /// Why this view is not fresh from etcd (the answering host is disconnected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub desired: BTreeMap<String, DesiredView>,
    pub hosts: Vec<HostView>,
    /// Hosts with any drift, or disconnected.
    pub in_drift: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredView {
    pub revision: i64,
    #[serde(flatten)]
    pub desired: Desired,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub host: String,
    /// Its lease is alive (its report exists).
    pub connected: bool,
    pub services: BTreeMap<String, HostServiceView>,
    /// Why this host differs from the desired state; empty: in sync.
    pub drift: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostServiceView {
    #[serde(flatten)]
    pub report: ServiceReport,
    pub config_matches: bool,
    /// Desired revision minus applied revision (0: caught up).
    pub lag: i64,
}

impl FleetStatus {
    /// Joins what is desired with what each host reports. `known` are hosts that joined once;
    /// those without a report are disconnected.
    pub fn build(
        cluster: &str,
        host: &str,
        desired: &BTreeMap<String, (i64, Desired)>,
        reports: &[HostReport],
        known: &BTreeSet<String>,
    ) -> FleetStatus {
        let mut hosts = Vec::new();
        let reported: BTreeSet<&str> = reports.iter().map(|r| r.host.as_str()).collect();
        for r in reports {
            let mut drift = Vec::new();
            let mut services = BTreeMap::new();
            for (name, (rev, d)) in desired {
                let Some(s) = r.services.get(name) else {
                    drift.push(format!("{name}: not reported"));
                    continue;
                };
                let config_matches = s.config_hash == d.config_hash;
                let lag = (rev - s.applied_revision).max(0);
                if s.active != d.active {
                    drift.push(format!("{name}: on {} (desired {})", s.active, d.active));
                }
                if !config_matches {
                    drift.push(format!(
                        "{name}: config {} (desired {})",
                        s.config_hash, d.config_hash
                    ));
                }
                if lag > 0 {
                    drift.push(format!(
                        "{name}: applied revision {} of {rev}",
                        s.applied_revision
                    ));
                }
                if let Some(n) = s.nack.as_ref().filter(|n| n.revision >= *rev) {
                    drift.push(format!(
                        "{name}: refused revision {}: {}",
                        n.revision, n.error
                    ));
                }
                if let Some(o) = &s.overridden {
                    drift.push(format!(
                        "{name}: local override by {}: {}",
                        o.actor, o.reason
                    ));
                }
                services.insert(
                    name.clone(),
                    HostServiceView {
                        report: s.clone(),
                        config_matches,
                        lag,
                    },
                );
            }
            hosts.push(HostView {
                host: r.host.clone(),
                connected: true,
                services,
                drift,
            });
        }
        for k in known.iter().filter(|k| !reported.contains(k.as_str())) {
            hosts.push(HostView {
                host: k.clone(),
                connected: false,
                services: BTreeMap::new(),
                drift: vec!["disconnected: no live lease".into()],
            });
        }
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        FleetStatus {
            cluster: cluster.to_string(),
            host: host.to_string(),
            connected: true,
            error: None,
            desired: desired
                .iter()
                .map(|(n, (rev, d))| {
                    (
                        n.clone(),
                        DesiredView {
                            revision: *rev,
                            desired: d.clone(),
                        },
                    )
                })
                .collect(),
            in_drift: hosts.iter().filter(|h| !h.drift.is_empty()).count(),
            hosts,
        }
    }
}

#[cfg(test)]
mod tests;
