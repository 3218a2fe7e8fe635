//! Reading the datapath's maps: per-colour counters summed over CPUs, active words, flip
//! marks, reason counters and the flow table. Opened from the pins, so the metrics and the
//! dashboard read through their own handles and never wait for (or hold) the controller's
//! lock; the kernel side is never slowed (plain lookups, as `bpftool map dump` does).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use switcher_common::{
    backend_index, names, ActiveWord, ColorCounters, FlipMark, FlowKey, FlowValue, Reason, BLUE,
    FLOW_OPEN, GREEN,
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

/// What one walk of the flow table found.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Open TCP flows (no FIN/RST seen) by service id and colour: what a flip leaves draining.
    pub pinned: BTreeMap<u32, [u64; 2]>,
    pub entries: u64,
}

impl Census {
    fn add(&mut self, v: &FlowValue) {
        self.entries += 1;
        if v.state == FLOW_OPEN {
            self.pinned.entry(v.service_id).or_default()[(v.color & 1) as usize] += 1;
        }
    }

    pub fn pinned(&self, id: u32, c: Color) -> u64 {
        self.pinned.get(&id).map_or(0, |p| p[c.index() as usize])
    }
}

/// Several services, the reasons and a (possibly shared) census, read together.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    pub services: BTreeMap<u32, ServiceReading>,
    pub census: Census,
    pub reasons: Vec<(Reason, u64)>,
}

pub struct MapReader {
    counters: PerCpuArray<MapData, ColorCounters>,
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
        let mut cached = match self.census.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
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
            out.services.insert(id, self.service(id)?);
        }
        out.census = self.census()?;
        out.reasons = self.reasons()?;
        Ok(out)
    }
}
