//! Where an operator's flip or rollback goes: the whole fleet in fleet mode, this host
//! otherwise. A change to this host alone in fleet mode is an emergency override: it needs
//! `--local --force --reason`, is audited in etcd, and shows as drift until the fleet agrees.
//! The socket and the dashboard both ask here.

use anyhow::{bail, Result};

use super::Fleet;
use crate::{
    config::Member,
    controller::{Accepted, Controller},
    domain::Color,
};

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
    accepted: Accepted,
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
            let now = ctl.colour(service).await?;
            f.record_override(service, now, actor, &reason);
            Ok(serde_json::to_value(d)?)
        }
        None => Ok(serde_json::to_value(ctl.rollback(service, actor).await?)?),
    }
}

/// A deploy: to every host's idle slot in fleet mode.
#[allow(clippy::too_many_arguments)]
pub async fn deploy(
    fleet: Option<&Fleet>,
    ctl: &Controller,
    service: &str,
    color: Color,
    members: Vec<Member>,
    version: Option<String>,
    force: bool,
    actor: &str,
) -> Result<serde_json::Value> {
    Ok(match fleet {
        Some(f) => serde_json::to_value(
            f.deploy(service, color, members, version, force, actor)
                .await?,
        )?,
        None => serde_json::to_value(
            ctl.deploy(service, color, members, version, force, actor)
                .await?,
        )?,
    })
}

/// A promote: in fleet mode this host drives the fleet deployment (every host validates, the
/// flip is written only if all passed). With `wait`, answers once it is decided.
pub async fn promote(
    fleet: Option<&Fleet>,
    ctl: &Controller,
    service: &str,
    wait: Option<std::time::Duration>,
    actor: &str,
) -> Result<serde_json::Value> {
    let Some(f) = fleet else {
        return Ok(serde_json::to_value(
            ctl.promote(service, actor, wait).await?,
        )?);
    };
    if wait.is_some() {
        return Ok(serde_json::to_value(f.promote(service, actor).await?)?);
    }
    let (f, name, who) = (f.clone(), service.to_string(), actor.to_string());
    tokio::spawn(async move {
        if let Err(e) = f.promote(&name, &who).await {
            tracing::warn!(service = %name, "fleet promote: {e:#}");
        }
    });
    Ok(serde_json::json!({ "phase": "validating", "driver": fleet.map(|f| f.host().to_string()) }))
}

/// An abort: of the fleet deployment on every host in fleet mode.
pub async fn abort(
    fleet: Option<&Fleet>,
    ctl: &Controller,
    service: &str,
    actor: &str,
) -> Result<serde_json::Value> {
    Ok(match fleet {
        Some(f) => serde_json::to_value(f.abort(service, actor).await?)?,
        None => serde_json::to_value(ctl.abort(service, actor).await?)?,
    })
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

/// A reload: in fleet mode, what changed in this host's file goes to the whole fleet.
pub async fn reload(
    fleet: Option<&Fleet>,
    ctl: &Controller,
    actor: &str,
) -> Result<serde_json::Value> {
    match fleet {
        Some(f) => f.reload(actor).await,
        None => Ok(serde_json::to_value(ctl.reload(actor).await?)?),
    }
}
