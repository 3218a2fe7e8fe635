//! The controller's side of [`Host`]: the inputs its tasks read and the verdicts they
//! report, applied under the lock with the same checks as any operation (a task whose
//! deployment moved on meanwhile changes nothing).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Result};
use switcher_common::{ColorCounters, ShadowCounters};
use tracing::{error, warn};

use super::{
    catalog::CatalogEntry,
    core::Core,
    host::{Host, ValidationInputs, Verdict, WatchInputs},
    Controller, Event, AUTO,
};
use crate::{
    config::ShadowCheck,
    datapath::Shadow,
    deploy::Phase,
    domain::{ms_after, now_ms, Color},
    judge::{self, Round},
};

/// How long after its end the datapath keeps shadowing on its own (`until_ns`): the step
/// ends it long before, unless the daemon died.
const SHADOW_GRACE: Duration = Duration::from_secs(2);

impl Host for Controller {
    async fn validation_inputs(&self, service: &str, id: u64) -> Result<ValidationInputs> {
        let core = self.lock().await;
        let cfg = core.service_cfg(service)?;
        let st = core
            .state
            .services
            .get(service)
            .ok_or_else(|| anyhow!("no service {service}"))?;
        let d = st
            .current
            .as_ref()
            .filter(|d| d.id == id && d.phase == Phase::Validating)
            .ok_or_else(|| anyhow!("deployment {id} is gone"))?;
        Ok(ValidationInputs {
            checks: cfg.checks.clone(),
            protocol: cfg.protocol,
            candidate: d.members.clone(),
            serving: st.slot(st.active).members.clone(),
        })
    }

    /// Applies a validation's verdict: passed → trusted, flipped and watched; failed or
    /// unable to finish → rejected. Nothing if the deployment moved on meanwhile (aborted).
    async fn validation_finished(
        &self,
        service: &str,
        id: u64,
        verdict: Result<Verdict>,
    ) -> Result<()> {
        let mut core = self.lock().await;
        if !core.is_current(service, Some(id), Phase::Validating) {
            return Ok(());
        }
        let held = core.held.remove(service);
        match verdict {
            Ok(v) if v.failures.is_empty() && held => {
                core.pass_validation_held(service, id, v.evidence.into())
            }
            Ok(v) if v.failures.is_empty() => {
                core.pass_validation(service, id, v.evidence.into())?;
                self.spawn_watch(&mut core, service, false);
                Ok(())
            }
            Ok(v) => {
                core.reject_validation(service, id, &v.failures.join("; "), Some(v.evidence.into()))
            }
            Err(e) => {
                warn!(%service, deployment = id, "validation ended: {e:#}");
                // An error is no verdict: reject explicitly rather than stay "validating".
                let reason = format!("validation could not complete: {e:#}");
                core.reject_validation(service, id, &reason, None)
            }
        }
    }

    /// Starts deployment `id`'s canary at `share` (see [`crate::judge::canary_share`]) and
    /// returns the candidate's counters at that moment.
    async fn canary_begin(&self, service: &str, id: u64, share: u32) -> Result<ColorCounters> {
        let mut core = self.lock().await;
        if !core.is_current(service, Some(id), Phase::Validating) {
            bail!("deployment {id} of {service} is no longer validating");
        }
        let (svc, color) = (core.id(service)?, candidate(&core, service)?);
        core.dp.set_canary(svc, share)?;
        Ok(*core.dp.read(svc)?.counters(color))
    }

    /// Ends the canary and returns the candidate's counters at that moment.
    async fn canary_end(&self, service: &str) -> Result<ColorCounters> {
        let mut core = self.lock().await;
        let (svc, color) = (core.id(service)?, candidate(&core, service)?);
        core.dp.set_canary(svc, 0)?;
        Ok(*core.dp.read(svc)?.counters(color))
    }

    async fn shadow_begin(
        &self,
        service: &str,
        id: u64,
        shadow: &ShadowCheck,
    ) -> Result<ShadowCounters> {
        let mut core = self.lock().await;
        if !core.is_current(service, Some(id), Phase::Validating) {
            bail!("deployment {id} of {service} is no longer validating");
        }
        let (svc, color) = (core.id(service)?, candidate(&core, service)?);
        let until_ns = crate::datapath::monotonic_ns()?
            .saturating_add(u64::try_from(shadow.duration.as_nanos()).unwrap_or(u64::MAX))
            .saturating_add(SHADOW_GRACE.as_nanos() as u64);
        core.dp.set_shadow(
            svc,
            Some(Shadow {
                share: judge::shadow_share(shadow.percent),
                color,
                port: shadow.port,
                until_ns,
            }),
        )?;
        core.dp.shadow_counters(svc)
    }

