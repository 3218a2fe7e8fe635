//! Reading the datapath's maps: per-colour counters summed over CPUs, active words, flip
//! marks, reason counters and the flow table. Opened from the pins, so the metrics and the
//! dashboard read through their own handles and never wait for (or hold) the controller's
//! lock; the kernel side is never slowed (plain lookups, as `bpftool map dump` does).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use switcher_common::{
    backend_index, names, pool_index, ActiveWord, Backend, ColorCounters, Endpoint, FlipMark,
    FlowKey, FlowValue, MemberCounters, Pool, Reason, ReverseValue, BLUE, FAMILY_V4, FLOW_OPEN,
    GREEN, POOL_TABLE_SIZE, REV_F_DRAINING,
};

use super::flow_table;
use crate::domain::Color;

/// How old a flow census may be before a sample walks the flow table again. Even batched, a
/// walk of a full table takes about 0.1 s, so it is shared by every scrape and dashboard
/// sample in this window; draining is followed in minutes, not seconds.
pub const CENSUS_MAX_AGE: Duration = Duration::from_secs(5);

/// One service as the datapath sees it at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceReading {
    pub active: ActiveWord,
    pub mark: FlipMark,
    /// Indexed by colour (BLUE, GREEN).
    pub counters: [ColorCounters; 2],
}

impl ServiceReading {
    pub fn active_color(&self) -> Color {
        Color::from_index(self.active.color())
    }

    pub fn counters(&self, c: Color) -> &ColorCounters {
        &self.counters[c.index() as usize]
    }

    /// Kernel time from the last flip's map write to the first packet `c` then received.
    pub fn first_after_flip_ns(&self, c: Color) -> Option<u64> {
        let t = self.mark.first_ns[c.index() as usize];
        (self.mark.flip_ns != 0 && t != 0).then(|| t.saturating_sub(self.mark.flip_ns))
    }
}

/// What one walk of the established-connection table found.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Open TCP connections (no FIN/RST seen) by service id and colour: what a flip leaves
    /// draining.
    pub pinned: BTreeMap<u32, [u64; 2]>,
    /// The same by member counter slot.
    pub member_pinned: BTreeMap<u16, u64>,
    pub entries: u64,
}

impl Census {
    fn add(&mut self, v: &FlowValue) {
        self.entries += 1;
        if v.state == FLOW_OPEN {
            self.pinned.entry(v.service_id).or_default()[(v.color & 1) as usize] += 1;
            *self.member_pinned.entry(v.backend.slot).or_default() += 1;
        }
    }

    pub fn pinned(&self, id: u32, c: Color) -> u64 {
        self.pinned.get(&id).map_or(0, |p| p[c.index() as usize])
    }
}

/// One member of a colour's pool as the datapath sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberReading {
    pub addr: SocketAddr,
    pub slot: u16,
    /// Its share of the table (of new flows); 0 when out of service.
    pub share: f64,
    pub counters: MemberCounters,
}

/// A member's address as the maps store it.
pub fn socket_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(ip(&b.addr, b.family), u16::from_be(b.port_be))
}

/// Members removed from their pool while connections still use them: their reverse entries
/// marked draining, by member, with the service they left.
pub fn draining<T: std::borrow::Borrow<MapData>>(
    reverse: &HashMap<T, Endpoint, ReverseValue>,
) -> std::collections::HashMap<Endpoint, u32> {
    reverse
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(_, v)| v.flags & REV_F_DRAINING != 0)
        .map(|(k, v)| (k, v.service_id))
        .collect()
}

/// A (reverse) endpoint's address.
pub fn endpoint_addr(e: &Endpoint) -> SocketAddr {
    SocketAddr::new(ip(&e.addr, e.family), u16::from_be(e.port_be))
}

fn ip(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

/// Several services, the reasons and a (possibly shared) census, read together.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    pub services: BTreeMap<u32, ServiceReading>,
    /// The members of each service's colours: (id, colour index) → members.
    pub members: BTreeMap<(u32, u8), Vec<MemberReading>>,
    pub census: Census,
    pub reasons: Vec<(Reason, u64)>,
}

pub struct MapReader {
    counters: PerCpuArray<MapData, ColorCounters>,
    member_counters: PerCpuArray<MapData, MemberCounters>,
    pools: Array<MapData, Pool>,
    reasons: PerCpuArray<MapData, u64>,
    active: Array<MapData, ActiveWord>,
    marks: Array<MapData, FlipMark>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    census: Mutex<Option<(Instant, Census)>>,
}

