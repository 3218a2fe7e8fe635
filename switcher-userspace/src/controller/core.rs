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
use switcher_common::Endpoint;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::events::{Event, Outputs, AUTO};
use crate::{
    config::{Config, Service},
    datapath::{self, Datapath, FlipOutcome},
    deploy::{Deployment, Phase, Step},
    domain::{ms_after, now_ms, Color},
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
    /// Services whose validation runs for the fleet: a pass stops at `ready` (the fleet's
    /// driver decides the flip) instead of flipping here.
    pub held: std::collections::BTreeSet<String>,
    pub out: Outputs,
}

/// When a flip's map write started and when it returned.
#[derive(Debug, Clone, Copy)]
pub struct WriteTimes {
    pub started: Instant,
    pub written: Instant,
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
            held: Default::default(),
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

    /// A promoted deployment with no watch running (its watch could not roll back, say).
    pub fn is_promoted_unwatched(&self, service: &str) -> bool {
        !self.tasks.contains_key(service) && self.is_current(service, None, Phase::Promoted)
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
    ) -> Result<(FlipOutcome, WriteTimes)> {
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
        Ok((
            out,
            WriteTimes {
                started: start,
                written,
            },
        ))
    }

    /// Sets the watch window of a freshly promoted deployment.
    pub fn start_watch_clock(&mut self, service: &str) -> Result<()> {
        let window = self.service_cfg(service)?.checks.watch.window;
        let until = ms_after(now_ms(), window);
        if let Some(d) = self.svc_state(service)?.current.as_mut() {
            d.watch_until_ms = Some(until);
        }
        Ok(())
    }

    /// Ends the canary share and the shadow copies of `service` in the datapath.
    pub fn clear_canary(&mut self, service: &str) -> Result<()> {
        let id = self.id(service)?;
        self.dp.set_canary(id, 0)?;
        self.dp.set_shadow(id, None)
    }

    /// Takes a pool member out of its colour's table or puts it back (the health monitor's
    /// verdict), and says so when that changed anything.
    /// Lets go of members removed from their pool once no flow uses them (see
    /// [`Datapath::retire_drained`]), with an event for each.
    pub fn retire_drained(&mut self, unused: &[Endpoint], walked_at: Instant) -> Result<()> {
        for (id, member) in self.dp.retire_drained(unused, walked_at)? {
            let service = self
                .ids
                .iter()
                .find(|(_, v)| **v == id)
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| format!("service id {id}"));
            info!("{service}: removed member {member} drained: no connection uses it any more");
            self.out.emit(Event {
                at_ms: now_ms(),
                service,
                deployment: None,
                kind: "member".into(),
                phase: None,
                actor: AUTO.into(),
                message: format!(
                    "member {member}, removed from its pool, drained: its last connection is gone"
                ),
                evidence: None,
            });
        }
        Ok(())
    }

    pub fn set_member_in_service(
        &mut self,
        service: &str,
        color: Color,
        member: SocketAddr,
        up: bool,
    ) -> Result<()> {
        let id = self.id(service)?;
        if self.dp.set_member_in_service(id, color, member, up)? {
            self.out.emit(Event {
                at_ms: now_ms(),
                service: service.to_string(),
                deployment: None,
                kind: "member".into(),
                phase: None,
                actor: AUTO.into(),
                message: if up {
                    format!("{color} member {member} is healthy again: back in its pool's table")
                } else {
                    format!(
                        "{color} member {member} failed its health probes: out of its pool's \
                         table (its share of new flows moves; its connections stay)"
                    )
                },
                evidence: None,
            });
        }
        Ok(())
    }

    /// Ends every canary share and shadow copy in the datapath (validations are being
    /// stopped).
    /// Every service is tried even when one fails; the first error is returned.
    pub fn clear_canaries(&mut self) -> Result<()> {
        let ids: Vec<(String, u32)> = self.ids.iter().map(|(n, i)| (n.clone(), *i)).collect();
        let mut first = None;
        for (name, id) in ids {
            if let Err(e) = self.dp.set_canary(id, 0) {
                first.get_or_insert(e.context(format!("clearing the canary share of {name}")));
            }
            if let Err(e) = self.dp.set_shadow(id, None) {
                first.get_or_insert(e.context(format!("ending the shadow copies of {name}")));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Programs `services` into the datapath, all or nothing: when a map write fails midway,
    /// what is programmed now (the effective services of the current state and config) is
    /// written back before the error is returned. Call it before changing the state.
    pub fn apply_services(&mut self, services: &[Service]) -> Result<()> {
        match self.dp.apply(services) {
            Ok(ids) => {
                self.ids = ids;
                Ok(())
            }
            Err(e) => {
                let previous = self.state.effective(&self.cfg);
                match self.dp.apply(&previous) {
                    Ok(ids) => {
                        self.ids = ids;
                        Err(e.context("nothing applied: the datapath was restored"))
                    }
                    Err(r) => Err(e.context(format!(
                        "restoring the datapath after that failed too ({r:#}): restart the daemon"
                    ))),
                }
            }
        }
    }

    /// Tells the datapath which interfaces accept redirected frames.
    pub fn set_redirect_targets(&mut self, targets: &[u32]) {
        if let Err(e) = self.dp.set_redirect_targets(targets) {
            warn!("updating redirect targets: {e:#}");
        }
    }

    /// Lets go of the datapath: the controller can do nothing with it afterwards.
    pub fn close_datapath(&mut self, keep_attached: bool) -> Result<()> {
        let dp = std::mem::replace(&mut self.dp, Box::new(datapath::Closed));
        dp.close(keep_attached)
    }
}
