//! The etcd side of fleet mode: connecting (TLS optional), reading a prefix of JSON values,
//! and the fleet status read. Every unary request has a deadline of its own; watches and
//! lease keep-alives are streams and rely on HTTP/2 keep-alive pings to notice a dead peer.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::{keys::Keys, model::FleetStatus, AuditEntry, Desired, Fleet, HostReport};
use crate::config::FleetConfig;

/// How often an idle HTTP/2 connection is pinged: etcd refuses (GOAWAY) clients that ping
/// more often than its `--grpc-keepalive-min-time` (5 s by default). A black hole is found
/// sooner anyway: the agent renews its lease and reports every third of the lease, each with
/// a deadline.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Connects to one endpoint, trying each in turn from `start` (a session sticks to the one
/// it reached, as etcd's own clients do; the next session starts after it). A member that
/// answers a linearizable read is part of a quorum: one cut off from it is passed over.
/// Returns the client and the index of its endpoint.
pub(super) async fn connect(cfg: &FleetConfig, start: usize) -> Result<(Client, usize)> {
    let n = cfg.endpoints.len();
    let mut errors = Vec::new();
    for k in 0..n {
        let i = (start + k) % n;
        let endpoint = &cfg.endpoints[i];
        match connect_one(cfg, endpoint).await {
            Ok(c) => return Ok((c, i)),
            Err(e) => errors.push(format!("{endpoint}: {e:#}")),
        }
    }
    Err(anyhow!("no etcd endpoint reachable: {}", errors.join("; ")))
}

async fn connect_one(cfg: &FleetConfig, endpoint: &str) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_keep_alive(PING_EVERY, cfg.connect_timeout)
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &cfg.tls {
        let ca = std::fs::read(&tls.ca)
            .with_context(|| format!("reading the etcd CA {}", tls.ca.display()))?;
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &tls.identity {
            let c = std::fs::read(cert)
                .with_context(|| format!("reading the client certificate {}", cert.display()))?;
            let k = std::fs::read(key)
                .with_context(|| format!("reading the client key {}", key.display()))?;
            t = t.identity(Identity::from_pem(c, k));
        }
        opts = opts.with_tls(t);
    }
    let mut client = within(cfg.connect_timeout, Client::connect([endpoint], Some(opts)))
        .await
        .context("connecting")?;
    within(
        cfg.connect_timeout,
        client.get("/switcher/", Some(GetOptions::new().with_count_only())),
    )
    .await
    .context("a quorum read")?;
    Ok(client)
}

/// `f` within `limit`, its error or a timeout as one error.
pub(super) async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow!("etcd did not answer within {limit:?}")),
    }
}

/// One value under a prefix: its name (the last key segment), revision, value.
pub(super) struct Entry<T> {
    pub name: String,
    pub mod_revision: i64,
    pub value: T,
}

/// Every value under `prefix` that parses as `T`, and the store's revision at the read. A
/// value that does not parse is skipped with a warning: one bad key must not blind a host
/// to the rest.
pub(super) async fn read_prefix<T: DeserializeOwned>(
    client: &mut Client,
    prefix: &str,
    limit: Duration,
) -> Result<(Vec<Entry<T>>, i64)> {
    let resp = within(
        limit,
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await
    .with_context(|| format!("reading {prefix}"))?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut out = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let Some(name) = Keys::name_under(prefix, &key) else {
            continue;
        };
        match serde_json::from_slice::<T>(kv.value()) {
            Ok(value) => out.push(Entry {
                name: name.to_string(),
                mod_revision: kv.mod_revision(),
                value,
            }),
            Err(e) => warn!(key = %key, "ignoring a fleet value that does not parse: {e}"),
        }
    }
    Ok((out, revision))
}

pub(super) async fn read_status(f: &Fleet) -> Result<FleetStatus> {
    let mut client = f.client()?;
    let limit = f.0.cfg.connect_timeout;
    let (desired, _) =
        read_prefix::<Desired>(&mut client, &f.0.keys.desired_prefix(), limit).await?;
    let (reports, _) =
        read_prefix::<HostReport>(&mut client, &f.0.keys.hosts_prefix(), limit).await?;
    let (known, _) =
        read_prefix::<serde_json::Value>(&mut client, &f.0.keys.known_prefix(), limit).await?;
    let desired: BTreeMap<String, (i64, Desired)> = desired
        .into_iter()
        .map(|e| (e.name, (e.mod_revision, e.value)))
        .collect();
    let reports: Vec<HostReport> = reports.into_iter().map(|e| e.value).collect();
    let known: BTreeSet<String> = known.into_iter().map(|e| e.name).collect();
    Ok(FleetStatus::build(
        &f.0.cfg.cluster,
        f.host(),
        &desired,
        &reports,
        &known,
    ))
}

impl Fleet {
    /// The fleet's audit trail, oldest first (of `service`, or all).
    pub async fn history(&self, service: Option<&str>) -> Result<Vec<AuditEntry>> {
        let mut client = self.client()?;
        let (entries, _) = read_prefix::<AuditEntry>(
            &mut client,
            &self.0.keys.audit_prefix(),
            self.0.cfg.connect_timeout,
        )
        .await?;
        Ok(entries
            .into_iter()
            .map(|e| e.value)
            .filter(|e| service.is_none_or(|s| e.service == s))
            .collect())
    }
}
