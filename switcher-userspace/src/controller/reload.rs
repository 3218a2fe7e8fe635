//! Re-reading the config file while the daemon runs. The new file is validated whole and
//! checked against what is deployed before anything is applied; an invalid one changes
//! nothing and says why.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{core::Core, events::Event, recovery};
use crate::{
    config::{backend_conflicts, Config},
    deploy::Phase,
    domain::now_ms,
};

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Services configured now.
    pub services: usize,
}

impl Core {
    pub fn reload(&mut self, actor: &str) -> Result<ReloadSummary> {
        let cfg = Config::load(&self.cfg_path).map_err(|e| anyhow!("{e}"))?;
        self.apply_config(cfg, actor)
    }

    /// Applies `cfg` (validated whole by its parser) as a reload does: checked against what
    /// runs, then the datapath, then the state. The fleet agent brings the fleet's service
    /// definitions this way.
    pub fn apply_config(&mut self, cfg: Config, actor: &str) -> Result<ReloadSummary> {
        let (old, new) = (&self.cfg.daemon, &cfg.daemon);
        if new.interfaces != old.interfaces
            || new.bpffs_dir != old.bpffs_dir
            || new.state_dir != old.state_dir
            || new.socket != old.socket
        {
            bail!("daemon.interfaces, bpffs_dir, state_dir and socket change only with a restart; nothing applied");
        }
        for s in &cfg.services {
            let running = self
                .current(&s.name)
                .is_some_and(|d| matches!(d.phase, Phase::Validating | Phase::Promoted));
            if running && self.cfg.service(&s.name).map(|o| &o.checks) != Some(&s.checks) {
                warn!(service = %s.name, "checks changed during a deployment; the running validation or watch keeps its settings");
            }
        }
        // The effective services are computed on a copy: nothing changes unless the reload
        // is applied.
        let mut settled = self.state.clone();
        settled.settle(&cfg);
        let services = settled.effective(&cfg);
        // Deployed backends count too: replies are translated back by backend address.
        if let Some(conflict) = backend_conflicts(&services).first() {
            bail!("{conflict}; nothing applied");
        }
        let removed: Vec<String> = self
            .cfg
            .services
            .iter()
            .filter(|s| cfg.service(&s.name).is_none())
            .map(|s| s.name.clone())
            .collect();
        let added: Vec<String> = cfg
            .services
            .iter()
            .filter(|s| self.cfg.service(&s.name).is_none())
            .map(|s| s.name.clone())
            .collect();
        // Services that go away take their validation or watch (and canary) with them.
        for name in &removed {
            self.stop_task(name);
            if self.ids.contains_key(name) {
                self.clear_canary(name)?;
            }
        }
        self.apply_services(&services)?;
        self.state = settled;
        self.cfg = cfg;
        let active = services
            .iter()
            .map(|s| Ok((s.name.clone(), self.dp.read(self.id(&s.name)?)?.active)))
            .collect::<Result<_>>()?;
        recovery::reconcile(&mut self.state, &services, &active)?;
        self.save()?;
        let summary = ReloadSummary {
            services: self.cfg.services.len(),
            added,
            removed,
        };
        self.out.emit(Event {
            at_ms: now_ms(),
            service: "*".into(),
            deployment: None,
            kind: "reload".into(),
            phase: None,
            actor: actor.to_string(),
            message: format!("config reloaded: {}", serde_json::json!(summary)),
            evidence: None,
        });
        Ok(summary)
    }
}
