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
    /// Held across every change of the running config (a fleet definition adopted, a
    /// reload): compose, apply and the bookkeeping happen as one.
    config: tokio::sync::Mutex<()>,
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
    /// The config file's text as last read (at start, or by a fleet reload): the base every
    /// config this host applies is composed on, never the file as it is on disk now.
    file_text: String,
    /// Its services, by name (what a reload publishes is what changed in the file since).
    file_seen: BTreeMap<String, String>,
    /// The fleet's definitions laid over the file (saved in the state folder).
    overlay: BTreeMap<String, String>,
    /// The definition of each service the controller runs now.
    running: BTreeMap<String, String>,
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
        match definitions::read_file(&cfg_path).and_then(|t| Ok((definitions::services_of(&t)?, t)))
        {
            Ok((services, text)) => {
                local.file_seen = services;
                local.file_text = text;
            }
            Err(e) => tracing::warn!("fleet: reading the config file's services: {e:#}"),
        }
        // The overlay the controller started with: none when it did not fit the file (then
        // the daemon started from the file alone, see definitions::startup_config).
        match definitions::load_overlay(&state_dir) {
            Ok(o) if definitions::compose(&local.file_text, &o).is_ok() => local.overlay = o,
            Ok(_) => tracing::warn!(
                "fleet: the saved definitions do not fit the config file; running the file's"
            ),
            Err(e) => tracing::warn!("fleet: ignoring the saved definitions: {e:#}"),
        }
        local.running = local.file_seen.clone();
        local.running.extend(local.overlay.clone());
        match Saved::load(&state_dir) {
            Ok(saved) => {
                local.applied = saved.applied;
                local.deployments = saved.deployments;
                local.overrides = saved.overrides;
                local.pending_audit = saved.pending_audit;
            }
            Err(e) => tracing::warn!("fleet: ignoring the saved agent state: {e:#}"),
        }
        let fleet = Fleet(Arc::new(Inner {
            keys: Keys::new(&cfg.cluster),
            cfg,
            cfg_path,
            state_dir,
            ctl,
            local: Mutex::new(local),
            nudge: tokio::sync::Notify::new(),
            config: tokio::sync::Mutex::new(()),
        }));
        let events = fleet.0.ctl.subscribe();
        let task = tokio::spawn(agent::run(fleet.clone(), events));
        (fleet, task)
    }

    pub fn host(&self) -> &str {
        &self.0.cfg.host_id
    }

    /// The definition of `service` this host runs.
    fn definition(&self, service: &str) -> Option<String> {
        self.local().running.get(service).cloned()
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

    /// Saves what must survive a restart: applied revisions (so a restart does not undo an
    /// override or re-apply what it did), the link to local deployments, overrides and the
    /// audit entries not yet written. Best effort: said when it fails.
    fn persist(&self) {
        let saved = {
            let l = self.local();
            Saved {
                applied: l.applied.clone(),
                deployments: l.deployments.clone(),
                overrides: l.overrides.clone(),
                pending_audit: l.pending_audit.clone(),
            }
        };
        if let Err(e) = saved.save(&self.0.state_dir) {
            tracing::warn!("fleet: saving the agent's state: {e:#}");
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
        self.persist();
        self.0.nudge.notify_one();
    }

    /// Leaves the fleet at shutdown: the lease is revoked (best effort), so the others see
    /// this host gone at once rather than when its lease runs out.
    pub async fn leave(&self) {
        let (client, lease) = {
            let l = self.local();
            (l.client.clone(), l.lease)
        };
        if let (Some(mut c), Some(lease)) = (client, lease) {
            let _ = etcd::within(self.0.cfg.connect_timeout, c.lease_revoke(lease)).await;
        }
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

/// The agent's state kept in `<state_dir>/fleet-agent.json`.
#[derive(Default, Serialize, serde::Deserialize)]
struct Saved {
    applied: BTreeMap<String, i64>,
    deployments: BTreeMap<String, (String, u64)>,
    overrides: BTreeMap<String, Override>,
    pending_audit: Vec<AuditEntry>,
}

impl Saved {
    fn path(state_dir: &std::path::Path) -> std::path::PathBuf {
        state_dir.join("fleet-agent.json")
    }

    fn load(state_dir: &std::path::Path) -> anyhow::Result<Saved> {
        let p = Saved::path(state_dir);
        match std::fs::read(&p) {
            Ok(b) => Ok(serde_json::from_slice(&b)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
            Err(e) => Err(e.into()),
        }
    }

    fn save(&self, state_dir: &std::path::Path) -> anyhow::Result<()> {
        let p = Saved::path(state_dir);
        let tmp = p.with_extension("json.new");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, &p)?;
        Ok(())
    }
}
