//! An in-memory datapath for host tests of the controller: the same contract as the real one
//! (ids kept across applies, the active colour kept for known services, flips refused to a
//! colour without a backend), with the maps open to the test for inspection and for staging
//! what a crash would leave behind.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use anyhow::{anyhow, bail, Result};
use switcher_common::{ActiveWord, ColorCounters, Endpoint, Reason, ShadowCounters};

use super::{
    encode,
    read::{Census, MemberReading},
    Datapath, FlipOutcome, ServiceReading,
};
use crate::{
    config::{Member, Service},
    domain::{Color, XdpMode},
};

/// One programmed service.
#[derive(Debug, Clone)]
pub struct FakeService {
    pub name: String,
    pub id: u32,
    /// Each colour's pool, by colour index.
    pub pools: [Vec<Member>; 2],
    pub canary_share: u32,
}

/// The fake's maps; the test keeps a handle to them.
#[derive(Debug, Default)]
pub struct FakeMaps {
    pub services: HashMap<Endpoint, FakeService>,
    pub active: BTreeMap<u32, ActiveWord>,
    pub counters: BTreeMap<u32, [ColorCounters; 2]>,
    /// Open TCP flows per service and colour.
    pub open_flows: BTreeMap<u32, [u64; 2]>,
    pub redirect_targets: Vec<u32>,
    pub attached: Vec<String>,
    /// Set by close: whether the datapath was left attached.
    pub closed: Option<bool>,
    pub flips: u64,
    /// Every read fails while set: a datapath the controller cannot read.
    pub fail_reads: bool,
    /// Every canary share written, in order: (service id, share).
    pub canary_writes: Vec<(u32, u32)>,
    /// Affinity epochs by service id (bumped by rollbacks).
    pub epochs: BTreeMap<u32, u32>,
    /// Members out of service: (service id, colour, address).
    pub down: HashSet<(u32, Color, SocketAddr)>,
    /// Entries of the established-connection table (the test sets them).
    pub flow_entries: Vec<(switcher_common::FlowKey, switcher_common::FlowValue)>,
    /// Shadowing per service id, as last written.
    pub shadows: BTreeMap<u32, super::Shadow>,
    /// Copies each service's shadowing made (the test sets them: no packets flow here).
    pub shadow_counters: BTreeMap<u32, ShadowCounters>,
    /// The next apply fails after writing this many services (a map write failing midway),
    /// then the setting clears.
    pub fail_apply_after: Option<usize>,
}

impl FakeMaps {
    pub fn id(&self, name: &str) -> Option<u32> {
        self.services
            .values()
            .find(|s| s.name == name)
            .map(|s| s.id)
    }

    pub fn service(&self, name: &str) -> Option<&FakeService> {
        self.services.values().find(|s| s.name == name)
    }

    pub fn active_color(&self, name: &str) -> Option<Color> {
        let id = self.id(name)?;
        self.active.get(&id).map(|w| Color::from_index(w.color()))
    }
}

#[derive(Clone, Default)]
pub struct FakeDatapath(pub Arc<Mutex<FakeMaps>>);

impl FakeDatapath {
    pub fn maps(&self) -> MutexGuard<'_, FakeMaps> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Datapath for FakeDatapath {
    fn apply(&mut self, services: &[Service]) -> Result<BTreeMap<String, u32>> {
        let mut m = self.maps();
        let keys: Vec<Endpoint> = services.iter().map(encode::service_key).collect();
        let existing: HashMap<Endpoint, u32> = m.services.iter().map(|(k, v)| (*k, v.id)).collect();
        let ids = encode::assign_ids(&existing, &keys, &Default::default())?;
        m.services.retain(|k, _| keys.contains(k));
        let mut out = BTreeMap::new();
        let fail_after = m.fail_apply_after.take();
        for (i, ((s, key), id)) in services.iter().zip(keys).zip(ids).enumerate() {
            if fail_after == Some(i) {
                bail!("writing service {}: injected failure", s.name);
            }
            let canary_share = m.services.get(&key).map_or(0, |v| v.canary_share);
            if !m.services.contains_key(&key) {
                m.active.insert(id, ActiveWord::new(s.active.index(), 0));
            }
            m.services.insert(
                key,
                FakeService {
                    name: s.name.clone(),
                    id,
                    pools: [s.blue.clone(), s.green.clone()],
                    canary_share,
                },
            );
            out.insert(s.name.clone(), id);
        }
        Ok(out)
    }

