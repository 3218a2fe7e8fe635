//! The fleet agent: connects, takes a lease, reads the desired state afresh, applies what is
//! new through the controller, reports, then watches `desired/` from the revision it read.
//! Any failure ends the session: the host keeps what it applied (fail static), shows itself
//! disconnected, and the next session starts again with a fresh read.

use std::{convert::Infallible, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    apply,
    etcd::{self, within},
    model::{config_hash, HostDeployment},
    AuditEntry, Desired, Fleet, HostReport, ServiceReport,
};
use tokio::sync::broadcast;

use crate::{
    controller::{Event, AUTO},
    deploy::Phase,
    domain::now_ms,
};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// A host cut off retries at least this often: a healed partition is noticed within it.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A session that lasted this long was healthy: the next failure starts the backoff again.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

pub(super) async fn run(f: Fleet, mut events: broadcast::Receiver<Event>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let Err(e) = session(&f, &mut events).await;
        warn!(cluster = %f.0.cfg.cluster, "fleet: disconnected from etcd, serving the last applied state: {e:#}");
        {
            let mut l = f.local();
            l.client = None;
            l.lease = None;
            l.last_error = Some(format!("{e:#}"));
        }
        if started.elapsed() > HEALTHY_SESSION {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `events`: the controller's, subscribed once for the agent's life, so an automatic
/// rollback while disconnected is still seen (and propagated once connected).
async fn session(f: &Fleet, events: &mut broadcast::Receiver<Event>) -> Result<Infallible> {
    let cfg = &f.0.cfg;
    let limit = cfg.connect_timeout;
    let start = f.local().next_endpoint;
    let (mut client, endpoint) = etcd::connect(cfg, start).await?;
    // The next session starts with the endpoint after this one, should this one fail.
    f.local().next_endpoint = endpoint + 1;
    let ttl = i64::try_from(cfg.lease_ttl.as_secs()).context("lease TTL")?;
    let lease = within(limit, client.lease_grant(ttl, None))
        .await
        .context("granting this host's lease")?
        .id();
    let (mut keeper, mut alive) = within(limit, client.lease_keep_alive(lease))
        .await
        .context("keeping the lease alive")?;
    let joined = serde_json::json!({ "at_ms": now_ms() }).to_string();
    within(limit, client.put(f.0.keys.known(f.host()), joined, None))
        .await
        .context("registering this host")?;
    {
        let mut l = f.local();
        if l.connected_since_ms.is_some() {
            l.reconnects += 1;
        }
        l.connected_since_ms = Some(now_ms());
        l.client = Some(client.clone());
        l.lease = Some(lease);
        l.last_error = None;
    }
    info!(cluster = %cfg.cluster, host = %f.host(), lease, endpoint = %cfg.endpoints[endpoint], "fleet: connected to etcd");
    flush_audit(f, &mut client).await?;
    // Each pass: a fresh read, then a watch from the revision read. A canceled watch (its
    // start was compacted away) sends us round again.
    loop {
        let read = sync(f, &mut client, lease).await?;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(read + 1)
            .with_progress_notify();
        let (mut requests, mut watch) =
            within(limit, client.watch(f.0.keys.desired_prefix(), Some(opts)))
                .await
                .context("watching the desired state")?
                .split();
        let mut tick = tokio::time::interval(cfg.lease_ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if ev.actor == AUTO && ev.phase == Some(Phase::RolledBack) => {
                        propagate_rollback(f, ev);
                        report(f, &mut client, lease).await?;
                    }
                    // A validation's verdict (or any step) is what a fleet driver waits for.
                    Ok(ev) if ev.kind == "transition" => {
                        retry_pending(f, &ev.service).await;
                        report(f, &mut client, lease).await?;
                    }
                    Ok(_) => {}
                    // Missed events: whatever rolled back shows as drift in the next report.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "fleet: the agent missed controller events");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        bail!("the controller stopped");
                    }
                },
                _ = tick.tick() => {
                    within(limit, keeper.keep_alive()).await.context("renewing the lease")?;
                    // Answered by a progress response (or events): a watch that stays silent
                    // past a whole lease TTL is stuck, however healthy the connection looks.
                    requests.request_progress().await.context("asking the watch for progress")?;
                    if heard.elapsed() > cfg.lease_ttl {
                        bail!("the watch on the desired state has been silent for {:?}", heard.elapsed());
                    }
                    report(f, &mut client, lease).await?;
                    flush_audit(f, &mut client).await?;
                    super::driver::take_over_orphans(f, &mut client).await?;
                }
                m = alive.message() => {
                    let m = m.context("lease keep-alive")?.ok_or_else(|| anyhow!("the lease keep-alive stream ended"))?;
                    if m.ttl() <= 0 {
                        bail!("lease {lease} expired");
                    }
                }
                m = watch.message() => {
                    let m = m.context("watching the desired state")?.ok_or_else(|| anyhow!("the watch ended"))?;
                    heard = Instant::now();
                    if m.canceled() || m.compact_revision() > 0 {
                        info!(compacted = m.compact_revision(), "fleet: watch canceled; reading the desired state afresh");
                        break;
                    }
                    let mut changed = false;
                    for ev in m.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        let Some(name) = super::keys::Keys::name_under(&f.0.keys.desired_prefix(), &key) else {
                            continue;
                        };
                        match ev.event_type() {
                            EventType::Put => match serde_json::from_slice::<Desired>(kv.value()) {
                                Ok(d) => {
                                    apply::apply(f, name, kv.mod_revision(), d).await;
                                    changed = true;
                                }
                                Err(e) => warn!(key = %key, "ignoring a desired state that does not parse: {e}"),
                            },
                            // Nobody wants anything of it any more: keep serving as is.
                            EventType::Delete => {
                                f.local().desired.remove(name);
                                changed = true;
                            }
                        }
                    }
                    if changed {
                        report(f, &mut client, lease).await?;
                    }
                }
                _ = f.0.nudge.notified() => {
                    report(f, &mut client, lease).await?;
                    flush_audit(f, &mut client).await?;
                }
            }
        }
    }
}

