//! The operations an operator asks for, on the controller's state: deploy, abort, rollback,
//! a manual flip, and the reads (status, history). Each checks everything before it writes
//! anything, then writes the datapath, steps the deployment, saves and emits.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

use super::{
    core::Core,
    retiring::Retiring,
    view::{ColorView, DeploymentView, FlipStatus, MemberView, ServiceView, StatusView},
};
use crate::{
    config::{backend_conflicts, check_pool, describe, Member},
    datapath::FlipOutcome,
    deploy::{self, Deployment, Phase, Step},
    domain::{fmt_time, now_ms, Color, Protocol},
};

/// What a manual flip did, and whether it promoted a deployment (whose watch must start).
pub(super) struct Flipped {
    pub outcome: FlipOutcome,
    pub times: super::core::WriteTimes,
    pub promoted: bool,
}

impl Core {
    pub fn deploy(
        &mut self,
        service: &str,
        color: Color,
        members: Vec<Member>,
        version: Option<String>,
        force: bool,
        actor: &str,
    ) -> Result<Deployment> {
        let cfg = self.service_cfg(service)?.clone();
        check_pool(&members).map_err(|(_, e)| anyhow!("{e}"))?;
        if let Some(m) = members
            .iter()
            .find(|m| m.addr.is_ipv4() != cfg.vip.is_ipv4())
        {
            bail!(
                "{} is not the address family of the VIP {}",
                m.addr,
                cfg.vip
            );
        }
        let mut planned = self.state.effective(&self.cfg);
        if let Some(s) = planned.iter_mut().find(|s| s.name == service) {
            *s.members_mut(color) = members.clone();
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
        // Connections still draining on the idle colour stay on their members (the flow table
        // names them), so those nodes must outlive the deploy: replacing the environment now
        // invites stopping them under live connections.
        let open = self.dp.census()?.pinned(self.id(service)?, color);
        if open > 0 && !force {
            bail!(
                "{open} TCP connection(s) of {service} are still pinned to {color} and draining \
                 on its current members; they stay there after a deploy, so stopping those nodes \
                 would break them: wait for them to close, or deploy with --force"
            );
        }
        // The datapath first, all or nothing: the state changes only once it took the pool.
        self.apply_services(&planned)?;
        let id = self.state.allocate_id();
        let d = Deployment::new(
            id,
            service,
            color,
            members.clone(),
            version.clone(),
            actor,
            now_ms(),
        );
        let st = self.svc_state(service)?;
        let slot = st.slot_mut(color);
        slot.members = members;
        slot.deployed = true;
        slot.version = version;
        slot.trusted = false;
        if let Some(old) = st.current.replace(d.clone()) {
            self.state.archive(old);
        }
        self.save()?;
        self.out.transition(&d);
        Ok(d)
    }

    pub fn abort(&mut self, service: &str, actor: &str) -> Result<Deployment> {
        let d = self
            .current(service)
            .ok_or_else(|| anyhow!("{service} has no deployment in progress"))?;
        deploy::next(d.phase, Step::Abort)?;
        // A canary share must not outlive its validation: ended before anything is recorded.
        self.stop_task(service);
        self.held.remove(service);
        self.clear_canary(service)?;
        self.step(
            service,
            None,
            Step::Abort,
            actor,
            "aborted by operator",
            None,
        )?;
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
        if st.slot(previous).members.is_empty() {
            bail!("{previous} has no backend to roll back to");
        }
        self.stop_task(service);
        let (out, _) = self.flip_datapath(service, previous, actor, reason)?;
        // UDP senders with affinity move back at once too, not when they next idle.
        let svc = self.id(service)?;
        self.dp
            .void_affinity(svc)
            .with_context(|| format!("moving {service}'s UDP affinity back"))?;
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
            let (outcome, times) = self.flip_datapath(service, to, actor, "already active")?;
            return Ok(Flipped {
                outcome,
                times,
                promoted: false,
            });
        }
        let slot = st.slot(to);
        if slot.members.is_empty() {
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
                describe(&slot.members)
            );
        }
        if let (Some(step), Some(d)) = (step, current) {
            deploy::next(d.phase, step)?;
        }
        let why = reason.clone().unwrap_or_else(|| "manual flip".into());
        let (outcome, times) = self.flip_datapath(service, to, actor, &why)?;
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
                // Flipping back by hand is a rollback: the candidate is no longer trusted, and
                // UDP senders with affinity move back at once.
                self.svc_state(service)?.slot_mut(to.other()).trusted = false;
                let svc = self.id(service)?;
                self.dp.void_affinity(svc)?;
            }
            self.finish(service)?;
        }
        self.save()?;
        Ok(Flipped {
            outcome,
            times,
            promoted,
        })
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
        // Flip marks are kernel monotonic times; status speaks wall-clock time.
        let (now_ms, mono_ms) = (now_ms(), crate::datapath::monotonic_ns()? / 1_000_000);
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
            let color = |c: Color| -> Result<ColorView> {
                let slot = st.slot(c);
                let members =
                    MemberView::join(&slot.members, &self.dp.members(id, c)?, &census, &[]);
                Ok(ColorView::new(slot, &r, c, census.pinned(id, c), members))
            };
            let active = r.active_color();
            let left = active.other();
            // Retiring: the colour a flip left, while it keeps its collectors (a deployment
            // into its slot replaced them).
            let replaced = st.current.as_ref().is_some_and(|d| {
                d.color == left
                    && matches!(d.phase, Phase::Deployed | Phase::Validating | Phase::Ready)
            });
            let retiring = (r.mark.flip_ns != 0 && !st.slot(left).members.is_empty() && !replaced)
                .then(|| {
                    let since_ms =
                        now_ms.saturating_sub(mono_ms.saturating_sub(r.mark.flip_ns / 1_000_000));
                    let steering = match s.protocol {
                        Protocol::Tcp => s.drain,
                        Protocol::Udp if s.udp_affinity_idle.is_some() => s.udp_affinity_max_age,
                        Protocol::Udp => Duration::ZERO,
                    };
                    Retiring::judge(
                        left,
                        since_ms,
                        census.pinned(id, left),
                        u64::try_from(steering.as_millis()).unwrap_or(u64::MAX),
                        s.retire_after
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        now_ms,
                    )
                });
            services.push(ServiceView {
                retiring,
                vip: s.vip.to_string(),
                port: s.port,
                protocol: s.protocol.to_string(),
                active,
                generation: r.active.generation(),
                blue: color(Color::Blue)?,
                green: color(Color::Green)?,
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
}

pub(super) fn merge(a: Option<serde_json::Value>, b: serde_json::Value) -> serde_json::Value {
    match (a, b) {
        (Some(serde_json::Value::Object(mut a)), serde_json::Value::Object(b)) => {
            a.extend(b);
            serde_json::Value::Object(a)
        }
        (Some(a), b) => serde_json::json!({ "evidence": a, "more": b }),
        (None, b) => b,
    }
}
