//! The controller's state and the one place its transitions happen: every operation checks,
//! writes the datapath, steps the deployment, records, saves and emits here, under the
//! controller's lock. Synchronous: long work (probes, load runs) happens in tasks, which
//! report their verdicts back through the controller's API.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::task::AbortHandle;
use tracing::warn;

use super::{
    events::{Event, Outputs, AUTO},
    view::{ColorView, DeploymentView, FlipStatus, ServiceView, StatusView},
};
use crate::{
    config::{backend_conflicts, Config, Service},
    datapath::{self, Datapath, FlipOutcome},
    deploy::{self, Deployment, Phase, Step},
    domain::{fmt_time, now_ms, Color},
    state::{ServiceState, State},
};

pub(super) struct Core {
    pub dp: Box<dyn Datapath>,
    pub cfg: Config,
    pub cfg_path: PathBuf,
    pub state: State,
    /// Service name → datapath id.
    pub ids: BTreeMap<String, u32>,
    /// The validation or watch task of each service.
    tasks: HashMap<String, AbortHandle>,
    pub out: Outputs,
}

/// What a manual flip did, and whether it promoted a deployment (whose watch must start).
pub(super) struct Flipped {
    pub outcome: FlipOutcome,
    pub written: Instant,
    pub promoted: bool,
}

impl Core {
    pub fn new(
        dp: Box<dyn Datapath>,
        cfg: Config,
        cfg_path: PathBuf,
        state: State,
        ids: BTreeMap<String, u32>,
        out: Outputs,
    ) -> Self {
        Self {
            dp,
            cfg,
            cfg_path,
            state,
            ids,
            tasks: HashMap::new(),
            out,
        }
    }

    pub fn id(&self, service: &str) -> Result<u32> {
        self.ids
            .get(service)
            .copied()
            .ok_or_else(|| anyhow!("no service named {service:?}"))
    }

    pub fn service_cfg(&self, service: &str) -> Result<&Service> {
        self.cfg
            .service(service)
            .ok_or_else(|| anyhow!("no service named {service:?}"))
    }

    pub fn svc_state(&mut self, service: &str) -> Result<&mut ServiceState> {
        self.state
            .services
            .get_mut(service)
            .ok_or_else(|| anyhow!("no service named {service:?}"))
    }

    /// The deployment in progress of `service`, if any.
    pub fn current(&self, service: &str) -> Option<&Deployment> {
        self.state
            .services
            .get(service)
            .and_then(|s| s.current.as_ref())
    }

    /// Whether `service`'s current deployment is `id` (any id when `None`) in `phase`: a task
    /// checks this before acting, since an operator may have moved the deployment meanwhile.
    pub fn is_current(&self, service: &str, id: Option<u64>, phase: Phase) -> bool {
        self.current(service)
            .is_some_and(|d| d.phase == phase && id.is_none_or(|id| id == d.id))
    }

    pub fn save(&self) -> Result<()> {
        self.out.changed();
        self.state
            .save(&self.cfg.daemon.state_dir)
            .context("persisting state")
    }

    // ---- tasks ----

    pub fn set_task(&mut self, service: &str, h: AbortHandle) {
        self.stop_task(service);
        self.tasks.insert(service.to_string(), h);
    }

    pub fn stop_task(&mut self, service: &str) {
        if let Some(t) = self.tasks.remove(service) {
            t.abort();
        }
    }

    /// Drops the handle of the task that is calling (it is finishing by itself).
    pub fn forget_task(&mut self, service: &str) {
        self.tasks.remove(service);
    }

    pub fn abort_tasks(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
    }

    // ---- the transitions ----

    /// Applies `step` to the current deployment of `service` if it is still deployment `id`,
    /// records it in the metrics and emits it.
    pub fn step(
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
        if let Some(id) = id.filter(|id| *id != d.id) {
            bail!("deployment {id} of {service} was replaced");
        }
        let phase = d.apply(step, actor, reason, evidence, now_ms())?;
        let d = d.clone();
        let recorded = &self.out.recorded;
        match step {
            Step::ValidationPassed => recorded.validation(service, true),
            Step::ValidationFailed => recorded.validation(service, false),
            Step::Rollback => recorded.rollback(service, actor == AUTO),
            _ => {}
        }
        self.out.transition(&d);
        Ok(phase)
    }

