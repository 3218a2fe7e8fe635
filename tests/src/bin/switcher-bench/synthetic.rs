//! Synthetic flow-table entries, written from userspace through the pinned map: a busy edge's
//! table without a busy edge. Only map writes; no packet is sent.

use std::{path::Path, time::Instant};

use aya::maps::MapError;

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use switcher_common::{
    names, Endpoint, FlowKey, FlowValue, ServiceValue, FAMILY_V4, FLOW_OPEN, FLOW_TABLE_SIZE,
};

/// The services programmed in the maps pinned in `maps_dir`: (id, SERVICES key).
pub fn services(maps_dir: &Path) -> Result<Vec<(u32, Endpoint)>> {
    let path = maps_dir.join(names::SERVICES);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let m: HashMap<MapData, Endpoint, ServiceValue> =
        HashMap::try_from(Map::HashMap(data)).context("SERVICES as a hash map")?;
    m.iter()
        .map(|r| r.map(|(k, v)| (v.id, k)).context("reading SERVICES"))
        .collect()
}

/// Open flows `from..to` from 198.18.128.0/17 clients (never the SYN case's 198.19.0.0/16),
/// spread over `services` (id and SERVICES key: each flow is to its service's VIP and port,
/// as the datapath would have keyed it, so the daemon's sweeper keeps it) and alternating
/// blue and green, in the flow table pinned in `maps_dir`.
pub fn fill_flows(maps_dir: &Path, services: &[(u32, Endpoint)], from: u32, to: u32) -> Result<()> {
    if services.is_empty() {
        bail!("no service to pin synthetic flows to");
    }
    let path = maps_dir.join(names::FLOWS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let max = data.info().context("FLOWS info")?.max_entries();
    if max != FLOW_TABLE_SIZE {
        bail!("the flow table holds {max} entries, the benchmark assumes {FLOW_TABLE_SIZE}");
    }
    let mut flows: HashMap<MapData, FlowKey, FlowValue> =
        HashMap::try_from(Map::HashMap(data)).context("FLOWS as a hash map")?;
    let now = switcher::datapath::monotonic_ns()?;
    let started = Instant::now();
    for k in from..to {
        let (id, service) = services[k as usize % services.len()];
        let mut key = FlowKey {
            dst: service.addr,
            sport_be: (10_000 + (k & 0x3fff) as u16).to_be(),
            dport_be: service.port_be,
            proto: service.proto,
            family: service.family,
            ..FlowKey::default()
        };
        let client = [198, 18, 128 | (k >> 22) as u8 & 0x7f, (k >> 14) as u8];
        if service.family == FAMILY_V4 {
            key.src[..4].copy_from_slice(&client);
        } else {
            // 2001:2::/48 with the IPv4 client's bytes last.
            key.src[..4].copy_from_slice(&[0x20, 0x01, 0, 2]);
            key.src[12..].copy_from_slice(&client);
        }
        let value = FlowValue {
            service_id: id,
            color: (k & 1) as u8,
            state: FLOW_OPEN,
            last_seen_ns: now,
            created_ns: now,
            ..FlowValue::default()
        };
        flows
            .insert(key, value, 0)
            .with_context(|| format!("inserting synthetic flow {k}"))?;
    }
    println!(
        "  (filled the flow table with {} synthetic flows in {:.1} s)",
        to - from,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Removes the entries of the flow table pinned in `maps_dir` whose key matches `remove`;
/// returns how many it removed.
pub fn remove_flows(maps_dir: &Path, remove: impl Fn(&FlowKey) -> bool) -> Result<u64> {
    let path = maps_dir.join(names::FLOWS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut flows: HashMap<MapData, FlowKey, FlowValue> =
        HashMap::try_from(Map::HashMap(data)).context("FLOWS as a hash map")?;
    // Keys first: deleting while iterating would restart the walk.
    let keys: Vec<FlowKey> = flows
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| remove(k))
        .collect();
    let mut n = 0;
    for k in &keys {
        match flows.remove(k) {
            Ok(()) => n += 1,
            // Evicted meanwhile: gone all the same.
            Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e).context("removing a flow"),
        }
    }
    Ok(n)
}