    async fn shadow_end(&self, service: &str) -> Result<ShadowCounters> {
        let mut core = self.lock().await;
        let svc = core.id(service)?;
        core.dp.set_shadow(svc, None)?;
        core.dp.shadow_counters(svc)
    }

    /// The datapath counters of `service`'s colour `c`.
    async fn counters(&self, service: &str, c: Color) -> Result<ColorCounters> {
        let core = self.lock().await;
        Ok(*core.dp.read(core.id(service)?)?.counters(c))
    }

    /// A failed watch round: recorded as an event; the last one allowed rolls back. Returns
    /// whether the watch is over.
    async fn watch_round(&self, service: &str, id: u64, round: Round) -> Result<bool> {
        let Round::Failed {
            round,
            consecutive,
            allowed,
            failures,
            rollback,
        } = round
        else {
            return Ok(false);
        };
        let reason = failures.join("; ");
        let evidence = serde_json::json!({ "round": round, "consecutive_failures": consecutive, "failures": failures });
        let mut core = self.lock().await;
        core.out.emit(Event {
            at_ms: now_ms(),
            service: service.to_string(),
            deployment: Some(id),
            kind: "check".into(),
            phase: Some(Phase::Promoted),
            actor: AUTO.into(),
            message: format!("watch round {round} failed ({consecutive}/{allowed}): {reason}"),
            evidence: Some(evidence.clone()),
        });
        if rollback {
            core.fail_watch(
                service,
                Some(id),
                &format!("automatic rollback: {reason}"),
                Some(evidence),
            )?;
        }
        Ok(rollback)
    }

    /// The watch window passed cleanly: stable, and the previous colour stays warm for `warm`.
    async fn watch_passed(
        &self,
        service: &str,
        id: u64,
        rounds: u64,
        warm: Duration,
    ) -> Result<()> {
        self.lock().await.pass_watch(service, id, rounds, warm)
    }

    /// A watch that cannot watch is no data, and no data is a failure: roll back.
    async fn watch_failed(&self, service: &str, e: anyhow::Error) {
        warn!(%service, "watch ended: {e:#}");
        let reason = format!("automatic rollback: the watch failed: {e:#}");
        if let Err(e) = self.lock().await.fail_watch(service, None, &reason, None) {
            error!(%service, "rolling back after the watch failed: {e:#}");
        }
    }

    async fn watch_inputs(&self, service: &str, resumed: bool) -> Result<WatchInputs> {
        let mut core = self.lock().await;
        let cfg = core.service_cfg(service)?.clone();
        let st = core.svc_state(service)?;
        let d = st
            .current
            .as_mut()
            .filter(|d| d.phase == Phase::Promoted)
            .ok_or_else(|| anyhow!("{service} has no promoted deployment"))?;
        // A deployment promoted by an older daemon without a recorded window gets a full one.
        let until_ms = *d
            .watch_until_ms
            .get_or_insert(ms_after(now_ms(), cfg.checks.watch.window));
        let inputs = WatchInputs {
            id: d.id,
            until_ms,
            checks: cfg.checks,
            protocol: cfg.protocol,
            color: d.color,
            candidate: d.members.clone(),
        };
        if resumed {
            core.out.emit(Event {
                at_ms: now_ms(),
                service: service.to_string(),
                deployment: Some(inputs.id),
                kind: "watch".into(),
                phase: Some(Phase::Promoted),
                actor: AUTO.into(),
                message: format!(
                    "watch of deployment {} resumed after a daemon restart ({} ms left)",
                    inputs.id,
                    until_ms.saturating_sub(now_ms())
                ),
                evidence: None,
            });
        }
        Ok(inputs)
    }

    async fn catalog(&self) -> Arc<Vec<CatalogEntry>> {
        Controller::catalog(self).await
    }

    async fn member_health(
        &self,
        service: &str,
        color: Color,
        member: SocketAddr,
        up: bool,
    ) -> Result<()> {
        self.lock()
            .await
            .set_member_in_service(service, color, member, up)
    }
}

/// The colour of `service`'s open deployment.
fn candidate(core: &Core, service: &str) -> Result<Color> {
    core.current(service)
        .map(|d| d.color)
        .ok_or_else(|| anyhow!("{service} has no deployment in progress"))
}
