//! The deployment controller: owns the datapath (it is the only writer of its maps), the
//! durable state and the per-service validation and watch tasks. API requests arrive here
//! through [`Controller::handle`]; long work (probes, load runs) runs in tasks that take the
//! lock only for short, checked transitions.

mod validate;
pub mod view;
mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex};
use tracing::{info, warn};

pub use view::{fmt_time, render_history, ServiceView, StatusView};

use crate::{
    config::{Color, Config, Service},
    datapath::{Datapath, FlipOutcome},
    deploy::{Deployment, Phase, Step},
    state::{ServiceState, Slot, State},
};

pub type Shared = Arc<Mutex<Controller>>;

pub const AUTO: &str = "auto";

/// Something that happened, as `switcher watch` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub service: String,
    #[serde(default)]
    pub deployment: Option<u64>,
    pub kind: String,
    #[serde(default)]
    pub phase: Option<Phase>,
    pub actor: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

pub struct Controller {
    pub(crate) dp: Datapath,
    pub(crate) cfg: Config,
    cfg_path: PathBuf,
    pub(crate) state: State,
    pub(crate) ids: BTreeMap<String, u32>,
    events: broadcast::Sender<Event>,
    tasks: HashMap<String, tokio::task::AbortHandle>,
    /// When the last flip's map write returned: the API reports accepted → written.
    pub last_map_write: Option<Instant>,
    /// Flips, rollbacks and validations as they happen, for `/metrics`.
    pub recorded: crate::telemetry::recorded::Recorded,
    /// The last catalog built and the change count it was built at (see [`Controller::catalog`]).
    pub(crate) catalog_cache: std::sync::Mutex<Option<(u64, Arc<Vec<view::CatalogEntry>>)>>,
    /// Bumped by every persisted change and every event: the catalog is stale when it moves.
    pub(crate) changes: std::sync::atomic::AtomicU64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The config's services with what the state knows layered on top: deployed backends and the
/// active colour survive restarts and reloads.
fn effective(cfg: &Config, state: &State) -> Vec<Service> {
    cfg.services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            if let Some(st) = state.services.get(&s.name) {
                if st.blue.backend != s.blue && s.blue.is_some() && st.blue.backend.is_some() {
                    warn!(service = %s.name, config = ?s.blue, kept = ?st.blue.backend,
                        "blue backend differs from the deployed one; keeping the deployed one");
                }
                if st.green.backend != s.green && s.green.is_some() && st.green.backend.is_some() {
                    warn!(service = %s.name, config = ?s.green, kept = ?st.green.backend,
                        "green backend differs from the deployed one; keeping the deployed one");
                }
                s.blue = st.blue.backend.or(s.blue);
                s.green = st.green.backend.or(s.green);
                s.active = st.active;
            }
            s
        })
        .collect()
}

