//! Fleet-wide flips and rollbacks: the desired state is written by a transaction that
//! compares the revision it read (two operators never lose each other's write; the loser is
//! told), then every connected host's acknowledgement of that revision is awaited. A flip
//! some host refuses or does not acknowledge in time is written back, fleet-wide.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context as _, Result};
use etcd_client::{
    Client, Compare, CompareOp, EventType, TxnOp, TxnOpResponse, WatchOptions, WatchResponseStream,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    etcd::{self, within},
    model::{config_hash, FleetPhase},
    AuditEntry, Desired, Fleet, HostReport,
};
use crate::domain::{now_ms, Color};

/// What a fleet flip or rollback did, host by host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetFlip {
    pub service: String,
    pub from: Color,
    pub to: Color,
    /// The desired revision written (the one read, when nothing changed).
    pub revision: i64,
    pub changed: bool,
    /// Every host connected when the revision was written.
    pub hosts: Vec<HostAck>,
    /// Hosts that joined the fleet once but had no live lease: not waited for.
    pub excluded: Vec<String>,
    /// From the write's commit to the last acknowledgement, on this host's clock.
    pub ack_ms: f64,
    /// The write itself: the transaction's round trip to etcd (its commit, fsync included).
    #[serde(default)]
    pub write_ms: f64,
    /// The revision that put the fleet back, when this flip failed somewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<i64>,
    /// A promotion's flip: the fleet deployment it promoted (what `promote --wait` follows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostAck {
    pub host: String,
    /// `applied`, `refused` (a NACK: it kept its state), `missed` (no answer by the
    /// deadline) or `lost` (its lease expired while we waited).
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Color>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When its acknowledgement was seen, from the write's commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_ms: Option<f64>,
    /// What the host says applying it took (its watch event to its map write, its clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_us: Option<u64>,
}

/// What a failed fleet change writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Revert {
    /// Nothing: the failure is reported (deploys, rollbacks, publishes).
    No,
    /// The desired state as it was (a flip).
    ToCurrent,
    /// As it was, with its fleet deployment rejected (a promote's flip).
    RejectDeployment,
}

impl HostAck {
    fn failed(&self) -> bool {
        matches!(self.result.as_str(), "refused" | "missed")
    }
}

impl FleetFlip {
    pub(super) fn unchanged(service: &str, to: Color, revision: i64) -> Self {
        FleetFlip {
            service: service.to_string(),
            from: to,
            to,
            revision,
            changed: false,
            hosts: Vec::new(),
            excluded: Vec::new(),
            ack_ms: 0.0,
            write_ms: 0.0,
            rolled_back: None,
            deployment: None,
        }
    }

    /// `host result: error` of every host that refused or missed.
    pub(super) fn failures(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.failed())
            .map(|h| match &h.error {
                Some(e) => format!("{} {}: {e}", h.host, h.result),
                None => format!("{} {}", h.host, h.result),
            })
            .collect()
    }
}

