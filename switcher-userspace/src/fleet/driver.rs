//! Fleet deployments: `deploy` puts the candidate into every host's idle slot; `promote`
//! makes this host the deployment's driver (the `driver/<service>` key under its lease, so
//! exactly one), asks every host to validate from its own vantage point, and writes the flip
//! only when every connected host passed. Every phase is recorded in the desired state, so
//! when a driver dies (its lease runs out) any host's agent takes the deployment over and
//! finishes it from the phase etcd has.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    etcd::{self, within},
    model::{config_hash, FleetDeployment, FleetPhase},
    writer::Revert,
    Desired, Fleet, FleetFlip, HostReport,
};
use crate::{
    config::Member,
    deploy::Phase,
    domain::{now_ms, Color},
};

/// How often a driver reads the hosts' verdicts.
const VERDICT_POLL: Duration = Duration::from_millis(100);

impl Fleet {
    /// Puts `members` into `color`'s slot on every host (the idle colour), as one fleet
    /// deployment; no traffic moves. Fails naming the hosts that could not take it.
    pub async fn deploy(
        &self,
        service: &str,
        color: Color,
        members: Vec<Member>,
        version: Option<String>,
        force: bool,
        actor: &str,
    ) -> Result<FleetFlip> {
        let mut client = self.client()?;
        let (read_rev, current) = self.read_desired(&mut client, service).await?;
        if current.active == color {
            bail!(
                "{color} is serving {service} on the fleet; deploy the new version to {}",
                color.other()
            );
        }
        if let Some(d) = current
            .deployment
            .as_ref()
            .filter(|d| d.phase == FleetPhase::Validating)
        {
            bail!(
                "fleet deployment {} of {service} is validating; wait for it",
                d.id
            );
        }
        // The definition every host will run once it took the candidate.
        let mut svc = self.local_service(service).await?;
        *svc.members_mut(color) = members.clone();
        let next = Desired {
            active: current.active,
            config_hash: config_hash(&svc),
            actor: format!("{actor}@{}", self.host()),
            reason: format!("deploy {}", crate::config::describe(&members)),
            at_ms: now_ms(),
            deployment: Some(FleetDeployment {
                id: format!("{read_rev}-{}", self.host()),
                color,
                members,
                version,
                force,
                phase: FleetPhase::Deployed,
                reason: String::new(),
            }),
            definition: current.definition.clone(),
        };
        self.commit(
            &mut client,
            service,
            read_rev,
            &current,
            next,
            "deploy",
            Revert::No,
            false,
        )
        .await
    }

    /// Drives the fleet deployment of `service`: every host validates, and the flip is
    /// written only if all passed. Answers once the fleet flipped (or did not, saying why).
    pub async fn promote(&self, service: &str, actor: &str) -> Result<FleetFlip> {
        let mut client = self.client()?;
        let (read_rev, current) = self.read_desired(&mut client, service).await?;
        let dep = current
            .deployment
            .clone()
            .filter(|d| d.phase == FleetPhase::Deployed)
            .ok_or_else(|| {
                anyhow!("{service} has no fleet deployment waiting to be promoted; run `switcher deploy` first")
            })?;
        self.become_driver(&mut client, service).await?;
        let result = async {
            let next = current
                .next(
                    format!("{actor}@{}", self.host()),
                    format!("promote {}: every host validates", dep.id),
                )
                .with_phase(FleetPhase::Validating, None);
            let (rev, _) = self
                .compare_and_write(
                    &mut client,
                    service,
                    read_rev,
                    &next,
                    current.active,
                    "promote",
                    true,
                )
                .await?;
            self.drive(&mut client, service, rev).await
        }
        .await;
        self.release_driver(&mut client, service).await;
        result
    }

    /// Ends the fleet deployment of `service` before its flip, on every host (a driver
    /// validating it stops at its next look).
    pub async fn abort(&self, service: &str, actor: &str) -> Result<FleetFlip> {
        let mut client = self.client()?;
        let (read_rev, current) = self.read_desired(&mut client, service).await?;
        let dep = current
            .deployment
            .clone()
            .filter(|d| d.phase.is_open())
            .ok_or_else(|| anyhow!("{service} has no fleet deployment in progress"))?;
        let next = current
            .next(
                format!("{actor}@{}", self.host()),
                format!("{} aborted", dep.id),
            )
            .with_phase(
                FleetPhase::Rejected,
                Some(format!("aborted by {actor} on {}", self.host())),
            );
        self.commit(
            &mut client,
            service,
            read_rev,
            &current,
            next,
            "abort",
            Revert::No,
            false,
        )
        .await
    }