impl Controller {
    /// Loads the state, loads or adopts the datapath, reconciles the two, attaches and resumes
    /// or explicitly closes deployments a previous daemon left open.
    pub async fn start(cfg: Config, cfg_path: PathBuf) -> Result<Shared> {
        let state = State::load(&cfg.daemon.state_dir)?;
        let mut dp = Datapath::load(&cfg.daemon.bpffs_dir)?;
        let services = effective(&cfg, &state);
        let ids = dp.apply(&services)?;
        let (events, _) = broadcast::channel(1024);
        let mut c = Controller {
            dp,
            cfg,
            cfg_path,
            state,
            ids,
            events,
            tasks: HashMap::new(),
            last_map_write: None,
            recorded: Default::default(),
            catalog_cache: Default::default(),
            changes: Default::default(),
        };
        c.reconcile(&services)?;
        c.refresh_redirect_targets();
        c.dp.attach(&c.cfg.daemon.interfaces, c.cfg.daemon.xdp_mode)?;
        let mut resume = Vec::new();
        let watch_windows: BTreeMap<String, u64> = c
            .cfg
            .services
            .iter()
            .map(|s| (s.name.clone(), s.checks.watch.window.as_millis() as u64))
            .collect();
        for (name, st) in c.state.services.iter_mut() {
            let active = st.active;
            let Some(d) = st.current.as_mut() else {
                continue;
            };
            // The datapath (already reconciled into `active`) shows what traffic saw; a crash
            // between a map write and its save leaves the phase behind it.
            let serving = d.color == active;
            match d.phase {
                Phase::Validating => {
                    d.apply(
                        Step::Abort,
                        AUTO,
                        "the daemon restarted during validation; promote again to re-validate",
                        None,
                        now_ms(),
                    )?;
                    warn!(service = %name, deployment = d.id, "interrupted validation marked aborted");
                }
                Phase::Deployed | Phase::Ready if serving => {
                    d.apply(
                        Step::Flip { forced: true },
                        AUTO,
                        "the datapath shows this flip; the daemon stopped before recording it",
                        None,
                        now_ms(),
                    )?;
                    d.watch_until_ms =
                        Some(now_ms() + watch_windows.get(name).copied().unwrap_or(0));
                    resume.push(name.clone());
                }
                Phase::Promoted | Phase::Stable if !serving => {
                    d.apply(
                        Step::Rollback,
                        AUTO,
                        "the datapath shows a rollback; the daemon stopped before recording it",
                        None,
                        now_ms(),
                    )?;
                    let candidate = d.color;
                    st.slot_mut(candidate).validated = false;
                }
                Phase::Promoted => resume.push(name.clone()),
                _ => {}
            }
        }
        c.archive_finished();
        c.save()?;
        let shared = Arc::new(Mutex::new(c));
        for name in resume {
            watch::spawn(&shared, &name, true).await;
        }
        Ok(shared)
    }

    /// Makes the state agree with the maps: the maps are what traffic sees, so after a crash
    /// between a flip and its save the map's colour wins.
    fn reconcile(&mut self, services: &[Service]) -> Result<()> {
        let mut keep: BTreeMap<String, ServiceState> = BTreeMap::new();
        for s in services {
            let id = self.id(&s.name)?;
            let word = self.dp.active(id)?;
            let active = Color::from_index(word.color());
            let mut st = self
                .state
                .services
                .remove(&s.name)
                .unwrap_or_else(|| ServiceState {
                    active,
                    generation: word.generation(),
                    // What the config names is trusted as known good.
                    blue: Slot {
                        backend: s.blue,
                        version: None,
                        validated: s.blue.is_some(),
                    },
                    green: Slot {
                        backend: s.green,
                        version: None,
                        validated: s.green.is_some(),
                    },
                    current: None,
                });
            if st.active != active {
                warn!(service = %s.name, state = %st.active, datapath = %active,
                    "state and datapath disagree on the active colour; the datapath wins");
                st.active = active;
            }
            st.generation = word.generation();
            st.blue.backend = s.blue;
            st.green.backend = s.green;
            keep.insert(s.name.clone(), st);
        }
        // Services removed from the config keep their history but no live state.
        for (name, st) in std::mem::take(&mut self.state.services) {
            if let Some(d) = st.current {
                info!(service = %name, "service removed from the config");
                self.state.archive(d);
            }
        }
        self.state.services = keep;
        Ok(())
    }

    fn id(&self, service: &str) -> Result<u32> {
        self.ids
            .get(service)
            .copied()
            .ok_or_else(|| anyhow!("no service named {service:?}"))
    }

    fn service_cfg(&self, service: &str) -> Result<&Service> {
        self.cfg
            .service(service)
            .ok_or_else(|| anyhow!("no service named {service:?}"))
    }

    fn svc_state(&mut self, service: &str) -> Result<&mut ServiceState> {
        self.state
            .services
            .get_mut(service)
            .ok_or_else(|| anyhow!("no service named {service:?}"))
    }

