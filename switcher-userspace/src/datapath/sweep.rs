//! Removing established-connection entries nobody needs any more: closed ones after a grace,
//! idle ones (a client that vanished without a FIN), and those of services that are gone.
//! The protected table has no eviction, so this is what keeps it from filling up. Runs on its
//! own handles to the pinned maps, outside the controller's lock: a walk of a full table takes
//! about 0.1 s and a flip must not wait for it.
//!
//! It also finds which members a reload removed from their pool are no longer used by any
//! flow (their reverse entries are marked draining): the controller lets them go.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use switcher_common::{
    names, Endpoint, FlowKey, FlowValue, ReverseValue, ServiceValue, FLOW_CLOSING, PROTO_UDP,
};

use super::{encode, flow_table, monotonic_coarse_ns};

/// When the daemon removes an established connection's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowPolicy {
    /// After its FIN or RST: its last packets (and retransmissions) still find it.
    pub closing_grace_ns: u64,
    /// Without a packet for this long the connection is taken for dead (its client vanished
    /// without a FIN): the entry goes, so the protected table cannot fill with the dead.
    pub idle_ns: u64,
}

impl Default for FlowPolicy {
    fn default() -> Self {
        Self {
            closing_grace_ns: 10_000_000_000,
            // As long as Linux conntrack keeps an established TCP entry.
            idle_ns: 432_000_000_000_000,
        }
    }
}

/// What one sweep found and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowSweep {
    pub seen: u64,
    pub closed: u64,
    pub idle: u64,
    pub service_gone: u64,
}

/// The sweeper's own handles on the pinned flow, service and reverse tables.
pub struct FlowSweeper {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    half: HashMap<MapData, FlowKey, FlowValue>,
    soft: HashMap<MapData, FlowKey, FlowValue>,
    services: HashMap<MapData, Endpoint, ServiceValue>,
    reverse: HashMap<MapData, Endpoint, ReverseValue>,
}

fn open<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {name}"))?;
    HashMap::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl FlowSweeper {
    /// `maps_dir` is the datapath's pin directory ([`super::maps_dir`]).
    pub fn open(maps_dir: &Path) -> Result<Self> {
        Ok(Self {
            flows: open(maps_dir, names::FLOWS)?,
            half: open(maps_dir, names::HALF_FLOWS)?,
            soft: open(maps_dir, names::SOFT_FLOWS)?,
            services: open(maps_dir, names::SERVICES)?,
            reverse: open(maps_dir, names::REVERSE)?,
        })
    }

    /// Members removed from their pool (draining reverse entries) that no live flow uses:
    /// not an established or recent half-open connection, not a soft entry still within its
    /// idle time (the service's UDP affinity idle, or `policy.idle_ns` for TCP).
    pub fn drained_members(&self, policy: &FlowPolicy) -> Result<Vec<Endpoint>> {
        let draining = super::read::draining(&self.reverse);
        if draining.is_empty() {
            return Ok(Vec::new());
        }
        let udp_idle: StdHashMap<u32, u64> = self
            .services
            .iter()
            .map(|r| {
                r.map(|(_, v)| (v.id, v.udp_idle_ns))
                    .context("reading SERVICES")
            })
            .collect::<Result<_>>()?;
        let now = monotonic_coarse_ns()?;
        let mut used = HashSet::new();
        let mut note = |k: &FlowKey, v: &FlowValue| {
            let member = Endpoint {
                addr: v.backend.addr,
                port_be: v.backend.port_be,
                proto: k.proto,
                family: v.backend.family,
            };
            if draining.get(&member) == Some(&v.service_id) {
                used.insert(member);
            }
        };
        // Half-open before established: a handshake completing during the walks moves its
        // entry from the one to the other, and must be seen in one of them.
        flow_table::for_each(&self.half, |k, v| {
            // A handshake completes within the grace or not at all.
            if now.saturating_sub(v.last_seen_ns) < policy.closing_grace_ns {
                note(k, v);
            }
        })?;
        flow_table::for_each(&self.flows, &mut note)?;
        flow_table::for_each(&self.soft, |k, v| {
            // A service the walk of SERVICES missed counts as using the member: keep it.
            let idle = if k.proto == PROTO_UDP {
                udp_idle.get(&v.service_id).copied().unwrap_or(u64::MAX)
            } else {
                policy.idle_ns
            };
            if now.saturating_sub(v.last_seen_ns) < idle {
                note(k, v);
            }
        })?;
        Ok(draining.into_keys().filter(|m| !used.contains(m)).collect())
    }

    /// Why `policy` removes the entry (`k`, `v`) now, if it does. `live` is a walk of
    /// SERVICES: a walk can miss a key the controller rewrote meanwhile, so "gone" is
    /// confirmed by a lookup of the service itself.
    fn doomed(
        &self,
        live: &StdHashMap<Endpoint, u32>,
        policy: &FlowPolicy,
        now: u64,
        k: &FlowKey,
        v: &FlowValue,
    ) -> Option<Doom> {
        let idle = now.saturating_sub(v.last_seen_ns);
        let key = encode::flow_service_key(k);
        if live.get(&key) != Some(&v.service_id)
            && self.services.get(&key, 0).map(|s| s.id).ok() != Some(v.service_id)
        {
            Some(Doom::ServiceGone)
        } else if v.state == FLOW_CLOSING && idle >= policy.closing_grace_ns {
            Some(Doom::Closed)
        } else if idle >= policy.idle_ns {
            Some(Doom::Idle)
        } else {
            None
        }
    }

    /// One pass over the table: removes what `policy` says is done with.
    pub fn sweep(&mut self, policy: &FlowPolicy) -> Result<FlowSweep> {
        // An entry is its service's only while the service at the flow's destination still
        // has the entry's id (a removed service's flows are never looked up again, and its id
        // may later name another service).
        let live: StdHashMap<Endpoint, u32> = self
            .services
            .iter()
            .map(|r| r.map(|(k, v)| (k, v.id)).context("reading SERVICES"))
            .collect::<Result<_>>()?;
        let now = monotonic_coarse_ns()?;
        let mut doomed: Vec<FlowKey> = Vec::new();
        let mut seen = 0;
        flow_table::for_each(&self.flows, |k, v| {
            seen += 1;
            if self.doomed(&live, policy, now, k, v).is_some() {
                doomed.push(*k);
            }
        })?;
        let mut sweep = FlowSweep {
            seen,
            ..FlowSweep::default()
        };
        for k in &doomed {
            // Judged again on the entry as it is now: since the walk a packet may have touched
            // it, or a new connection reused the tuple.
            let Ok(v) = self.flows.get(k, 0) else {
                continue;
            };
            let Some(why) = self.doomed(&live, policy, now, k, &v) else {
                continue;
            };
            if self.flows.remove(k).is_ok() {
                match why {
                    Doom::ServiceGone => sweep.service_gone += 1,
                    Doom::Closed => sweep.closed += 1,
                    Doom::Idle => sweep.idle += 1,
                }
            }
        }
        Ok(sweep)
    }
}

#[derive(Debug, Clone, Copy)]
enum Doom {
    ServiceGone,
    Closed,
    Idle,
}
