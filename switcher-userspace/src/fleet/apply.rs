//! Applying one desired revision on this host: the fleet deployment's step (deploy the
//! candidate, validate it, abort it), then the service definition check, then the colour.
//! A revision that cannot be applied is refused (a NACK, with why) and the host keeps its
//! state.

use anyhow::{anyhow, bail, Result};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    definitions,
    model::{config_hash, FleetDeployment, FleetPhase, Nack},
    Desired, Fleet,
};
use crate::{deploy::Phase, domain::now_ms};

/// Applies revision `rev` of `service` unless it was applied already.
pub(super) async fn apply(f: &Fleet, service: &str, rev: i64, d: Desired) {
    {
        let mut l = f.local();
        l.desired.insert(service.to_string(), (rev, d.clone()));
        if l.applied.get(service).is_some_and(|&a| a >= rev) {
            return;
        }
    }
    let started = Instant::now();
    match apply_here(f, service, rev, &d).await {
        Ok(flipped) => {
            let mut l = f.local();
            l.applied.insert(service.to_string(), rev);
            l.apply_us
                .insert(service.to_string(), started.elapsed().as_micros() as u64);
            l.nacks.remove(service);
            l.overrides.remove(service);
            drop(l);
            f.persist();
            info!(service, revision = rev, active = %d.active, flipped, took_us = started.elapsed().as_micros() as u64, "fleet: applied");
        }
        Err(e) => {
            warn!(
                service,
                revision = rev,
                "fleet: refused the desired state, keeping the current one: {e:#}"
            );
            f.local().nacks.insert(
                service.to_string(),
                Nack {
                    revision: rev,
                    error: format!("{e:#}"),
                    at_ms: now_ms(),
                },
            );
        }
    }
}

/// Whether it flipped.
async fn apply_here(f: &Fleet, service: &str, rev: i64, d: &Desired) -> Result<bool> {
    let ctl = &f.0.ctl;
    let actor = format!("fleet:{}", d.actor);
    // Checked before anything changes: the fleet's definition, with the candidate this host
    // has yet to deploy, must be what the fleet runs (its hash), or the revision is refused
    // and this host stays as it is.
    // Compose, check and apply as one against a concurrent reload.
    let _config = f.0.config.lock().await;
    let (planned, adopt) = plan(f, service, d).await?;
    let here = config_hash(&planned);
    if here != d.config_hash {
        bail!(
            "the service config here ({here}) differs from the one the fleet runs ({}): load \
             the same config on every host",
            d.config_hash
        );
    }
    if let Some((cfg, overlay)) = adopt {
        ctl.apply_config(cfg, &actor).await?;
        if let Err(e) = definitions::save_overlay(&f.0.state_dir, &overlay) {
            warn!("fleet: saving the fleet's definitions (a restart without etcd would run the file's): {e:#}");
        }
        let mut l = f.local();
        if let Some(def) = overlay.get(service) {
            l.running.insert(service.to_string(), def.clone());
        }
        l.overlay = overlay;
        drop(l);
        info!(service, "fleet: runs the fleet's definition");
    }
    if let Some(dep) = &d.deployment {
        deployment_step(f, service, dep, &actor).await?;
    }
    let active = ctl.colour(service).await?;
    if active == d.active {
        return Ok(false);
    }
    // The flip to a candidate the fleet promoted: this host flips only to its own validated
    // one (a host that rejoins validates it first; one whose validation failed stays). Any
    // other flip is the fleet's forced decision, with its reason on record.
    let promoted = d
        .deployment
        .as_ref()
        .filter(|dep| dep.phase == FleetPhase::Promoted && dep.color == d.active);
    let validated = match promoted {
        None => false,
        Some(dep) => {
            let local = local_deployment(f, service, &dep.id).await;
            match local.as_ref().map(|l| l.phase) {
                Some(Phase::Ready) => true,
                Some(Phase::Deployed) => {
                    ctl.validate(service, &actor).await?;
                    bail!("validating {} here first: flips when it passes", dep.id);
                }
                // Cut short here (a restart aborts a running validation): deployed again and
                // validated afresh, never flipped to unvalidated.
                Some(Phase::Aborted) => {
                    redeploy(f, service, dep, &actor).await?;
                    ctl.validate(service, &actor).await?;
                    bail!("validating {} here again (its validation was cut short): flips when it passes", dep.id);
                }
                Some(Phase::Validating) => {
                    bail!("validating {} here first: flips when it passes", dep.id)
                }
                Some(_) => bail!(
                    "this host's own validation of {} failed ({}); it stays on {}",
                    dep.id,
                    local
                        .as_ref()
                        .and_then(|l| l.last())
                        .map_or("", |t| t.reason.as_str()),
                    active
                ),
                None => bail!("{} is not deployed here", dep.id),
            }
        }
    };
    ctl.flip(
        service,
        d.active,
        !validated,
        Some(format!("fleet revision {rev}: {}", d.reason)),
        &actor,
        crate::controller::Accepted::now(),
    )
    .await?;
    Ok(true)
}

