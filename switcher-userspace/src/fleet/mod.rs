//! Fleet mode: many edge hosts kept on the same colour and the same service definition
//! through etcd. The agent ([`agent`]) is one more caller of the [`Controller`]: it applies
//! each desired revision the fleet writes (a flip through the same path as the CLI's) and
//! reports, under this host's lease, what its own BPF maps say. Flips and rollbacks asked on
//! any host are written to etcd by [`writer`], with a revision compare, and wait for every
//! connected host's acknowledgement. Without `[fleet]` none of this runs.
//!
//! Fail static: a host that loses etcd keeps its last applied state, shows itself as
//! disconnected and re-reads everything when it gets back.

mod agent;
mod apply;
pub mod definitions;
mod driver;
mod etcd;
pub mod keys;
pub mod model;
mod publish;
pub mod route;
#[cfg(test)]
mod tests;
mod writer;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use serde::Serialize;

pub use model::{AuditEntry, Desired, FleetStatus, HostReport, ServiceReport};
pub use writer::{FleetFlip, HostAck};

use self::{
    keys::Keys,
    model::{Nack, Override},
};
use crate::{config::FleetConfig, controller::Controller, domain::now_ms};

/// This host's fleet agent and writer: cheap to clone.
#[derive(Clone)]
pub struct Fleet(Arc<Inner>);

struct Inner {
    cfg: FleetConfig,
    /// The daemon's config file and state folder (the overlay lives there).
    cfg_path: std::path::PathBuf,
    state_dir: std::path::PathBuf,
    keys: Keys,
    ctl: Controller,
    local: Mutex<Local>,
    /// Asks the agent for a report now (after a local override).
    nudge: tokio::sync::Notify,
}

/// What this host knows of the fleet, kept across disconnections (fail static).
#[derive(Default)]
struct Local {
    /// None while etcd is unreachable.
    client: Option<etcd_client::Client>,
    connected_since_ms: Option<u64>,
    last_error: Option<String>,
    /// The desired state last read, by service: (revision, value).
    desired: BTreeMap<String, (i64, Desired)>,
    /// Per service: the last applied revision, the last refusal, a local override.
    applied: BTreeMap<String, i64>,
    /// Per service: how long the last applied revision took to apply (µs).
    apply_us: BTreeMap<String, u64>,
    nacks: BTreeMap<String, Nack>,
    overrides: BTreeMap<String, Override>,
    /// Audit entries written while disconnected, sent on reconnect.
    pending_audit: Vec<AuditEntry>,
    /// Reconnections after the first connection (metrics).
    reconnects: u64,
    /// Where the next session starts trying endpoints.
    next_endpoint: usize,
    /// The current session's lease (driver keys live under it).
    lease: Option<i64>,
    /// Per service: the fleet deployment this host deployed locally, and its local id.
    deployments: BTreeMap<String, (String, u64)>,
    /// Services whose fleet deployment a task of this host drives now.
    driving: std::collections::BTreeSet<String>,
    /// The fleet's definitions this host runs in place of its file's (saved in its state
    /// folder), and its file's definitions as last read (what a reload publishes is what
    /// changed in the file since).
    overlay: BTreeMap<String, String>,
    file_seen: BTreeMap<String, String>,
}

/// What the metrics and the status show of this host's fleet membership.
#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    pub cluster: String,
    pub host: String,
    pub connected: bool,
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Per service: the desired revision last seen and the revision applied here.
    pub revisions: BTreeMap<String, (i64, i64)>,
}

impl Fleet {
    /// The agent starts at once and keeps (re)connecting until the daemon stops. The
    /// controller was started with the config at `cfg_path` overlaid with the fleet's
    /// definitions saved in `state_dir` ([`definitions::startup_config`]).
    pub fn start(
        cfg: FleetConfig,
        cfg_path: std::path::PathBuf,
        state_dir: std::path::PathBuf,
        ctl: Controller,
    ) -> (Fleet, tokio::task::JoinHandle<()>) {
        let mut local = Local::default();
        match definitions::load_overlay(&state_dir) {
            Ok(o) => local.overlay = o,
            Err(e) => tracing::warn!("fleet: ignoring the saved definitions: {e:#}"),
        }
        match definitions::file_services(&cfg_path) {
            Ok(f) => local.file_seen = f,
            Err(e) => tracing::warn!("fleet: reading the config file's services: {e:#}"),
        }
        let fleet = Fleet(Arc::new(Inner {
            keys: Keys::new(&cfg.cluster),
            cfg,
            cfg_path,
            state_dir,
            ctl,
            local: Mutex::new(local),
            nudge: tokio::sync::Notify::new(),
        }));
        let task = tokio::spawn(agent::run(fleet.clone()));
        (fleet, task)
    }

    pub fn host(&self) -> &str {
        &self.0.cfg.host_id
    }

    /// The definition of `service` this host runs: the fleet's, else its file's.
    fn definition(&self, service: &str) -> Option<String> {
        let l = self.local();
        l.overlay
            .get(service)
            .or_else(|| l.file_seen.get(service))
            .cloned()
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.0.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client while connected; the error fleet commands give otherwise.
    fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let l = self.local();
        l.client.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "fleet {}: this host ({}) is disconnected from etcd ({}); it keeps serving its \
                 last applied state. For an emergency change on this host only: --local --force \
                 --reason TEXT",
                self.0.cfg.cluster,
                self.0.cfg.host_id,
                l.last_error.as_deref().unwrap_or("not connected yet")
            )
        })
    }

    pub fn membership(&self) -> Membership {
        let l = self.local();
        Membership {
            cluster: self.0.cfg.cluster.clone(),
            host: self.0.cfg.host_id.clone(),
            connected: l.client.is_some(),
            last_error: l.last_error.clone(),
            reconnects: l.reconnects,
            revisions: l
                .desired
                .iter()
                .map(|(n, (rev, _))| (n.clone(), (*rev, l.applied.get(n).copied().unwrap_or(0))))
                .collect(),
        }
    }

    /// Records a local emergency change (`--local --force --reason`): audited, and reported
    /// as drift until the next desired revision is applied here.
    pub fn record_override(
        &self,
        service: &str,
        to: crate::domain::Color,
        actor: &str,
        reason: &str,
    ) {
        let at_ms = now_ms();
        let entry = AuditEntry {
            at_ms,
            actor: actor.to_string(),
            host: self.host().to_string(),
            service: service.to_string(),
            action: "local-override".into(),
            from: None,
            to,
            reason: reason.to_string(),
            revision: None,
            evidence: None,
        };
        {
            let mut l = self.local();
            l.overrides.insert(
                service.to_string(),
                Override {
                    actor: actor.to_string(),
                    reason: reason.to_string(),
                    at_ms,
                },
            );
            l.pending_audit.push(entry);
        }
        self.0.nudge.notify_one();
    }

    /// The fleet as etcd has it; while disconnected, what this host last knew, saying so.
    pub async fn status(&self) -> FleetStatus {
        match etcd::read_status(self).await {
            Ok(s) => s,
            Err(e) => {
                let l = self.local();
                let mut s = FleetStatus::build(
                    &self.0.cfg.cluster,
                    self.host(),
                    &l.desired,
                    &[],
                    &Default::default(),
                );
                s.connected = false;
                s.error = Some(format!("{e:#}"));
                s
            }
        }
    }
}