    pub(crate) fn save(&self) -> Result<()> {
        self.changed();
        self.state
            .save(&self.cfg.daemon.state_dir)
            .context("persisting state")
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Marks the catalog stale.
    pub(crate) fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn emit(&self, ev: Event) {
        self.changed();
        info!(service = %ev.service, kind = %ev.kind, actor = %ev.actor, "{}", ev.message);
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }

    fn emit_transition(&self, d: &Deployment) {
        if let Some(t) = d.last() {
            self.emit(Event {
                at_ms: t.at_ms,
                service: d.service.clone(),
                deployment: Some(d.id),
                kind: "transition".into(),
                phase: Some(t.to),
                actor: t.actor.clone(),
                message: format!(
                    "deployment {} ({} {}): {} — {}",
                    d.id, d.color, d.backend, t.to, t.reason
                ),
                evidence: t.evidence.clone(),
            });
        }
    }

    /// Moves final deployments out of `current` into the history.
    fn archive_finished(&mut self) {
        let mut done = Vec::new();
        for st in self.state.services.values_mut() {
            if st.current.as_ref().is_some_and(|d| d.phase.is_final()) {
                if let Some(d) = st.current.take() {
                    done.push(d);
                }
            }
        }
        for d in done {
            self.state.archive(d);
        }
    }

    /// Applies `step` to the current deployment of `service` if it is still deployment `id`.
    pub(crate) fn step(
        &mut self,
        service: &str,
        id: Option<u64>,
        step: Step,
        actor: &str,
        reason: &str,
        evidence: Option<serde_json::Value>,
    ) -> Result<Phase> {
        let st = self.svc_state(service)?;
        let d = st
            .current
            .as_mut()
            .ok_or_else(|| anyhow!("{service} has no deployment in progress"))?;
        if id.is_some_and(|id| id != d.id) {
            bail!(
                "deployment {} of {service} was replaced",
                id.unwrap_or_default()
            );
        }
        let phase = d.apply(step, actor, reason, evidence, now_ms())?;
        let d = d.clone();
        match step {
            Step::ValidationPassed => self.recorded.validation(service, true),
            Step::ValidationFailed => self.recorded.validation(service, false),
            Step::Rollback => self.recorded.rollback(service, actor == AUTO),
            _ => {}
        }
        self.emit_transition(&d);
        Ok(phase)
    }

    /// The one map write, plus state and event. Latency of the write is reported.
    pub(crate) fn flip_datapath(
        &mut self,
        service: &str,
        to: Color,
        actor: &str,
        why: &str,
    ) -> Result<FlipOutcome> {
        let id = self.id(service)?;
        let start = Instant::now();
        let out = self
            .dp
            .flip(id, to)
            .with_context(|| format!("flipping {service} to {to}"))?;
        let written = Instant::now();
        self.last_map_write = Some(written);
        if out.changed {
            self.recorded.flip(
                service,
                &to.to_string(),
                written.duration_since(start).as_secs_f64(),
            );
        }
        let st = self.svc_state(service)?;
        st.active = to;
        st.generation = out.generation;
        if out.changed {
            self.emit(Event {
                at_ms: now_ms(),
                service: service.to_string(),
                deployment: self.current(service).map(|d| d.id),
                kind: "flip".into(),
                phase: None,
                actor: actor.to_string(),
                message: format!(
                    "{service}: {} -> {} (generation {}): {why}",
                    out.from, out.to, out.generation
                ),
                evidence: None,
            });
        }
        Ok(out)
    }

    fn stop_task(&mut self, service: &str) {
        if let Some(t) = self.tasks.remove(service) {
            t.abort();
        }
    }

    /// Re-reads which interfaces accept redirected XDP frames (it changes with drivers, XDP
    /// programs and GRO settings) and tells the datapath. On failure redirect is disabled:
    /// every packet takes the slower but safe kernel path.
    pub fn refresh_redirect_targets(&mut self) {
        let targets = match crate::xdp_features::redirect_targets() {
            Ok(t) => t,
            Err(e) => {
                warn!("{e:#}");
                Vec::new()
            }
        };
        if let Err(e) = self.dp.set_redirect_targets(&targets) {
            warn!("updating redirect targets: {e:#}");
        }
    }

    /// Ends every canary share in the datapath (validations are being stopped).
    pub(crate) fn clear_canaries(&mut self) -> Result<()> {
        let ids: Vec<u32> = self.ids.values().copied().collect();
        for id in ids {
            self.dp.set_canary(id, 0)?;
        }
        Ok(())
    }

    pub(crate) fn abort_tasks(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
    }

    /// A deployment flipped by hand that has no watch running yet.
    pub fn is_promoted_unwatched(&self, service: &str) -> bool {
        !self.tasks.contains_key(service) && self.is_current(service, None, Phase::Promoted)
    }

    /// The deployment in progress of `service`, if any.
    pub(crate) fn current(&self, service: &str) -> Option<&Deployment> {
        self.state
            .services
            .get(service)
            .and_then(|s| s.current.as_ref())
    }

    /// Whether `service`'s current deployment is `id` (any id when `None`) in `phase`: a task
    /// checks this before acting, since an operator may have moved the deployment meanwhile.
    pub(crate) fn is_current(&self, service: &str, id: Option<u64>, phase: Phase) -> bool {
        self.current(service)
            .is_some_and(|d| d.phase == phase && id.is_none_or(|id| id == d.id))
    }

    /// Drops the handle of the task that is calling (it is finishing by itself).
    pub(crate) fn forget_task(&mut self, service: &str) {
        self.tasks.remove(service);
    }

    pub(crate) fn set_task(&mut self, service: &str, h: tokio::task::AbortHandle) {
        self.stop_task(service);
        self.tasks.insert(service.to_string(), h);
    }

    // ---- operations ----

    pub fn deploy(
        &mut self,
        service: &str,
        color: Color,
        backend: SocketAddr,
        version: Option<String>,
        force: bool,
        actor: &str,
    ) -> Result<Deployment> {
        let cfg = self.service_cfg(service)?.clone();
        if backend.is_ipv4() != cfg.vip.is_ipv4() {
            bail!("{backend} is not the address family of the VIP {}", cfg.vip);
        }
        let mut planned = effective(&self.cfg, &self.state);
        if let Some(s) = planned.iter_mut().find(|s| s.name == service) {
            match color {
                Color::Blue => s.blue = Some(backend),
                Color::Green => s.green = Some(backend),
            }
        }
        if let Some(conflict) = backend_conflict(&planned) {
            bail!("{conflict}");
        }
        let st = self.svc_state(service)?;
        if st.active == color {
            bail!(
                "{color} is serving {service}; deploy the new version to {}",
                color.other()
            );
        }
        if let Some(d) = &st.current {
            if d.blocks_new_deploy() {
                bail!(
                    "deployment {} of {service} is {}; finish it, abort it or roll it back first",
                    d.id,
                    d.phase
                );
            }
        }
        // Connections still draining on the idle colour would be sent to the new backend.
        let open = self.dp.open_flows(self.id(service)?, color)?;
        if open > 0 && !force {
            bail!(
                "{open} TCP connection(s) of {service} are still pinned to {color} and draining; \
                 replacing its backend would break them: wait for them to close, or deploy with --force"
            );
        }
        let id = self.state.allocate_id();
        let d = Deployment::new(
            id,
            service,
            color,
            backend,
            version.clone(),
            actor,
            now_ms(),
        );
        let st = self.svc_state(service)?;
        let slot = st.slot_mut(color);
        slot.backend = Some(backend);
        slot.version = version;
        slot.validated = false;
        if let Some(old) = st.current.replace(d.clone()) {
            self.state.archive(old);
        }
        let services = effective(&self.cfg, &self.state);
        self.ids = self.dp.apply(&services)?;
        self.save()?;
        self.emit_transition(&d);
        Ok(d)
    }

    pub fn abort(&mut self, service: &str, actor: &str) -> Result<Deployment> {
        self.step(
            service,
            None,
            Step::Abort,
            actor,
            "aborted by operator",
            None,
        )?;
        self.stop_task(service);
        // A canary share must not outlive its validation.
        let id = self.id(service)?;
        self.dp.set_canary(id, 0)?;
        let d = self.finish(service)?;
        self.save()?;
        Ok(d)
    }

    /// The current deployment (after a final step: moved to the history) for the reply.
    fn finish(&mut self, service: &str) -> Result<Deployment> {
        let st = self.svc_state(service)?;
        let d = st
            .current
            .clone()
            .ok_or_else(|| anyhow!("{service} has no deployment"))?;
        if d.phase.is_final() {
            st.current = None;
            self.state.archive(d.clone());
        }
        Ok(d)
    }

    /// Back to the previous colour, instantly: it was kept warm.
    pub fn rollback(
        &mut self,
        service: &str,
        actor: &str,
        reason: &str,
        evidence: Option<serde_json::Value>,
    ) -> Result<Deployment> {
        let st = self.svc_state(service)?;
        let d = st
            .current
            .as_ref()
            .ok_or_else(|| anyhow!("{service} has no deployment to roll back"))?;
        crate::deploy::next(d.phase, Step::Rollback)?;
        if let Some(until) = d.warm_until_ms {
            if now_ms() > until {
                bail!(
                    "{} is no longer kept warm (since {}); deploy it again instead",
                    d.previous,
                    view::fmt_time(until)
                );
            }
        }
        let (previous, candidate, id) = (d.previous, d.color, d.id);
        if st.slot(previous).backend.is_none() {
            bail!("{previous} has no backend to roll back to");
        }
        self.stop_task(service);
        let out = self.flip_datapath(service, previous, actor, reason)?;
        self.step(
            service,
            Some(id),
            Step::Rollback,
            actor,
            reason,
            Some(merge(evidence, serde_json::json!({ "flip": out }))),
        )?;
        // The candidate failed in production: a manual flip back to it needs --force again.
        self.svc_state(service)?.slot_mut(candidate).validated = false;
        let d = self.finish(service)?;
        self.save()?;
        Ok(d)
    }

    /// Manual flip. Refuses a colour that is not known good unless forced.
    pub fn flip(
        &mut self,
        service: &str,
        to: Color,
        force: bool,
        reason: Option<String>,
        actor: &str,
    ) -> Result<FlipOutcome> {
        if force && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            bail!("--force needs --reason TEXT: the reason is recorded");
        }
        let st = self.svc_state(service)?.clone();
        if st.active == to {
            return self.flip_datapath(service, to, actor, "already active");
        }
        let slot = st.slot(to);
        if slot.backend.is_none() {
            bail!("{to} has no backend");
        }
        let current = st.current.as_ref();
        // A flip that is part of the current deployment moves it along.
        let step = match current {
            Some(d) if d.color == to && matches!(d.phase, Phase::Deployed | Phase::Ready) => {
                Some(Step::Flip { forced: force })
            }
            Some(d) if d.previous == to && d.phase.is_after_flip() && !d.phase.is_final() => {
                Some(Step::Rollback)
            }
            Some(d) if d.phase == Phase::Validating => {
                bail!(
                    "deployment {} of {service} is validating; abort it first",
                    d.id
                )
            }
            _ => None,
        };
        if !slot.validated && !force && step != Some(Step::Flip { forced: false }) {
            bail!(
                "{to} ({}) has not been validated; promote it, or flip with --force --reason TEXT",
                slot.backend.map_or("-".into(), |b| b.to_string())
            );
        }
        if let (Some(step), Some(d)) = (step, current) {
            crate::deploy::next(d.phase, step)?;
        }
        let why = reason.clone().unwrap_or_else(|| "manual flip".into());
        let out = self.flip_datapath(service, to, actor, &why)?;
        if let (Some(step), Some(d)) = (step, current) {
            let id = d.id;
            self.stop_task(service);
            self.step(
                service,
                Some(id),
                step,
                actor,
                &why,
                Some(serde_json::json!({ "flip": out, "forced": force })),
            )?;
            if step == (Step::Flip { forced: force }) {
                self.start_watch_clock(service)?;
            } else {
                // Flipping back by hand is a rollback: the candidate is no longer trusted.
                self.svc_state(service)?.slot_mut(to.other()).validated = false;
            }
            self.finish(service)?;
        }
        self.save()?;
        Ok(out)
    }

