//! Writing the maps: services (in an order that never shows a packet a half-programmed
//! service), their pools (into the buffer not in use, then one aligned switch), flips, canary
//! shares, affinity epochs and the redirect allow-list; and [`Datapath`] for [`BpfDatapath`].

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{PerCpuArray, PerCpuValues};
use switcher_common::{
    names, pool_index, port_slot, ActiveWord, Endpoint, FlipMark, MemberCounters, Pool, Reason,
    ReverseValue, ServiceEntry, ServiceValue, ShadowCounters, FRAG_TTL_NS, MAX_MEMBERS,
    MEMBER_SLOTS, PORT_NONE, PORT_SHARED, REV_F_DRAINING, REV_F_STATELESS,
};

use super::{
    encode::{self, PoolMember},
    monotonic_ns,
    read::Census,
    BpfDatapath, Datapath, FlipOutcome, ServiceReading,
};
use crate::{
    config::Service,
    domain::{Color, XdpMode},
};

/// What each colour of each programmed service holds: its members, their counter slots and
/// health, by (service id, colour).
#[derive(Debug, Default)]
pub(super) struct Pools {
    pub by_color: StdHashMap<(u32, Color), Vec<PoolMember>>,
    /// Members taken out of service (their health): (service id, colour, address).
    pub down: HashSet<(u32, Color, SocketAddr)>,
    /// Ids of services removed lately, and when: not given to a new service before
    /// [`ID_QUARANTINE`] has passed.
    pub retired: StdHashMap<u32, Instant>,
    /// Where the next new member's counter slot is looked for ([`encode::assign_slots`]).
    pub next_slot: u32,
    /// Reverse entries of removed members marked draining by this daemon, and when.
    pub draining_since: StdHashMap<Endpoint, Instant>,
    /// Each service's ACTIVE word as this daemon last wrote it (it is the only writer), so a
    /// flip does not read it back through bpf(2) first.
    pub active: StdHashMap<u32, ActiveWord>,
}

/// How long a removed service's id stays unused: its fragment entries (which name the id for
/// the counters) live [`FRAG_TTL_NS`], and the daemon's flow sweep removes its established
/// entries within a few seconds. A new service given the id sooner would be charged for them.
pub const ID_QUARANTINE: Duration = Duration::from_secs(FRAG_TTL_NS / 1_000_000_000 + 10);