    /// Takes the driver key of `service` under this host's lease; fails naming the driver.
    async fn become_driver(&self, client: &mut Client, service: &str) -> Result<()> {
        let lease = self
            .local()
            .lease
            .ok_or_else(|| anyhow!("this host holds no lease (not connected)"))?;
        let key = self.0.keys.driver(service);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.host(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = within(self.0.cfg.connect_timeout, client.txn(txn))
            .await
            .context("taking the driver key")?;
        if !resp.succeeded() {
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            bail!(
                "the fleet deployment of {service} is already driven by {}; wait for it, or \
                 for its lease to run out",
                holder.unwrap_or_else(|| "another host".into())
            );
        }
        self.local().driving.insert(service.to_string());
        Ok(())
    }

    async fn release_driver(&self, client: &mut Client, service: &str) {
        self.local().driving.remove(service);
        let key = self.0.keys.driver(service);
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, self.host())])
            .and_then([TxnOp::delete(key, None)]);
        if let Err(e) = within(self.0.cfg.connect_timeout, client.txn(txn)).await {
            // It goes with the lease anyway.
            warn!(service, "fleet: releasing the driver key: {e:#}");
        }
    }

    /// From phase `validating` (written at `rev`): waits for every connected host's verdict,
    /// then writes the flip (all passed) or the rejection (naming who failed).
    async fn drive(&self, client: &mut Client, service: &str, rev: i64) -> Result<FleetFlip> {
        let deadline = Instant::now() + self.0.cfg.promote_deadline;
        let failures = loop {
            let (read_rev, current) = self.read_desired(client, service).await?;
            let dep = current
                .deployment
                .clone()
                .filter(|d| d.phase == FleetPhase::Validating)
                .ok_or_else(|| {
                    anyhow!("the fleet deployment of {service} is no longer validating")
                })?;
            let (reports, _) = etcd::read_prefix::<HostReport>(
                client,
                &self.0.keys.hosts_prefix(),
                self.0.cfg.connect_timeout,
            )
            .await?;
            let verdicts = verdicts(&reports, service, &dep.id, rev);
            let failed: Vec<String> = verdicts
                .iter()
                .filter_map(|(h, v)| v.as_ref().err().map(|e| format!("{h}: {e}")))
                .collect();
            let waiting: Vec<&str> = verdicts
                .iter()
                .filter(|(_, v)| matches!(v, Ok(false)))
                .map(|(h, _)| h.as_str())
                .collect();
            if !failed.is_empty() {
                break failed;
            }
            if waiting.is_empty() && !verdicts.is_empty() {
                let mut next = current
                    .next(
                        current.actor.clone(),
                        format!("every host passed validation of {}", dep.id),
                    )
                    .with_phase(FleetPhase::Promoted, None);
                next.active = dep.color;
                info!(service, deployment = %dep.id, hosts = verdicts.len(), "fleet: every host passed; flipping the fleet");
                let mut flip = self
                    .commit(
                        client,
                        service,
                        read_rev,
                        &current,
                        next,
                        "promote",
                        Revert::RejectDeployment,
                        true,
                    )
                    .await?;
                flip.deployment = Some(dep.id.clone());
                return Ok(flip);
            }
            if Instant::now() >= deadline {
                break waiting
                    .iter()
                    .map(|h| format!("{h}: no verdict within {:?}", self.0.cfg.promote_deadline))
                    .collect();
            }
            tokio::time::sleep(VERDICT_POLL).await;
        };
        let (read_rev, current) = self.read_desired(client, service).await?;
        let why = format!("validation failed: {}", failures.join("; "));
        let next = current
            .next(current.actor.clone(), why.clone())
            .with_phase(FleetPhase::Rejected, Some(why));
        self.commit(
            client,
            service,
            read_rev,
            &current,
            next,
            "reject",
            Revert::No,
            true,
        )
        .await
        .context("recording the rejection")?;
        bail!(
            "the fleet did not flip {service}: validation failed on {} host(s): {}",
            failures.len(),
            failures.join("; ")
        )
    }
}

/// Per connected host: `Ok(true)` passed, `Ok(false)` still validating, `Err(why)` failed
/// (or refused the validating revision `rev`).
fn verdicts(
    reports: &[etcd::Entry<HostReport>],
    service: &str,
    fleet_id: &str,
    rev: i64,
) -> BTreeMap<String, Result<bool, String>> {
    reports
        .iter()
        .map(|e| {
            let s = e.value.services.get(service);
            let v = match s {
                None => Err("does not run this service".to_string()),
                Some(s) if s.nack.as_ref().is_some_and(|n| n.revision >= rev) => Err(format!(
                    "refused: {}",
                    s.nack.as_ref().map_or("", |n| n.error.as_str())
                )),
                Some(s) => match s.deployment.as_ref().filter(|d| d.fleet_id == fleet_id) {
                    Some(d) if d.phase == Phase::Ready => Ok(true),
                    // Rejected, aborted, or rolled back (a flip that was written back).
                    Some(d) if d.phase.is_final() => Err(d.reason.clone()),
                    _ => Ok(false),
                },
            };
            (e.name.clone(), v)
        })
        .collect()
}

/// Every fleet deployment left validating without a driver (its driver's lease ran out):
/// this host tries to take it over and finishes it from there.
pub(super) async fn take_over_orphans(f: &Fleet, client: &mut Client) -> Result<()> {
    let orphans: Vec<(String, i64)> = {
        let l = f.local();
        l.desired
            .iter()
            .filter(|(s, (_, d))| {
                !l.driving.contains(*s)
                    && d.deployment
                        .as_ref()
                        .is_some_and(|d| d.phase == FleetPhase::Validating)
            })
            .map(|(s, (rev, _))| (s.clone(), *rev))
            .collect()
    };
    for (service, rev) in orphans {
        let held = within(
            f.0.cfg.connect_timeout,
            client.get(
                f.0.keys.driver(&service),
                Some(etcd_client::GetOptions::new().with_count_only()),
            ),
        )
        .await?
        .count();
        if held > 0 || f.become_driver(client, &service).await.is_err() {
            continue;
        }
        info!(
            service,
            "fleet: the deployment's driver is gone; this host drives it on"
        );
        let (f, mut client) = (f.clone(), client.clone());
        tokio::spawn(async move {
            match f.drive(&mut client, &service, rev).await {
                Ok(r) => info!(
                    service,
                    revision = r.revision,
                    "fleet: the deployment taken over flipped the fleet"
                ),
                Err(e) => warn!(service, "fleet: the deployment taken over ended: {e:#}"),
            }
            f.release_driver(&mut client, &service).await;
        });
    }
    Ok(())
}