    /// Sets the watch window of a freshly promoted deployment; the caller spawns the watch.
    pub(crate) fn start_watch_clock(&mut self, service: &str) -> Result<()> {
        let window = self.service_cfg(service)?.checks.watch.window;
        let until = now_ms() + window.as_millis() as u64;
        if let Some(d) = self.svc_state(service)?.current.as_mut() {
            d.watch_until_ms = Some(until);
        }
        Ok(())
    }

    pub fn reload(&mut self, actor: &str) -> Result<serde_json::Value> {
        let cfg = Config::load(&self.cfg_path).map_err(|e| anyhow!("{e}"))?;
        if cfg.daemon.interfaces != self.cfg.daemon.interfaces
            || cfg.daemon.bpffs_dir != self.cfg.daemon.bpffs_dir
            || cfg.daemon.state_dir != self.cfg.daemon.state_dir
            || cfg.daemon.socket != self.cfg.daemon.socket
        {
            bail!("daemon.interfaces, bpffs_dir, state_dir and socket change only with a restart; nothing applied");
        }
        for s in &cfg.services {
            let running = self
                .state
                .services
                .get(&s.name)
                .and_then(|st| st.current.as_ref())
                .is_some_and(|d| matches!(d.phase, Phase::Validating | Phase::Promoted));
            if running && self.cfg.service(&s.name).map(|o| &o.checks) != Some(&s.checks) {
                warn!(service = %s.name, "checks changed during a deployment; the running validation or watch keeps its settings");
            }
        }
        let services = effective(&cfg, &self.state);
        // Deployed backends count too: replies are translated back by backend address.
        if let Some(conflict) = backend_conflict(&services) {
            bail!("{conflict}; nothing applied");
        }
        // Services that go away take their validation or watch (and canary) with them.
        let removed: Vec<String> = self
            .cfg
            .services
            .iter()
            .filter(|s| cfg.service(&s.name).is_none())
            .map(|s| s.name.clone())
            .collect();
        for name in &removed {
            self.stop_task(name);
            if let Ok(id) = self.id(name) {
                self.dp.set_canary(id, 0)?;
            }
        }
        let ids = self.dp.apply(&services)?;
        let old = std::mem::replace(&mut self.cfg, cfg);
        self.ids = ids;
        self.reconcile(&services)?;
        self.save()?;
        let added: Vec<&str> = self
            .cfg
            .services
            .iter()
            .filter(|s| old.service(&s.name).is_none())
            .map(|s| s.name.as_str())
            .collect();
        let removed: Vec<&str> = old
            .services
            .iter()
            .filter(|s| self.cfg.service(&s.name).is_none())
            .map(|s| s.name.as_str())
            .collect();
        let summary = serde_json::json!({ "services": self.cfg.services.len(), "added": added, "removed": removed });
        self.emit(Event {
            at_ms: now_ms(),
            service: "*".into(),
            deployment: None,
            kind: "reload".into(),
            phase: None,
            actor: actor.to_string(),
            message: format!("config reloaded: {summary}"),
            evidence: None,
        });
        Ok(summary)
    }

