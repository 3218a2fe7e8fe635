//! What the controller's tasks decided, applied to the state: a validation passed (trusted,
//! then flipped) or rejected, a watch passed (stable, the previous colour kept warm) or
//! failed (rolled back). Each checks that the deployment is still the one the task worked on
//! (an operator may have moved it meanwhile) and does nothing otherwise.

use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::json;

use super::{core::Core, events::AUTO};
use crate::{
    deploy::{Phase, Step},
    domain::{ms_after, now_ms},
};

impl Core {
    /// Validation of deployment `id` passed: its colour is trusted and flipped to, its watch
    /// clock starts (the caller starts the watch).
    pub fn pass_validation(
        &mut self,
        service: &str,
        id: u64,
        evidence: serde_json::Value,
    ) -> Result<()> {
        self.mark_passed(service, id, "all checks passed", evidence)?;
        self.save()?;
        self.flip_validated(service, id)
    }

    /// A pass of a validation run for the fleet: ready and trusted, no flip (the fleet's
    /// driver writes it once every host passed).
    pub fn pass_validation_held(
        &mut self,
        service: &str,
        id: u64,
        evidence: serde_json::Value,
    ) -> Result<()> {
        self.mark_passed(
            service,
            id,
            "all checks passed; the fleet decides the flip",
            evidence,
        )?;
        self.forget_task(service);
        self.save()
    }

    /// Ready, and the candidate's slot known good.
    fn mark_passed(
        &mut self,
        service: &str,
        id: u64,
        why: &str,
        evidence: serde_json::Value,
    ) -> Result<()> {
        self.step(
            service,
            Some(id),
            Step::ValidationPassed,
            AUTO,
            why,
            Some(evidence),
        )?;
        let st = self.svc_state(service)?;
        if let Some(color) = st.current.as_ref().map(|d| d.color) {
            st.slot_mut(color).trusted = true;
        }
        Ok(())
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
            Some(json!({ "flip": out })),
        )?;
        self.start_watch_clock(service)?;
        self.forget_task(service);
        self.save()
    }

    /// Validation of deployment `id` failed (or could not finish): rejected, and its canary
    /// share ended. A share that cannot be cleared is named in the reason, never a reason to
    /// leave the deployment validating.
    pub fn reject_validation(
        &mut self,
        service: &str,
        id: u64,
        reason: &str,
        evidence: Option<serde_json::Value>,
    ) -> Result<()> {
        let mut reason = reason.to_string();
        if let Err(e) = self.clear_canary(service) {
            tracing::error!(%service, deployment = id, "clearing the canary share: {e:#}");
            reason.push_str(&format!("; clearing its canary share failed: {e:#}"));
        }
        self.step(
            service,
            Some(id),
            Step::ValidationFailed,
            AUTO,
            &reason,
            evidence,
        )?;
        self.finish(service)?;
        self.forget_task(service);
        self.save()
    }

    /// The watch window of deployment `id` passed after `rounds` clean rounds: stable, and the
    /// previous colour stays warm for `warm`.
    pub fn pass_watch(
        &mut self,
        service: &str,
        id: u64,
        rounds: u64,
        warm: Duration,
    ) -> Result<()> {
        if !self.is_current(service, Some(id), Phase::Promoted) {
            return Ok(());
        }
        let warm_until = ms_after(now_ms(), warm);
        self.step(
            service,
            Some(id),
            Step::WatchPassed,
            AUTO,
            "watch window passed",
            Some(json!({ "rounds": rounds, "warm_until_ms": warm_until })),
        )?;
        let st = self.svc_state(service)?;
        if let Some(d) = st.current.as_mut() {
            d.warm_until_ms = Some(warm_until);
            // It served through the whole window: known good, even if it was forced in.
            let color = d.color;
            st.slot_mut(color).trusted = true;
        }
        self.forget_task(service);
        self.save()
    }

    /// The watch of the promoted deployment (`id`, or whichever is promoted) failed: back to
    /// the previous colour, by the controller itself.
    pub fn fail_watch(
        &mut self,
        service: &str,
        id: Option<u64>,
        reason: &str,
        evidence: Option<serde_json::Value>,
    ) -> Result<()> {
        if !self.is_current(service, id, Phase::Promoted) {
            return Ok(());
        }
        // Forgotten first: the rollback would otherwise abort the calling task itself.
        self.forget_task(service);
        self.rollback(service, AUTO, reason, evidence).map(|_| ())
    }
}