impl Fleet {
    /// Flips `service` to `to` on every host. A colour this host does not trust needs
    /// `force` and a reason, as a local flip does.
    pub async fn flip(
        &self,
        service: &str,
        to: Color,
        force: bool,
        reason: Option<String>,
        actor: &str,
    ) -> Result<FleetFlip> {
        if force && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            bail!("--force needs --reason TEXT: the reason is recorded");
        }
        if !force {
            let view = self.0.ctl.status(Some(service)).await?;
            let slot = if to == Color::Blue {
                &view.services[0].blue
            } else {
                &view.services[0].green
            };
            if !slot.trusted && view.services[0].active != to {
                bail!(
                    "{to} of {service} has not been validated on this host; flip with --force \
                     --reason TEXT"
                );
            }
        }
        let why = reason.unwrap_or_else(|| "manual flip".into());
        self.write_and_wait(service, Some(to), actor, &why, "flip", Revert::ToCurrent)
            .await
    }

    /// Back to the other colour on every host at once.
    pub async fn rollback(&self, service: &str, actor: &str) -> Result<FleetFlip> {
        self.write_and_wait(
            service,
            None,
            actor,
            "rollback requested",
            "rollback",
            Revert::No,
        )
        .await
    }

    /// The whole fleet to `to` because this host's watch rolled back there by itself.
    pub(super) async fn follow(
        &self,
        service: &str,
        to: Color,
        actor: &str,
        reason: &str,
    ) -> Result<FleetFlip> {
        self.write_and_wait(
            service,
            Some(to),
            actor,
            reason,
            "watch-rollback",
            Revert::No,
        )
        .await
    }

    /// `to`: None for "the other colour than desired now".
    async fn write_and_wait(
        &self,
        service: &str,
        to: Option<Color>,
        actor: &str,
        reason: &str,
        action: &str,
        revert: Revert,
    ) -> Result<FleetFlip> {
        let mut client = self.client()?;
        let (read_rev, current) = self.read_desired(&mut client, service).await?;
        let to = to.unwrap_or(current.active.other());
        let hash = config_hash(&self.local_service(service).await?);
        if current.active == to && current.config_hash == hash {
            return Ok(FleetFlip::unchanged(service, to, read_rev));
        }
        let next = Desired {
            active: to,
            config_hash: hash,
            actor: format!("{actor}@{}", self.host()),
            reason: reason.to_string(),
            at_ms: now_ms(),
            deployment: current.deployment.clone(),
            definition: current.definition.clone(),
        };
        self.commit(
            &mut client,
            service,
            read_rev,
            &current,
            next,
            action,
            revert,
            false,
        )
        .await
    }

    /// The desired state of `service` and its revision.
    pub(super) async fn read_desired(
        &self,
        client: &mut Client,
        service: &str,
    ) -> Result<(i64, Desired)> {
        let got = within(
            self.0.cfg.connect_timeout,
            client.get(self.0.keys.desired(service), None),
        )
        .await
        .context("reading the desired state")?;
        let kv = got.kvs().first().ok_or_else(|| {
            anyhow!(
                "{service} is not in fleet {}'s desired state (no host runs it yet)",
                self.0.cfg.cluster
            )
        })?;
        let d = serde_json::from_slice::<Desired>(kv.value())
            .with_context(|| format!("the desired state of {service} does not parse"))?;
        Ok((kv.mod_revision(), d))
    }

    /// This host's definition of `service` as it runs now.
    pub(super) async fn local_service(&self, service: &str) -> Result<crate::config::Service> {
        self.0
            .ctl
            .effective_services()
            .await
            .into_iter()
            .find(|s| s.name == service)
            .ok_or_else(|| anyhow!("{service} is not configured on this host"))
    }

    /// Writes `next` over `current` (read at `read_rev`), waits for every connected host, and
    /// when one refused or missed it (or the wait itself failed), writes the fleet back as
    /// `revert` says and fails naming the hosts. `driver`: the writes also require that this
    /// host still holds the service's driver key. Runs as a task of its own: a caller that
    /// goes away (a closed HTTP request) cannot leave the fleet half-changed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit(
        &self,
        client: &mut Client,
        service: &str,
        read_rev: i64,
        current: &Desired,
        next: Desired,
        action: &str,
        revert: Revert,
        driver: bool,
    ) -> Result<FleetFlip> {
        let (f, mut client, service, current, action) = (
            self.clone(),
            client.clone(),
            service.to_string(),
            current.clone(),
            action.to_string(),
        );
        tokio::spawn(async move {
            f.commit_here(
                &mut client,
                &service,
                read_rev,
                &current,
                next,
                &action,
                revert,
                driver,
            )
            .await
        })
        .await
        .map_err(|e| anyhow!("the fleet change stopped: {e}"))?
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit_here(
        &self,
        client: &mut Client,
        service: &str,
        read_rev: i64,
        current: &Desired,
        next: Desired,
        action: &str,
        revert: Revert,
        driver: bool,
    ) -> Result<FleetFlip> {
        let to = next.active;
        let reports = self.watch_reports(client).await?;
        let sent = Instant::now();
        let (rev, committed) = self
            .compare_and_write(
                client,
                service,
                read_rev,
                &next,
                current.active,
                action,
                driver,
            )
            .await?;
        let write_ms = committed.duration_since(sent).as_secs_f64() * 1e3;
        let mut reply = FleetFlip {
            service: service.to_string(),
            from: current.active,
            to,
            revision: rev,
            changed: true,
            hosts: Vec::new(),
            excluded: Vec::new(),
            ack_ms: 0.0,
            write_ms,
            rolled_back: None,
            deployment: None,
        };
        let failed = match self
            .wait_acks(client, reports, service, rev, to, committed)
            .await
        {
            Ok((hosts, excluded)) => {
                reply.ack_ms = hosts
                    .iter()
                    .filter_map(|h| h.ack_ms)
                    .fold(0.0_f64, f64::max);
                reply.hosts = hosts;
                reply.excluded = excluded;
                reply.failures()
            }
            // Written, but nobody can tell who took it: as unsafe as a refusal.
            Err(e) => vec![format!("waiting for the hosts: {e:#}")],
        };
        if failed.is_empty() {
            return Ok(reply);
        }
        let why = format!("revision {rev} failed on: {}", failed.join("; "));
        let back = match revert {
            Revert::No => bail!(
                "{action} of {service} (revision {rev}) was not acknowledged by every host: {}. \
                 Per host: {}",
                failed.join("; "),
                serde_json::to_string(&reply.hosts)?
            ),
            Revert::ToCurrent => current.next(format!("fleet-rollback:{}", self.host()), why),
            Revert::RejectDeployment => current
                .next(format!("fleet-rollback:{}", self.host()), why.clone())
                .with_phase(FleetPhase::Rejected, Some(why)),
        };
        let reports = self.watch_reports(client).await?;
        let (back_rev, committed) = self
            .compare_and_write(client, service, rev, &back, to, "fleet-rollback", driver)
            .await
            .context("writing the fleet back after a failed change")?;
        let back_failed: Vec<String> = match self
            .wait_acks(
                client,
                reports,
                service,
                back_rev,
                current.active,
                committed,
            )
            .await
        {
            Ok((hosts, _)) => hosts
                .into_iter()
                .filter(|h| h.failed())
                .map(|h| h.host)
                .collect(),
            Err(e) => vec![format!("(waiting: {e:#})")],
        };
        reply.rolled_back = Some(back_rev);
        bail!(
            "{action} of {service} to {to} failed on {} host(s): {}; the fleet was rolled back \
             to {} (revision {back_rev}){}. Per host: {}",
            failed.len(),
            failed.join("; "),
            current.active,
            if back_failed.is_empty() {
                String::new()
            } else {
                format!(", not yet acknowledged by {}", back_failed.join(", "))
            },
            serde_json::to_string(&reply.hosts)?
        )
    }

    /// Writes `desired` if the key is still at `read_rev`, with its audit entry, in one
    /// transaction. Returns the new revision and when it committed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn compare_and_write(
        &self,
        client: &mut Client,
        service: &str,
        read_rev: i64,
        desired: &Desired,
        from: Color,
        action: &str,
        driver: bool,
    ) -> Result<(i64, Instant)> {
        let key = self.0.keys.desired(service);
        let audit = AuditEntry {
            at_ms: desired.at_ms,
            actor: desired.actor.clone(),
            host: self.host().to_string(),
            service: service.to_string(),
            action: action.to_string(),
            from: Some(from),
            to: desired.active,
            reason: desired.reason.clone(),
            revision: None,
            evidence: None,
        };
        let mut when = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            read_rev,
        )];
        if driver {
            // Only the driver of the deployment may move it on, under the very lease it took
            // the key with: a driver that lost it (its lease ran out, or a second daemon
            // with the same host id) cannot write over its successor.
            let lease = self
                .local()
                .lease
                .ok_or_else(|| anyhow!("this host holds no lease (not connected)"))?;
            when.push(Compare::lease(
                self.0.keys.driver(service),
                CompareOp::Equal,
                lease,
            ));
        }
        let txn = etcd_client::Txn::new()
            .when(when)
            .and_then([
                TxnOp::put(key.clone(), serde_json::to_string(desired)?, None),
                TxnOp::put(
                    self.0
                        .keys
                        .audit(desired.at_ms, self.host(), read_rev as u64),
                    serde_json::to_string(&audit)?,
                    None,
                ),
            ])
            .or_else([TxnOp::get(key, None)]);
        let resp = within(self.0.cfg.connect_timeout, client.txn(txn))
            .await
            .context("writing the desired state")?;
        let committed = Instant::now();
        if resp.succeeded() {
            return Ok((resp.header().map_or(0, |h| h.revision()), committed));
        }
        let now = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                let d = serde_json::from_slice::<Desired>(kv.value()).ok();
                (kv.mod_revision(), d)
            }),
            _ => None,
        });
        match now {
            Some((rev, _)) if driver && rev == read_rev => bail!(
                "this host no longer drives the fleet deployment of {service} (its lease ran \
                 out and another host took it over); nothing was written"
            ),
            Some((rev, Some(d))) => bail!(
                "the desired state of {service} changed while this request was made (revision \
                 {read_rev} -> {rev}: {} by {}, {:?}); nothing was written: check `switcher \
                 fleet status` and ask again",
                d.active,
                d.actor,
                d.reason
            ),
            _ => bail!(
                "the desired state of {service} changed or vanished while this request was \
                 made; nothing was written"
            ),
        }
    }

    /// A watch on the host reports from now on, confirmed by etcd, opened before a write: it
    /// is current, so etcd sends each report as it lands. (One that starts at a past revision
    /// is caught up by etcd in 100 ms steps: that was the fleet flip's p99.)
    async fn watch_reports(&self, client: &mut Client) -> Result<WatchResponseStream> {
        let limit = self.0.cfg.connect_timeout;
        let (_, mut watch) = within(
            limit,
            client.watch(
                self.0.keys.hosts_prefix(),
                Some(WatchOptions::new().with_prefix()),
            ),
        )
        .await
        .context("watching the host reports")?
        .split();
        match tokio::time::timeout(limit, watch.message()).await {
            Ok(Ok(Some(m))) if m.created() => Ok(watch),
            Ok(Ok(_)) => bail!("etcd did not confirm the watch on the host reports"),
            Ok(Err(e)) => Err(anyhow::Error::from(e).context("watching the host reports")),
            Err(_) => bail!("etcd did not confirm the watch on the host reports within {limit:?}"),
        }
    }

    /// Waits until every host connected now has applied or refused revision `rev`, or the
    /// ack deadline passed. `watch` was opened before the write. Returns each host's answer, and the known hosts not connected.
    async fn wait_acks(
        &self,
        client: &mut Client,
        mut watch: WatchResponseStream,
        service: &str,
        rev: i64,
        to: Color,
        committed: Instant,
    ) -> Result<(Vec<HostAck>, Vec<String>)> {
        let limit = self.0.cfg.connect_timeout;
        let prefix = self.0.keys.hosts_prefix();
        let (reports, _) = etcd::read_prefix::<HostReport>(client, &prefix, limit).await?;
        let (known, _) =
            etcd::read_prefix::<serde_json::Value>(client, &self.0.keys.known_prefix(), limit)
                .await?;
        let mut acks: BTreeMap<String, HostAck> = BTreeMap::new();
        let live: BTreeSet<String> = reports.iter().map(|e| e.name.clone()).collect();
        let excluded = known
            .into_iter()
            .map(|e| e.name)
            .filter(|n| !live.contains(n))
            .collect();
        for e in &reports {
            acks.insert(e.name.clone(), judge(&e.value, service, rev, to, None));
        }
        let deadline = committed + self.0.cfg.ack_deadline;
        let waiting =
            |acks: &BTreeMap<String, HostAck>| acks.values().any(|a| a.result == "waiting");
        while waiting(&acks) {
            let Ok(m) = tokio::time::timeout_at(deadline, watch.message()).await else {
                break;
            };
            let Some(m) = m.context("watching the host reports")? else {
                bail!("the watch on the host reports ended");
            };
            let seen = committed.elapsed().as_secs_f64() * 1e3;
            for ev in m.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let Some(host) = super::keys::Keys::name_under(&prefix, &key) else {
                    continue;
                };
                let Some(a) = acks.get_mut(host).filter(|a| a.result == "waiting") else {
                    continue;
                };
                match ev.event_type() {
                    EventType::Put => {
                        if let Ok(r) = serde_json::from_slice::<HostReport>(kv.value()) {
                            *a = judge(&r, service, rev, to, Some(seen));
                        }
                    }
                    EventType::Delete => a.result = "lost".into(),
                }
            }
        }
        for a in acks.values_mut().filter(|a| a.result == "waiting") {
            a.result = "missed".into();
            a.error = Some(format!(
                "no acknowledgement of revision {rev} within {:?}",
                self.0.cfg.ack_deadline
            ));
        }
        Ok((acks.into_values().collect(), excluded))
    }
}

/// What `r` says about revision `rev` of `service`: applied, refused, or still waiting.
fn judge(r: &HostReport, service: &str, rev: i64, to: Color, seen_ms: Option<f64>) -> HostAck {
    let mut a = HostAck {
        host: r.host.clone(),
        result: "waiting".into(),
        active: None,
        generation: None,
        error: None,
        ack_ms: None,
        apply_us: None,
    };
    let Some(s) = r.services.get(service) else {
        return a;
    };
    a.active = Some(s.active);
    a.generation = Some(s.generation);
    if s.applied_revision >= rev && s.active == to {
        a.result = "applied".into();
        a.apply_us = s.apply_us;
        a.ack_ms = Some(seen_ms.unwrap_or(0.0));
    } else if let Some(n) = s.nack.as_ref().filter(|n| n.revision >= rev) {
        a.result = "refused".into();
        a.error = Some(n.error.clone());
        a.ack_ms = Some(seen_ms.unwrap_or(0.0));
    }
    a
}