    pub fn history(&self, service: &str) -> Result<Vec<Deployment>> {
        if self.cfg.service(service).is_none() && !self.state.history.contains_key(service) {
            bail!("no service named {service:?}");
        }
        let mut v: Vec<Deployment> = self.state.history.get(service).cloned().unwrap_or_default();
        if let Some(d) = self.current(service).cloned() {
            v.push(d);
        }
        Ok(v)
    }
}

/// Starts validation of the deployed candidate; returns its deployment id.
pub async fn promote(shared: &Shared, service: &str, actor: &str) -> Result<u64> {
    let mut c = shared.lock().await;
    let d =
        c.svc_state(service)?.current.clone().ok_or_else(|| {
            anyhow!("{service} has nothing deployed; run `switcher deploy` first")
        })?;
    if d.phase == Phase::Ready {
        // Already validated: flip now.
        drop(c);
        validate::flip_after_validation(shared, service, d.id).await?;
        return Ok(d.id);
    }
    c.step(
        service,
        Some(d.id),
        Step::StartValidation,
        actor,
        "promote requested",
        None,
    )?;
    c.save()?;
    let h = validate::spawn(shared, service, d.id);
    c.set_task(service, h);
    Ok(d.id)
}

/// Starts the watch of a deployment that was promoted by a manual flip.
pub async fn watch_promoted(shared: &Shared, service: &str) {
    watch::spawn(shared, service, false).await;
}