/// Reads the whole desired state, seeds services nobody has described yet with this host's
/// own, applies what is new and reports. Returns the revision read.
async fn sync(f: &Fleet, client: &mut Client, lease: i64) -> Result<i64> {
    let limit = f.0.cfg.connect_timeout;
    let (entries, read) =
        etcd::read_prefix::<Desired>(client, &f.0.keys.desired_prefix(), limit).await?;
    let mut desired: std::collections::BTreeMap<String, (i64, Desired)> = entries
        .into_iter()
        .map(|e| (e.name, (e.mod_revision, e.value)))
        .collect();
    for s in f.0.ctl.effective_services().await {
        if desired.contains_key(&s.name) {
            continue;
        }
        if let Some((rev, d)) = seed(f, client, &s).await? {
            desired.insert(s.name.clone(), (rev, d));
        }
        // Lost the race: the winner's value arrives through the watch.
    }
    for (name, (rev, d)) in desired {
        apply::apply(f, &name, rev, d).await;
    }
    report(f, client, lease).await?;
    Ok(read)
}

/// Puts this host's report under its lease: applied revisions and refusals, and the colour
/// and generation as this host's BPF maps have them.
async fn report(f: &Fleet, client: &mut Client, lease: i64) -> Result<()> {
    let ctl = &f.0.ctl;
    let colours = ctl.colours().await?;
    let hashes: std::collections::BTreeMap<String, String> = ctl
        .effective_services()
        .await
        .iter()
        .map(|s| (s.name.clone(), config_hash(s)))
        .collect();
    let mut services = std::collections::BTreeMap::new();
    {
        let l = f.local();
        // The services configured now (a removed one may keep its map entry a while).
        for (name, hash) in &hashes {
            let Some(&(active, generation)) = colours.get(name) else {
                continue;
            };
            services.insert(
                name.clone(),
                ServiceReport {
                    applied_revision: l.applied.get(name).copied().unwrap_or(0),
                    active,
                    generation,
                    config_hash: hash.clone(),
                    nack: l.nacks.get(name).cloned(),
                    overridden: l.overrides.get(name).cloned(),
                    apply_us: l.apply_us.get(name).copied(),
                    deployment: None,
                },
            );
        }
    }
    let mapped: Vec<(String, String, u64)> = f
        .local()
        .deployments
        .iter()
        .map(|(s, (fid, lid))| (s.clone(), fid.clone(), *lid))
        .collect();
    for (service, fleet_id, local_id) in mapped {
        if let (Some(r), Some(d)) = (
            services.get_mut(&service),
            ctl.deployment(&service, local_id).await,
        ) {
            r.deployment = Some(HostDeployment {
                fleet_id,
                local_id,
                phase: d.phase,
                reason: d.last().map(|t| t.reason.clone()).unwrap_or_default(),
            });
        }
    }
    let r = HostReport {
        host: f.host().to_string(),
        at_ms: now_ms(),
        services,
    };
    within(
        f.0.cfg.connect_timeout,
        client.put(
            f.0.keys.host(f.host()),
            serde_json::to_string(&r)?,
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await
    .context("reporting this host")?;
    Ok(())
}

/// Sends the audit entries recorded while they could not be (a local override offline).
async fn flush_audit(f: &Fleet, client: &mut Client) -> Result<()> {
    let pending: Vec<AuditEntry> = std::mem::take(&mut f.local().pending_audit);
    if pending.is_empty() {
        return Ok(());
    }
    for (i, e) in pending.iter().enumerate() {
        let key = f.0.keys.audit(e.at_ms, f.host(), i as u64);
        if let Err(err) = within(
            f.0.cfg.connect_timeout,
            client.put(key, serde_json::to_string(e)?, None),
        )
        .await
        {
            // Kept for the next session, in order.
            f.local()
                .pending_audit
                .splice(0..0, pending[i..].iter().cloned());
            return Err(err.context("writing the audit trail"));
        }
    }
    f.persist();
    Ok(())
}

/// This host's post-flip watch rolled `ev.service` back by itself: the fleet follows, so no
/// host is left on a colour that failed somewhere. Written (and acknowledged) from a task of
/// its own: the agent must keep reporting meanwhile, its own acknowledgement included.
fn propagate_rollback(f: &Fleet, ev: Event) {
    let f = f.clone();
    tokio::spawn(async move {
        // Until the fleet follows (or has moved on by itself); a host cut off from etcd
        // keeps trying once a second for a bounded while.
        for attempt in 1..=PROPAGATE_ATTEMPTS {
            let to = match f.0.ctl.colour(&ev.service).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(service = %ev.service, "fleet: reading the colour after a rollback: {e:#}");
                    return;
                }
            };
            let wanted = f.local().desired.get(&ev.service).map(|(_, d)| d.active);
            if wanted == Some(to) {
                return;
            }
            let reason = format!("automatic rollback on {}: {}", f.host(), ev.message);
            match f.follow(&ev.service, to, AUTO, &reason).await {
                Ok(r) => {
                    info!(service = %ev.service, revision = r.revision, %to, "fleet: rolled the fleet back after this host's watch failed");
                    return;
                }
                Err(e) => {
                    warn!(service = %ev.service, attempt, "fleet: could not roll the fleet back yet: {e:#}")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// How many times (a second apart) a host retries rolling the fleet back after its own watch
/// did.
const PROPAGATE_ATTEMPTS: u32 = 120;

/// Describes `s` in etcd as this host runs it, if nobody has: its colour, config hash and
/// definition. None when another host did first (its value arrives through the watch).
pub(super) async fn seed(
    f: &Fleet,
    client: &mut Client,
    s: &crate::config::Service,
) -> Result<Option<(i64, Desired)>> {
    let active = f.0.ctl.colour(&s.name).await?;
    let d = Desired {
        active,
        config_hash: config_hash(s),
        actor: format!("seed:{}", f.host()),
        reason: "first host to describe this service".into(),
        at_ms: now_ms(),
        deployment: None,
        definition: f.definition(&s.name),
    };
    let key = f.0.keys.desired(&s.name);
    let value = serde_json::to_string(&d)?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)]);
    let resp = within(f.0.cfg.connect_timeout, client.txn(txn))
        .await
        .context("seeding the desired state")?;
    if !resp.succeeded() {
        return Ok(None);
    }
    let rev = resp.header().map_or(0, |h| h.revision());
    info!(service = %s.name, revision = rev, %active, "fleet: seeded the desired state");
    Ok(Some((rev, d)))
}

/// A revision of `service` this host has not applied yet (it waited for its own validation,
/// say) is tried again after each step of its local deployment.
async fn retry_pending(f: &Fleet, service: &str) {
    let pending = {
        let l = f.local();
        l.desired
            .get(service)
            .filter(|(rev, _)| l.applied.get(service).is_none_or(|a| a < rev))
            .cloned()
    };
    if let Some((rev, d)) = pending {
        apply::apply(f, service, rev, d).await;
    }
}