    /// The current deployment for the reply; after a final step it moves to the history.
    pub fn finish(&mut self, service: &str) -> Result<Deployment> {
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

    /// The one map write, plus state, metrics and event. Returns when the write returned.
    pub fn flip_datapath(
        &mut self,
        service: &str,
        to: Color,
        actor: &str,
        why: &str,
    ) -> Result<(FlipOutcome, Instant)> {
        let id = self.id(service)?;
        let start = Instant::now();
        let out = self
            .dp
            .flip(id, to)
            .with_context(|| format!("flipping {service} to {to}"))?;
        let written = Instant::now();
        if out.changed {
            self.out.recorded.flip(
                service,
                &to.to_string(),
                written.duration_since(start).as_secs_f64(),
            );
        }
        let st = self.svc_state(service)?;
        st.active = to;
        st.generation = out.generation;
        if out.changed {
            self.out.emit(Event {
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
        Ok((out, written))
    }

    /// Sets the watch window of a freshly promoted deployment.
    pub fn start_watch_clock(&mut self, service: &str) -> Result<()> {
        let window = self.service_cfg(service)?.checks.watch.window;
        let until = now_ms() + window.as_millis() as u64;
        if let Some(d) = self.svc_state(service)?.current.as_mut() {
            d.watch_until_ms = Some(until);
        }
        Ok(())
    }

    /// Ends the canary share of `service` in the datapath.
    pub fn clear_canary(&mut self, service: &str) -> Result<()> {
        let id = self.id(service)?;
        self.dp.set_canary(id, 0)
    }

    /// Ends every canary share in the datapath (validations are being stopped).
    pub fn clear_canaries(&mut self) -> Result<()> {
        let ids: Vec<u32> = self.ids.values().copied().collect();
        for id in ids {
            self.dp.set_canary(id, 0)?;
        }
        Ok(())
    }

    /// Re-programs the datapath with the effective services (after a deploy or a reload).
    pub fn apply_services(&mut self) -> Result<Vec<Service>> {
        let services = self.state.effective(&self.cfg);
        self.ids = self.dp.apply(&services)?;
        Ok(services)
    }

    /// Tells the datapath which interfaces accept redirected frames.
    pub fn set_redirect_targets(&mut self, targets: &[u32]) {
        if let Err(e) = self.dp.set_redirect_targets(targets) {
            warn!("updating redirect targets: {e:#}");
        }
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
        let mut planned = self.state.effective(&self.cfg);
        if let Some(s) = planned.iter_mut().find(|s| s.name == service) {
            *s.backend_mut(color) = Some(backend);
        }
        if let Some(conflict) = backend_conflicts(&planned).first() {
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
        let open = self.dp.census()?.pinned(self.id(service)?, color);
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
        slot.trusted = false;
        if let Some(old) = st.current.replace(d.clone()) {
            self.state.archive(old);
        }
        self.apply_services()?;
        self.save()?;
        self.out.transition(&d);
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
        self.clear_canary(service)?;
        let d = self.finish(service)?;
        self.save()?;
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
        deploy::next(d.phase, Step::Rollback)?;
        if let Some(until) = d.warm_until_ms {
            if now_ms() > until {
                bail!(
                    "{} is no longer kept warm (since {}); deploy it again instead",
                    d.previous,
                    fmt_time(until)
                );
            }
        }
        let (previous, candidate, id) = (d.previous, d.color, d.id);
        if st.slot(previous).backend.is_none() {
            bail!("{previous} has no backend to roll back to");
        }
        self.stop_task(service);
        let (out, _) = self.flip_datapath(service, previous, actor, reason)?;
        self.step(
            service,
            Some(id),
            Step::Rollback,
            actor,
            reason,
            Some(merge(evidence, serde_json::json!({ "flip": out }))),
        )?;
        // The candidate failed in production: a manual flip back to it needs --force again.
        self.svc_state(service)?.slot_mut(candidate).trusted = false;
        let d = self.finish(service)?;
        self.save()?;
        Ok(d)
    }

    /// Manual flip. Refuses a colour that is not known good unless forced. A flip to the
    /// candidate of the current deployment promotes it; a flip back rolls it back.
    pub fn flip(
        &mut self,
        service: &str,
        to: Color,
        force: bool,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Flipped> {
        if force && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            bail!("--force needs --reason TEXT: the reason is recorded");
        }
        let st = self.svc_state(service)?.clone();
        if st.active == to {
            let (outcome, written) = self.flip_datapath(service, to, actor, "already active")?;
            return Ok(Flipped {
                outcome,
                written,
                promoted: false,
            });
        }
        let slot = st.slot(to);
        if slot.backend.is_none() {
            bail!("{to} has no backend");
        }
        let current = st.current.as_ref();
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
        if !slot.trusted && !force && step != Some(Step::Flip { forced: false }) {
            bail!(
                "{to} ({}) has not been validated; promote it, or flip with --force --reason TEXT",
                slot.backend.map_or("-".into(), |b| b.to_string())
            );
        }
        if let (Some(step), Some(d)) = (step, current) {
            deploy::next(d.phase, step)?;
        }
        let why = reason.clone().unwrap_or_else(|| "manual flip".into());
        let (outcome, written) = self.flip_datapath(service, to, actor, &why)?;
        let mut promoted = false;
        if let (Some(step), Some(d)) = (step, current) {
            self.stop_task(service);
            self.step(
                service,
                Some(d.id),
                step,
                actor,
                &why,
                Some(serde_json::json!({ "flip": outcome, "forced": force })),
            )?;
            if step == (Step::Flip { forced: force }) {
                self.start_watch_clock(service)?;
                promoted = true;
            } else {
                // Flipping back by hand is a rollback: the candidate is no longer trusted.
                self.svc_state(service)?.slot_mut(to.other()).trusted = false;
            }
            self.finish(service)?;
        }
        self.save()?;
        Ok(Flipped {
            outcome,
            written,
            promoted,
        })
    }

    /// The flip of a deployment whose validation passed (phase ready), and its watch clock.
    pub fn flip_validated(&mut self, service: &str, id: u64) -> Result<()> {
        let d = self
            .current(service)
            .cloned()
            .filter(|d| d.id == id && d.phase == Phase::Ready)
            .ok_or_else(|| anyhow!("deployment {id} is no longer ready"))?;
        let (out, _) = self.flip_datapath(service, d.color, AUTO, "validated: promoting")?;
        self.step(
            service,
            Some(id),
            Step::Flip { forced: false },
            AUTO,
            "flipped after validation",
            Some(serde_json::json!({ "flip": out })),
        )?;
        self.start_watch_clock(service)?;
        self.forget_task(service);
        self.save()
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

    /// Deployment `id` of `service`, open or finished.
    pub fn deployment(&self, service: &str, id: u64) -> Option<Deployment> {
        match self.current(service) {
            Some(d) if d.id == id => Some(d.clone()),
            _ => self
                .state
                .history
                .get(service)
                .and_then(|h| h.iter().rev().find(|d| d.id == id).cloned()),
        }
    }

    pub fn status(&self, only: Option<&str>) -> Result<StatusView> {
        let census = self.dp.census()?;
        let mut services = Vec::new();
        for s in self.state.effective(&self.cfg) {
            if only.is_some_and(|n| n != s.name) {
                continue;
            }
            let (Some(&id), Some(st)) = (self.ids.get(&s.name), self.state.services.get(&s.name))
            else {
                continue;
            };
            let r = self.dp.read(id)?;
            let color = |c: Color| ColorView::new(st.slot(c), &r, c, census.pinned(id, c), None);
            services.push(ServiceView {
                vip: s.vip.to_string(),
                port: s.port,
                protocol: s.protocol.to_string(),
                active: r.active_color(),
                generation: r.active.generation(),
                blue: color(Color::Blue),
                green: color(Color::Green),
                last_flip: FlipStatus::of(&r),
                deployment: st.current.as_ref().map(DeploymentView::of),
                name: s.name,
            });
        }
        if let Some(n) = only {
            if services.is_empty() {
                bail!("no service named {n:?}");
            }
        }
        Ok(StatusView {
            services,
            reasons: self
                .dp
                .reasons()?
                .into_iter()
                .map(|(r, n)| (r.label().to_string(), n))
                .collect(),
            flows: census.entries as usize,
        })
    }

    /// Lets go of the datapath: the controller can do nothing with it afterwards.
    pub fn close_datapath(&mut self, keep_attached: bool) -> Result<()> {
        let dp = std::mem::replace(&mut self.dp, Box::new(datapath::Closed));
        dp.close(keep_attached)
    }
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