/// Brings this host's side of fleet deployment `dep` to its phase.
async fn deployment_step(
    f: &Fleet,
    service: &str,
    dep: &FleetDeployment,
    actor: &str,
) -> Result<()> {
    let ctl = &f.0.ctl;
    let local = local_deployment(f, service, &dep.id).await;
    let serving = ctl.colour(service).await? == dep.color;
    match (dep.phase, local) {
        (FleetPhase::Rejected, Some(l))
            if matches!(l.phase, Phase::Deployed | Phase::Validating | Phase::Ready) =>
        {
            ctl.abort(service, actor).await?;
        }
        (FleetPhase::Rejected, _) => {}
        // Not here yet (a new deployment, or a host that rejoins): deploy it, unless the
        // candidate already serves here.
        (_, None) if !serving => {
            redeploy(f, service, dep, actor).await?;
            if dep.phase == FleetPhase::Validating {
                ctl.validate(service, actor).await?;
            }
        }
        (FleetPhase::Validating, Some(l)) if l.phase == Phase::Deployed => {
            ctl.validate(service, actor).await?;
        }
        (FleetPhase::Validating, Some(l)) if l.phase == Phase::Aborted => {
            redeploy(f, service, dep, actor).await?;
            ctl.validate(service, actor).await?;
        }
        _ => {}
    }
    Ok(())
}

/// What `service` would be here once `d` is applied, and the config to apply first when the
/// fleet's definition is not the one this host runs (with the overlay that gives it).
async fn plan(
    f: &Fleet,
    service: &str,
    d: &Desired,
) -> Result<(
    crate::config::Service,
    Option<(crate::config::Config, Overlay)>,
)> {
    let ctl = &f.0.ctl;
    let (services, adopt) = match &d.definition {
        Some(def) if f.definition(service).as_deref() != Some(def.as_str()) => {
            let mut overlay = f.local().overlay.clone();
            overlay.insert(service.to_string(), def.clone());
            let text = f.local().file_text.clone();
            let cfg = definitions::compose(&text, &overlay).map_err(|e| {
                anyhow!("the fleet's definition of {service} does not fit here: {e:#}")
            })?;
            (ctl.preview(&cfg).await, Some((cfg, overlay)))
        }
        _ => (ctl.effective_services().await, None),
    };
    let mut planned = services
        .into_iter()
        .find(|s| s.name == service)
        .ok_or_else(|| anyhow!("{service} is not configured on this host"))?;
    if let Some(dep) = d
        .deployment
        .as_ref()
        .filter(|d| d.phase != FleetPhase::Rejected)
    {
        let deployed_here = f
            .local()
            .deployments
            .get(service)
            .is_some_and(|(fid, _)| *fid == dep.id);
        let serving = ctl.colour(service).await? == dep.color;
        if !deployed_here && !serving {
            *planned.members_mut(dep.color) = dep.members.clone();
        }
    }
    Ok((planned, adopt))
}

type Overlay = std::collections::BTreeMap<String, String>;

/// This host's local deployment of fleet deployment `fleet_id`: the one it made for it, or
/// (after a restart lost the link, say) the open one of the same colour and pool, which it
/// then links.
async fn local_deployment(
    f: &Fleet,
    service: &str,
    fleet_id: &str,
) -> Option<crate::deploy::Deployment> {
    let ctl = &f.0.ctl;
    let mapped = f.local().deployments.get(service).cloned();
    if let Some((fid, lid)) = mapped {
        if fid == fleet_id {
            return ctl.deployment(service, lid).await;
        }
    }
    let desired = f.local().desired.get(service).cloned();
    let dep = desired
        .and_then(|(_, d)| d.deployment)
        .filter(|d| d.id == fleet_id)?;
    let open = ctl.current_deployment(service).await?;
    let same = open.color == dep.color && open.members == dep.members && !open.phase.is_final();
    if !same {
        return None;
    }
    f.local()
        .deployments
        .insert(service.to_string(), (fleet_id.to_string(), open.id));
    f.persist();
    Some(open)
}

/// Deploys fleet deployment `dep` here (again) and links it.
async fn redeploy(f: &Fleet, service: &str, dep: &FleetDeployment, actor: &str) -> Result<()> {
    let d =
        f.0.ctl
            .deploy(
                service,
                dep.color,
                dep.members.clone(),
                dep.version.clone(),
                dep.force,
                actor,
            )
            .await?;
    f.local()
        .deployments
        .insert(service.to_string(), (dep.id.clone(), d.id));
    f.persist();
    Ok(())
}
