//! Where an operator's flip or rollback goes: the whole fleet in fleet mode, this host
//! otherwise. A change to this host alone in fleet mode is an emergency override: it needs
//! `--local --force --reason`, is audited in etcd, and shows as drift until the fleet agrees.
//! The socket and the dashboard both ask here.

use std::time::Instant;

use anyhow::{bail, Result};

use super::Fleet;
use crate::{controller::Controller, domain::Color};

/// A flip of `service` to `to`.
#[allow(clippy::too_many_arguments)]
pub async fn flip(
    fleet: Option<&Fleet>,
    ctl: &Controller,
    service: &str,
    to: Color,
    force: bool,
    reason: Option<String>,
    local: bool,
    actor: &str,
    accepted: Instant,
) -> Result<serde_json::Value> {
    match fleet {
        Some(f) if !local => Ok(serde_json::to_value(
            f.flip(service, to, force, reason, actor).await?,
        )?),
        Some(f) => {
            let reason = override_reason(force, reason)?;
            let r = ctl
                .flip(service, to, true, Some(reason.clone()), actor, accepted)
                .await?;
            f.record_override(service, to, actor, &reason);
            Ok(serde_json::to_value(r)?)
        }
        None => Ok(serde_json::to_value(
            ctl.flip(service, to, force, reason, actor, accepted)
                .await?,
        )?),
    }
}

/// A rollback of `service` to its previous colour.
pub async fn rollback(
    fleet: Option<&Fleet>,
    ctl: &Controller,
    service: &str,
    force: bool,
    reason: Option<String>,
    local: bool,
    actor: &str,
) -> Result<serde_json::Value> {
    match fleet {
        Some(f) if !local => Ok(serde_json::to_value(f.rollback(service, actor).await?)?),
        Some(f) => {
            let reason = override_reason(force, reason)?;
            let d = ctl.rollback(service, actor).await?;
            let now = ctl.status(Some(service)).await?.services[0].active;
            f.record_override(service, now, actor, &reason);
            Ok(serde_json::to_value(d)?)
        }
        None => Ok(serde_json::to_value(ctl.rollback(service, actor).await?)?),
    }
}

/// Refuses what fleet mode does not do yet on one host's word.
pub fn refuse_in_fleet(fleet: Option<&Fleet>, what: &str) -> Result<()> {
    if let Some(f) = fleet {
        bail!(
            "{what} is not fleet-wide yet (fleet {}): validate the candidate, then `switcher \
             flip SERVICE --to COLOUR` flips every host and waits for each one's \
             acknowledgement",
            f.0.cfg.cluster
        );
    }
    Ok(())
}

fn override_reason(force: bool, reason: Option<String>) -> Result<String> {
    match reason.filter(|r| !r.trim().is_empty()) {
        Some(r) if force => Ok(r),
        _ => bail!(
            "in fleet mode a change to this host alone is an emergency override: it needs \
             --local --force --reason TEXT (the reason is audited, and the host shows as drift \
             until the fleet agrees)"
        ),
    }
}
