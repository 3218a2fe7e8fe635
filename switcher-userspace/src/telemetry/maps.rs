//! Read-only handles on the pinned maps, opened apart from the controller's datapath so that a
//! scrape or a dashboard sample never waits for (or holds) the controller's lock. The kernel
//! side is never slowed: these are plain map lookups, as `bpftool map dump` would do.

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

/// How old a flow census may be before a sample walks the flow table again. Even batched, a
/// walk of a full table takes about 0.1 s, so it is shared by every scrape and dashboard
/// sample in this window; draining is followed in minutes, not seconds.
pub const CENSUS_MAX_AGE: Duration = Duration::from_secs(5);

pub struct MapReader {
    counters: PerCpuArray<MapData, ColorCounters>,
    reasons: PerCpuArray<MapData, u64>,
    active: Array<MapData, ActiveWord>,
    marks: Array<MapData, FlipMark>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    census: Mutex<Option<(Instant, Census)>>,
}

/// What one walk of the flow table found.
#[derive(Debug, Clone, Default)]
struct Census {
    /// Open TCP flows by service id and colour.
    pinned: BTreeMap<u32, [u64; 2]>,
    entries: u64,
}

impl Census {
    fn add(&mut self, v: &FlowValue) {
        self.entries += 1;
        if v.state == FLOW_OPEN {
            self.pinned.entry(v.service_id).or_default()[(v.color & 1) as usize] += 1;
        }
    }
}

/// One service as the datapath sees it at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceSample {
    pub active: ActiveWord,
    pub mark: FlipMark,
    /// Indexed by colour (BLUE, GREEN).
    pub counters: [ColorCounters; 2],
    /// Open TCP flows pinned to each colour: what a flip leaves draining.
    pub pinned: [u64; 2],
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub services: BTreeMap<u32, ServiceSample>,
    pub reasons: Vec<(Reason, u64)>,
    pub flow_entries: u64,
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
    /// `maps_dir` is the datapath's pin directory (`<bpffs>/v<ABI>/maps`).
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

    /// Reads the services with these ids. Per-CPU values are summed; the flow table is walked
    /// once for all services.
    pub fn sample(&self, ids: &[u32]) -> Result<Sample> {
        let mut out = Sample::default();
        for &id in ids {
            let mut s = ServiceSample {
                active: self.active.get(&id, 0).context("reading ACTIVE")?,
                mark: self.marks.get(&id, 0).context("reading FLIP_MARKS")?,
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
            out.services.insert(id, s);
        }
        let census = self.census()?;
        out.flow_entries = census.entries;
        for (id, pinned) in &census.pinned {
            if let Some(s) = out.services.get_mut(id) {
                s.pinned = *pinned;
            }
        }
        for r in Reason::ALL {
            let per_cpu = self
                .reasons
                .get(&(*r as u32), 0)
                .context("reading REASON_COUNTERS")?;
            out.reasons.push((*r, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// The flow census, walked again when older than [`CENSUS_MAX_AGE`]. Concurrent callers
    /// wait for one walk instead of each doing their own.
    fn census(&self) -> Result<Census> {
        let mut cached = match self.census.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((at, c)) = cached.as_ref() {
            if at.elapsed() < CENSUS_MAX_AGE {
                return Ok(c.clone());
            }
        }
        let mut c = Census::default();
        crate::flow_table::for_each(&self.flows, |_, v| c.add(v))?;
        *cached = Some((Instant::now(), c.clone()));
        Ok(c)
    }
}