impl BpfDatapath {
    /// See [`Datapath::apply`].
    pub fn apply(&mut self, services: &[Service]) -> Result<BTreeMap<String, u32>> {
        let existing = self.services()?;
        let keys: Vec<Endpoint> = services.iter().map(encode::service_key).collect();
        let existing_ids: StdHashMap<Endpoint, u32> =
            existing.iter().map(|(k, v)| (*k, v.id)).collect();
        self.pools
            .retired
            .retain(|_, at| at.elapsed() < ID_QUARANTINE);
        // Ids of services removed lately or by this very call are not handed out.
        let quarantined: HashSet<u32> = self
            .pools
            .retired
            .keys()
            .copied()
            .chain(
                existing
                    .iter()
                    .filter(|(k, _)| !keys.contains(k))
                    .map(|(_, v)| v.id),
            )
            .collect();
        let ids = encode::assign_ids(&existing_ids, &keys, &quarantined)?;
        self.refuse_draining_elsewhere(services, &ids)?;
        if self.pools.by_color.is_empty() {
            self.recover_pools(&existing)?;
        }

        // Member counter slots: a member keeps its slot while it stays in its pool.
        let held: StdHashMap<(u32, Color, SocketAddr), u16> = self
            .pools
            .by_color
            .iter()
            .flat_map(|((id, c), ms)| ms.iter().map(move |m| ((*id, *c, m.member.addr), m.slot)))
            .collect();
        let mut wanted = Vec::new();
        for (s, id) in services.iter().zip(&ids) {
            for c in Color::BOTH {
                for m in s.members(c) {
                    wanted.push((*id, c, m.addr));
                }
            }
        }
        if self.pools.next_slot == 0 {
            // A new daemon (or one that adopted the maps): after the slots in use.
            self.pools.next_slot = held
                .values()
                .max()
                .map_or(0, |m| (u32::from(*m) + 1) % MEMBER_SLOTS);
        }
        let (slots, fresh) =
            encode::assign_slots(&held, &wanted, MEMBER_SLOTS, self.pools.next_slot)?;
        if let Some(last) = fresh.last() {
            self.pools.next_slot = (u32::from(*last) + 1) % MEMBER_SLOTS;
        }
        for slot in fresh {
            self.zero_member_counters(slot)?;
        }
        // Slots of members that leave: no affinity entry may follow them any more.
        let kept: HashSet<u16> = slots.iter().copied().collect();
        let mut member_live = self.array_mut::<u32>(names::MEMBER_LIVE)?;
        for slot in held.values().filter(|s| !kept.contains(s)) {
            member_live
                .set(u32::from(*slot), 0, 0)
                .context("clearing MEMBER_LIVE")?;
        }
        let mut slot_of: StdHashMap<(u32, Color, SocketAddr), u16> =
            wanted.iter().copied().zip(slots).collect();

        // While services are written, every port that leads to one leads through the hash
        // (PORT_SHARED): a SERVICE_BY_ID entry is rewritten in place, the hash's atomically.
        // The final slots go in last, once every service they lead to is complete.
        let old_slots = encode::port_slots(existing.iter().map(|(k, v)| (k, v.id)));
        let new_slots = encode::port_slots(keys.iter().zip(ids.iter().copied()));
        for (slot, v) in &old_slots {
            if *v != PORT_SHARED {
                self.set_port_slot(*slot, PORT_SHARED)?;
            }
        }
        let mut reverse_wanted = HashSet::new();
        let mut out = BTreeMap::new();
        let mut by_color = StdHashMap::new();
        for ((s, key), id) in services.iter().zip(&keys).zip(ids) {
            let known = existing.get(key);
            let mut active = match known {
                Some(_) => self.active_word(id)?,
                None => ActiveWord::new(s.active.index(), 0),
            };
            for c in Color::BOTH {
                let members: Vec<PoolMember> = s
                    .members(c)
                    .iter()
                    .map(|m| PoolMember {
                        member: *m,
                        slot: slot_of.remove(&(id, c, m.addr)).unwrap_or_default(),
                        in_service: !self.pools.down.contains(&(id, c, m.addr)),
                    })
                    .collect();
                let pool = encode::pool(&members)?;
                // A service the packets can see gets the pool in its unused buffer, then the
                // switch; a new one starts on buffer 0.
                let buffer = if known.is_some() {
                    active.buffer(c.index()) ^ 1
                } else {
                    0
                };
                self.write_pool(id, c, buffer, &pool)
                    .with_context(|| format!("writing the {c} pool of {}", s.name))?;
                if known.is_some() {
                    active = active.pool_switched(c.index());
                }
                by_color.insert((id, c), members);
                for (rk, rv) in encode::reverse(s, c, id) {
                    self.hash_mut::<Endpoint, ReverseValue>(names::REVERSE)?
                        .insert(rk, rv, 0)
                        .with_context(|| format!("writing reverse entry for {}", s.name))?;
                    reverse_wanted.insert(rk);
                }
            }
            self.write_active(id, active)?;
            if known.is_none() {
                self.marks.set(id, &FlipMark::default())?;
            }
            // Last: the service becomes visible only once its pools are in place. A running
            // canary keeps its share and the affinity epoch stays: only the controller
            // changes them.
            let mut value = encode::service_value(s, id, known.map_or(0, |v| v.epoch));
            value.canary_share = known.map_or(0, |v| v.canary_share);
            self.write_entry(id, key, value)?;
            self.hash_mut::<Endpoint, ServiceValue>(names::SERVICES)?
                .insert(*key, value, 0)
                .with_context(|| format!("writing service {}", s.name))?;
            out.insert(s.name.clone(), id);
        }
        // Removed services go last: if a write above failed, the caller's restore finds them
        // as they were, with their ids (and so their flows and counters).
        for (key, v) in &existing {
            if !keys.contains(key) {
                self.remove_service(key, v.id)?;
                self.pools.retired.insert(v.id, Instant::now());
                self.pools.active.remove(&v.id);
            }
        }
        // Then the ports: each to the only service that uses it, or the hash, or nothing.
        for slot in old_slots.keys().chain(new_slots.keys()) {
            self.set_port_slot(*slot, new_slots.get(slot).copied().unwrap_or(PORT_NONE))?;
        }
        let live: HashSet<u32> = out.values().copied().collect();
        // Health verdicts only of members still in their pool: one that left and comes back
        // later starts in service, as a new member does.
        self.pools.down.retain(|(id, c, a)| {
            by_color
                .get(&(*id, *c))
                .is_some_and(|ms: &Vec<PoolMember>| ms.iter().any(|m| m.member.addr == *a))
        });
        self.pools.by_color = by_color;
        let stale: Vec<(Endpoint, ReverseValue)> = self
            .hash::<Endpoint, ReverseValue>(names::REVERSE)?
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, _)| !reverse_wanted.contains(k))
            .collect();
        // A member listed again is no longer draining.
        self.pools
            .draining_since
            .retain(|k, _| !reverse_wanted.contains(k));
        let mut marked = Vec::new();
        let mut rev = self.hash_mut::<Endpoint, ReverseValue>(names::REVERSE)?;
        for (k, v) in stale {
            // A member that left a remaining service may still carry connections: their
            // replies keep the VIP until the flow sweeper finds none left. A stateless UDP
            // service has no connections to wait for.
            if live.contains(&v.service_id) && v.flags & REV_F_STATELESS == 0 {
                if v.flags & REV_F_DRAINING == 0 {
                    let draining = ReverseValue {
                        flags: v.flags | REV_F_DRAINING,
                        ..v
                    };
                    rev.insert(k, draining, 0)
                        .context("marking a removed member's reverse entry")?;
                    marked.push(k);
                }
            } else {
                rev.remove(&k).context("removing stale reverse entry")?;
            }
        }
        let now = Instant::now();
        self.pools
            .draining_since
            .extend(marked.into_iter().map(|k| (k, now)));
        Ok(out)
    }

    /// See [`Datapath::retire_drained`].
    pub fn retire_drained(
        &mut self,
        unused: &[Endpoint],
        walked_at: Instant,
    ) -> Result<Vec<(u32, SocketAddr)>> {
        // Only what has been draining since before the sweeper's walk: a reload may have made
        // it a member again (and another removed it again, with new connections).
        let since = &self.pools.draining_since;
        let candidates: Vec<Endpoint> = unused
            .iter()
            .filter(|k| since.get(k).is_none_or(|at| *at < walked_at))
            .copied()
            .collect();
        let mut rev = self.hash_mut::<Endpoint, ReverseValue>(names::REVERSE)?;
        let mut retired = Vec::new();
        for k in candidates {
            // Only while still draining: it may be a member again.
            match rev.get(&k, 0) {
                Ok(v) if v.flags & REV_F_DRAINING != 0 => {
                    rev.remove(&k).context("removing a drained reverse entry")?;
                    retired.push((k, v.service_id));
                }
                _ => {}
            }
        }
        for (k, _) in &retired {
            self.pools.draining_since.remove(k);
        }
        Ok(retired
            .into_iter()
            .map(|(k, id)| (id, super::read::endpoint_addr(&k)))
            .collect())
    }

    /// A member removed from one service while connections still use it cannot join another
    /// yet: the reverse entry is per member, and the other service's would take the replies
    /// of those connections away from their VIP.
    fn refuse_draining_elsewhere(&self, services: &[Service], ids: &[u32]) -> Result<()> {
        let draining = super::read::draining(&self.hash(names::REVERSE)?);
        if draining.is_empty() {
            return Ok(());
        }
        let name_of = |id: u32| {
            services
                .iter()
                .zip(ids)
                .find(|(_, i)| **i == id)
                .map(|(s, _)| s.name.as_str())
        };
        for (s, &id) in services.iter().zip(ids) {
            for c in Color::BOTH {
                for (rk, _) in encode::reverse(s, c, id) {
                    let Some(&owner) = draining.get(&rk) else {
                        continue;
                    };
                    // Its old service stays (a service being removed lets go of it).
                    if let Some(other) = name_of(owner).filter(|_| owner != id) {
                        bail!(
                            "{} cannot join {c} of {}: it left {other}, whose connections still \
                             use it (its replies would lose their VIP); it can join once they \
                             have closed (`switcher status` shows them pinned)",
                            super::read::endpoint_addr(&rk),
                            s.name
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// After adopting the maps of an earlier daemon: which member holds which counter slot,
    /// read back from the pools in use, so counters stay with their members.
    fn recover_pools(&mut self, existing: &StdHashMap<Endpoint, ServiceValue>) -> Result<()> {
        for v in existing.values() {
            let active = self.reader.active(v.id)?;
            self.pools.active.insert(v.id, active);
            for c in Color::BOTH {
                let pool = self.reader.pool(v.id, c, active.buffer(c.index()))?;
                let members = (0..pool.members as usize)
                    .filter_map(|i| pool.member.get(i))
                    .filter(|b| b.valid != 0)
                    .map(|b| PoolMember {
                        member: crate::config::Member::new(super::read::socket_addr(b)),
                        slot: b.slot,
                        in_service: true,
                    })
                    .collect();
                self.pools.by_color.insert((v.id, c), members);
            }
        }
        Ok(())
    }

    fn write_pool(&mut self, id: u32, c: Color, buffer: u8, pool: &Pool) -> Result<()> {
        self.array_mut::<Pool>(names::POOLS)?
            .set(pool_index(id, c.index(), buffer), *pool, 0)
            .context("writing POOLS")?;
        // Which members the table names: UDP affinity keeps a sender on its member only while
        // it does. Written with the spare buffer, just before the switch to it: a packet in
        // between moves its sender one packet early, which the switch would do anyway.
        let mut in_table = [false; MAX_MEMBERS];
        for &m in pool.table.iter() {
            if let Some(x) = in_table.get_mut(usize::from(m)) {
                *x = true;
            }
        }
        let mut live = self.array_mut::<u32>(names::MEMBER_LIVE)?;
        for (b, named) in pool.member.iter().zip(in_table).take(pool.members as usize) {
            live.set(u32::from(b.slot), u32::from(named), 0)
                .context("writing MEMBER_LIVE")?;
        }
        Ok(())
    }

    fn zero_member_counters(&mut self, slot: u16) -> Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let map = self
            .ebpf
            .map_mut(names::MEMBER_COUNTERS)
            .ok_or_else(|| anyhow!("map {} missing", names::MEMBER_COUNTERS))?;
        let mut counters: PerCpuArray<_, MemberCounters> =
            PerCpuArray::try_from(map).context("MEMBER_COUNTERS")?;
        let zeros = PerCpuValues::try_from(vec![MemberCounters::default(); cpus])
            .context("per-CPU values")?;
        counters
            .set(u32::from(slot), zeros, 0)
            .context("zeroing a member's counters")
    }

    fn remove_service(&mut self, key: &Endpoint, id: u32) -> Result<()> {
        self.hash_mut::<Endpoint, ServiceValue>(names::SERVICES)?
            .remove(key)
            .context("removing service")?;
        for c in Color::BOTH {
            for buffer in [0, 1] {
                self.write_pool(id, c, buffer, &Pool::default())?;
            }
        }
        Ok(())
    }

    /// See [`Datapath::set_member_in_service`].
    pub fn set_member_in_service(
        &mut self,
        id: u32,
        c: Color,
        addr: SocketAddr,
        in_service: bool,
    ) -> Result<bool> {
        // The member first: a verdict about one that has left its pool changes nothing.
        let Some(members) = self.pools.by_color.get_mut(&(id, c)) else {
            bail!("service id {id} has no {c} pool");
        };
        let Some(m) = members.iter_mut().find(|m| m.member.addr == addr) else {
            bail!("{addr} is not a member of the {c} pool of service id {id}");
        };
        let key = (id, c, addr);
        let changed = if in_service {
            self.pools.down.remove(&key)
        } else {
            self.pools.down.insert(key)
        };
        if !changed {
            return Ok(false);
        }
        m.in_service = in_service;
        let pool = encode::pool(members)?;
        let active = self.active_word(id)?;
        self.write_pool(id, c, active.buffer(c.index()) ^ 1, &pool)?;
        self.write_active(id, active.pool_switched(c.index()))?;
        Ok(true)
    }

    /// See [`Datapath::set_canary`].
    pub fn set_canary(&mut self, id: u32, share: u32) -> Result<()> {
        self.update_service(id, |v| v.canary_share = share.min(0xffff))
            .context("writing the canary share")
    }

    /// See [`Datapath::void_affinity`].
    pub fn void_affinity(&mut self, id: u32) -> Result<()> {
        self.update_service(id, |v| v.epoch = v.epoch.wrapping_add(1))
            .context("writing the affinity epoch")
    }

    fn update_service(&mut self, id: u32, f: impl FnOnce(&mut ServiceValue)) -> Result<()> {
        let (key, mut v) = self
            .services()?
            .into_iter()
            .find(|(_, v)| v.id == id)
            .ok_or_else(|| anyhow!("service id {id} is not in the datapath"))?;
        f(&mut v);
        // A port that leads straight to this service leads through the hash while its entry
        // is rewritten (an array value is copied over in place, a hash value replaced whole);
        // if a write fails, the port stays there, where the new value is.
        let slot = port_slot(key.port(), key.proto, key.family);
        let direct = self
            .array_mut::<u32>(names::SERVICE_PORTS)?
            .get(&slot, 0)
            .context("reading SERVICE_PORTS")?
            == id + 1;
        if direct {
            self.set_port_slot(slot, PORT_SHARED)?;
        }
        self.hash_mut::<Endpoint, ServiceValue>(names::SERVICES)?
            .insert(key, v, 0)?;
        self.write_entry(id, &key, v)?;
        if direct {
            self.set_port_slot(slot, id + 1)?;
        }
        Ok(())
    }

    fn set_port_slot(&mut self, slot: u32, value: u32) -> Result<()> {
        self.array_mut::<u32>(names::SERVICE_PORTS)?
            .set(slot, value, 0)
            .context("writing SERVICE_PORTS")
    }

    /// Service `id`'s entry in SERVICE_BY_ID (read when its port leads to it directly).
    fn write_entry(&mut self, id: u32, key: &Endpoint, value: ServiceValue) -> Result<()> {
        let entry = ServiceEntry {
            key: *key,
            _pad: 0,
            value,
        };
        self.array_mut::<ServiceEntry>(names::SERVICE_BY_ID)?
            .set(id, entry, 0)
            .context("writing SERVICE_BY_ID")
    }

    /// All services in the maps: key → value.
    pub fn services(&self) -> Result<StdHashMap<Endpoint, ServiceValue>> {
        let m = self.hash::<Endpoint, ServiceValue>(names::SERVICES)?;
        m.iter()
            .map(|r| r.context("reading SERVICES"))
            .collect::<Result<_>>()
    }

    /// See [`Datapath::flip`]: writes the flip mark, then the one aligned 4-byte ACTIVE word
    /// that every following packet reads.
    pub fn flip(&mut self, id: u32, to: Color) -> Result<FlipOutcome> {
        let cur = self.active_word(id)?;
        let from = Color::from_index(cur.color());
        if from == to {
            return Ok(FlipOutcome::unchanged(cur));
        }
        // What this daemon last wrote says whether the colour has members; reading the pool
        // back (about 2.5 KB through bpf(2)) was the costliest part of the flip's writes.
        let empty = match self.pools.by_color.get(&(id, to)) {
            Some(members) => members.is_empty(),
            None => self.reader.pool(id, to, cur.buffer(to.index()))?.members == 0,
        };
        if empty {
            bail!("{to} has no backend");
        }
        let next = cur.flipped_to(to.index());
        let flip_ns = monotonic_ns()?;
        let mark = FlipMark {
            generation: next.generation(),
            _pad: 0,
            flip_ns,
            first_ns: [0; 2],
        };
        self.marks.set(id, &mark)?;
        self.write_active(id, next)?;
        Ok(FlipOutcome {
            from,
            to,
            generation: next.generation(),
            flip_ns,
            changed: true,
        })
    }

    /// Service `id`'s ACTIVE word: as last written by this daemon, else (maps adopted from an
    /// earlier one) read from the map.
    fn active_word(&self, id: u32) -> Result<ActiveWord> {
        match self.pools.active.get(&id) {
            Some(w) => Ok(*w),
            None => self.reader.active(id),
        }
    }

    fn write_active(&mut self, id: u32, word: ActiveWord) -> Result<()> {
        self.active.set(id, &word)?;
        self.pools.active.insert(id, word);
        Ok(())
    }

    /// See [`Datapath::set_redirect_targets`].
    pub fn set_redirect_targets(&mut self, ifindexes: &[u32]) -> Result<()> {
        let mut m = self.hash_mut::<u32, u32>(names::REDIRECT_OK)?;
        let stale: Vec<u32> = m
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !ifindexes.contains(k))
            .collect();
        for i in ifindexes {
            m.insert(i, 1, 0).context("writing REDIRECT_OK")?;
        }
        for k in stale {
            m.remove(&k).context("updating REDIRECT_OK")?;
        }
        Ok(())
    }
}

impl Datapath for BpfDatapath {
    fn apply(&mut self, services: &[Service]) -> Result<BTreeMap<String, u32>> {
        BpfDatapath::apply(self, services)
    }
    fn flip(&mut self, id: u32, to: Color) -> Result<FlipOutcome> {
        BpfDatapath::flip(self, id, to)
    }
    fn set_canary(&mut self, id: u32, share: u32) -> Result<()> {
        BpfDatapath::set_canary(self, id, share)
    }
    fn set_shadow(&mut self, id: u32, shadow: Option<super::Shadow>) -> Result<()> {
        BpfDatapath::set_shadow(self, id, shadow)
    }
    fn shadow_counters(&self, id: u32) -> Result<ShadowCounters> {
        BpfDatapath::shadow_counters(self, id)
    }
    fn void_affinity(&mut self, id: u32) -> Result<()> {
        BpfDatapath::void_affinity(self, id)
    }
    fn set_member_in_service(
        &mut self,
        id: u32,
        c: Color,
        addr: SocketAddr,
        in_service: bool,
    ) -> Result<bool> {
        BpfDatapath::set_member_in_service(self, id, c, addr, in_service)
    }
    fn retire_drained(
        &mut self,
        unused: &[Endpoint],
        walked_at: Instant,
    ) -> Result<Vec<(u32, SocketAddr)>> {
        BpfDatapath::retire_drained(self, unused, walked_at)
    }
    fn set_redirect_targets(&mut self, ifindexes: &[u32]) -> Result<()> {
        BpfDatapath::set_redirect_targets(self, ifindexes)
    }
    fn attach(&mut self, interfaces: &[String], mode: XdpMode) -> Result<()> {
        BpfDatapath::attach(self, interfaces, mode)
    }
    fn read(&self, id: u32) -> Result<ServiceReading> {
        self.reader.service(id)
    }
    fn members(&self, id: u32, c: Color) -> Result<Vec<super::MemberReading>> {
        self.reader.members(id, c)
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        self.reader.reasons()
    }
    fn census(&self) -> Result<Census> {
        self.reader.census_now()
    }
    fn for_each_flow(
        &self,
        f: &mut dyn FnMut(&switcher_common::FlowKey, &switcher_common::FlowValue),
    ) -> Result<()> {
        self.reader.for_each_flow(f)
    }
    fn close(self: Box<Self>, keep_attached: bool) -> Result<()> {
        BpfDatapath::close(*self, keep_attached)
    }
}