/// Waits until deployment `id` of `service` leaves validation (or the flip happened).
pub async fn wait_promoted(
    shared: &Shared,
    service: &str,
    id: u64,
    timeout: Duration,
) -> Result<Deployment> {
    let start = Instant::now();
    loop {
        let (d, mut rx) = {
            let c = shared.lock().await;
            let cur = c.current(service).cloned();
            let d = match cur {
                Some(d) if d.id == id => d,
                _ => c
                    .state
                    .history
                    .get(service)
                    .and_then(|h| h.iter().rev().find(|d| d.id == id).cloned())
                    .ok_or_else(|| anyhow!("deployment {id} disappeared"))?,
            };
            (d, c.subscribe())
        };
        match d.phase {
            Phase::Validating | Phase::Ready => {}
            Phase::Rejected => {
                let why = d.last().map_or(String::new(), |t| t.reason.clone());
                bail!("validation of deployment {id} failed: {why}");
            }
            Phase::Aborted => bail!("deployment {id} was aborted"),
            _ => return Ok(d),
        }
        let left = timeout
            .checked_sub(start.elapsed())
            .ok_or_else(|| anyhow!("timed out waiting for deployment {id}"))?;
        // Any event may be ours; re-check the state after each.
        let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), rx.recv()).await;
    }
}

/// Two services sharing a backend (address, port, protocol) would make reply translation
/// ambiguous.
fn backend_conflict(services: &[Service]) -> Option<String> {
    let mut seen: HashMap<(SocketAddr, crate::config::Protocol), &str> = HashMap::new();
    for s in services {
        for b in [s.blue, s.green].into_iter().flatten() {
            if let Some(other) = seen.insert((b, s.protocol), &s.name) {
                if other != s.name {
                    return Some(format!(
                        "{b}/{} would be a backend of both {other} and {}",
                        s.protocol, s.name
                    ));
                }
            }
        }
    }
    None
}

fn merge(a: Option<serde_json::Value>, b: serde_json::Value) -> serde_json::Value {
    match (a, b) {
        (Some(serde_json::Value::Object(mut a)), serde_json::Value::Object(b)) => {
            a.extend(b);
            serde_json::Value::Object(a)
        }
        (Some(a), b) => serde_json::json!({ "evidence": a, "more": b }),
        (None, b) => b,
    }
}