    fn flip(&mut self, id: u32, to: Color) -> Result<FlipOutcome> {
        let mut m = self.maps();
        let cur = *m
            .active
            .get(&id)
            .ok_or_else(|| anyhow!("service id {id} is not in the datapath"))?;
        let from = Color::from_index(cur.color());
        if from == to {
            return Ok(FlipOutcome::unchanged(cur));
        }
        let has_backend = m
            .services
            .values()
            .any(|s| s.id == id && !s.pools[to.index() as usize].is_empty());
        if !has_backend {
            bail!("{to} has no backend");
        }
        let next = cur.flipped_to(to.index());
        m.active.insert(id, next);
        m.flips += 1;
        Ok(FlipOutcome {
            from,
            to,
            generation: next.generation(),
            flip_ns: m.flips,
            changed: true,
        })
    }

    fn set_canary(&mut self, id: u32, share: u32) -> Result<()> {
        let mut m = self.maps();
        let s = m
            .services
            .values_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| anyhow!("service id {id} is not in the datapath"))?;
        s.canary_share = share.min(0xffff);
        m.canary_writes.push((id, share));
        Ok(())
    }

    fn set_shadow(&mut self, id: u32, shadow: Option<super::Shadow>) -> Result<()> {
        let mut m = self.maps();
        match shadow {
            Some(s) => m.shadows.insert(id, s),
            None => m.shadows.remove(&id),
        };
        Ok(())
    }

    fn shadow_counters(&self, id: u32) -> Result<ShadowCounters> {
        Ok(self
            .maps()
            .shadow_counters
            .get(&id)
            .copied()
            .unwrap_or_default())
    }

    fn void_affinity(&mut self, id: u32) -> Result<()> {
        *self.maps().epochs.entry(id).or_default() += 1;
        Ok(())
    }

    fn set_member_in_service(
        &mut self,
        id: u32,
        color: Color,
        addr: SocketAddr,
        in_service: bool,
    ) -> Result<bool> {
        let mut m = self.maps();
        let member = m.services.values().any(|s| {
            s.id == id
                && s.pools[color.index() as usize]
                    .iter()
                    .any(|m| m.addr == addr)
        });
        if !member {
            bail!("{addr} is not a member of the {color} pool of service id {id}");
        }
        Ok(if in_service {
            m.down.remove(&(id, color, addr))
        } else {
            m.down.insert((id, color, addr))
        })
    }

    fn retire_drained(&mut self, _: &[Endpoint], _: Instant) -> Result<Vec<(u32, SocketAddr)>> {
        // The fake keeps no reverse entries: a removed member has nothing to drain.
        Ok(Vec::new())
    }

    fn set_redirect_targets(&mut self, ifindexes: &[u32]) -> Result<()> {
        self.maps().redirect_targets = ifindexes.to_vec();
        Ok(())
    }

    fn attach(&mut self, interfaces: &[String], _mode: XdpMode) -> Result<()> {
        self.maps().attached = interfaces.to_vec();
        Ok(())
    }

    fn read(&self, id: u32) -> Result<ServiceReading> {
        let m = self.maps();
        if m.fail_reads {
            bail!("reading service {id}: injected failure");
        }
        Ok(ServiceReading {
            active: *m
                .active
                .get(&id)
                .ok_or_else(|| anyhow!("service id {id} is not in the datapath"))?,
            mark: Default::default(),
            counters: m.counters.get(&id).copied().unwrap_or_default(),
        })
    }

    fn members(&self, id: u32, c: Color) -> Result<Vec<MemberReading>> {
        let m = self.maps();
        let s = m
            .services
            .values()
            .find(|s| s.id == id)
            .ok_or_else(|| anyhow!("service id {id} is not in the datapath"))?;
        let pool = &s.pools[c.index() as usize];
        let up = pool
            .iter()
            .filter(|p| !m.down.contains(&(id, c, p.addr)))
            .count();
        Ok(pool
            .iter()
            .enumerate()
            .map(|(i, p)| MemberReading {
                addr: p.addr,
                slot: i as u16,
                // All out of service: all keep their share (as the real table does).
                share: match (up, m.down.contains(&(id, c, p.addr))) {
                    (0, _) => 1.0 / pool.len() as f64,
                    (_, true) => 0.0,
                    (up, false) => 1.0 / up as f64,
                },
                counters: Default::default(),
            })
            .collect())
    }

    fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        Ok(Reason::ALL.iter().map(|r| (*r, 0)).collect())
    }

    fn for_each_flow(
        &self,
        f: &mut dyn FnMut(&switcher_common::FlowKey, &switcher_common::FlowValue),
    ) -> Result<()> {
        for (k, v) in &self.maps().flow_entries {
            f(k, v);
        }
        Ok(())
    }

    fn census(&self) -> Result<Census> {
        let m = self.maps();
        Ok(Census {
            pinned: m.open_flows.clone(),
            entries: m.open_flows.values().flatten().sum(),
            member_pinned: Default::default(),
        })
    }

    fn close(self: Box<Self>, keep_attached: bool) -> Result<()> {
        self.maps().closed = Some(keep_attached);
        Ok(())
    }
}