fn open<M>(dir: &Path, name: &str) -> Result<M>
where
    M: TryFrom<Map>,
    <M as TryFrom<Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {name}"))?;
    M::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl MapReader {
    /// `maps_dir` is the datapath's pin directory ([`super::maps_dir`]).
    pub fn open(maps_dir: &Path) -> Result<Self> {
        Ok(Self {
            counters: open(maps_dir, names::COLOR_COUNTERS)?,
            member_counters: open(maps_dir, names::MEMBER_COUNTERS)?,
            pools: open(maps_dir, names::POOLS)?,
            reasons: open(maps_dir, names::REASON_COUNTERS)?,
            active: open(maps_dir, names::ACTIVE)?,
            marks: open(maps_dir, names::FLIP_MARKS)?,
            flows: open(maps_dir, names::FLOWS)?,
            census: Mutex::new(None),
        })
    }

    /// The active word of service `id` alone (the flip reads it: no counters on that path).
    pub fn active(&self, id: u32) -> Result<ActiveWord> {
        self.active
            .get(&id, 0)
            .with_context(|| format!("reading ACTIVE[{id}]"))
    }

    /// The pool of `c` in `buffer`.
    pub fn pool(&self, id: u32, c: Color, buffer: u8) -> Result<Pool> {
        self.pools
            .get(&pool_index(id, c.index(), buffer), 0)
            .with_context(|| format!("reading the {c} pool of service id {id}"))
    }

    /// The members of `c`'s pool in use, with their counters.
    pub fn members(&self, id: u32, c: Color) -> Result<Vec<MemberReading>> {
        self.members_under(id, c, self.active(id)?)
    }

    /// [`Self::members`] with the service's active word read already.
    fn members_under(&self, id: u32, c: Color, active: ActiveWord) -> Result<Vec<MemberReading>> {
        let pool = self.pool(id, c, active.buffer(c.index()))?;
        let mut slots = [0usize; switcher_common::MAX_MEMBERS];
        for &m in pool.table.iter() {
            if let Some(n) = slots.get_mut(m as usize) {
                *n += 1;
            }
        }
        (0..(pool.members as usize).min(switcher_common::MAX_MEMBERS))
            .map(|i| {
                let b = &pool.member[i];
                let per_cpu = self
                    .member_counters
                    .get(&u32::from(b.slot), 0)
                    .context("reading MEMBER_COUNTERS")?;
                let mut counters = MemberCounters::default();
                for v in per_cpu.iter() {
                    counters.add(v);
                }
                Ok(MemberReading {
                    addr: socket_addr(b),
                    slot: b.slot,
                    share: slots[i] as f64 / POOL_TABLE_SIZE as f64,
                    counters,
                })
            })
            .collect()
    }

    /// Active word, flip mark and both colours' counters (summed over CPUs) of service `id`.
    pub fn service(&self, id: u32) -> Result<ServiceReading> {
        let mut s = ServiceReading {
            active: self.active(id)?,
            mark: self
                .marks
                .get(&id, 0)
                .with_context(|| format!("reading FLIP_MARKS[{id}]"))?,
            ..Default::default()
        };
        for color in [BLUE, GREEN] {
            let per_cpu = self
                .counters
                .get(&backend_index(id, color), 0)
                .context("reading COLOR_COUNTERS")?;
            for v in per_cpu.iter() {
                s.counters[color as usize].add(v);
            }
        }
        Ok(s)
    }

    /// Every reason counter, summed over CPUs.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL
            .iter()
            .map(|r| {
                let per_cpu = self
                    .reasons
                    .get(&(*r as u32), 0)
                    .context("reading REASON_COUNTERS")?;
                Ok((*r, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Calls `f` with every flow table entry, now (see [`flow_table::for_each`]).
    pub fn for_each_flow(&self, f: impl FnMut(&FlowKey, &FlowValue)) -> Result<()> {
        flow_table::for_each(&self.flows, f)
    }

    /// A census walked now.
    pub fn census_now(&self) -> Result<Census> {
        let mut c = Census::default();
        self.for_each_flow(|_, v| c.add(v))?;
        Ok(c)
    }

    /// The flow census, walked again when older than [`CENSUS_MAX_AGE`]. Concurrent callers
    /// wait for one walk instead of each doing their own.
    pub fn census(&self) -> Result<Census> {
        let mut cached = self.census.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, c)) = cached.as_ref() {
            if at.elapsed() < CENSUS_MAX_AGE {
                return Ok(c.clone());
            }
        }
        let c = self.census_now()?;
        *cached = Some((Instant::now(), c.clone()));
        Ok(c)
    }

    /// The services with these ids, the reasons and the shared census.
    pub fn readings(&self, ids: &[u32]) -> Result<Readings> {
        let mut out = Readings::default();
        for &id in ids {
            let service = self.service(id)?;
            for c in Color::BOTH {
                // The pools in use are the ones the service's active word read just now names.
                let members = self.members_under(id, c, service.active)?;
                out.members.insert((id, c.index()), members);
            }
            out.services.insert(id, service);
        }
        out.census = self.census()?;
        out.reasons = self.reasons()?;
        Ok(out)
    }
}
