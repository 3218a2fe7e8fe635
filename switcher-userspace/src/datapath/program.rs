//! Writing the maps: services (in an order that never shows a packet a half-programmed
//! service), flips, canary shares and the redirect allow-list; and [`Datapath`] for
//! [`BpfDatapath`].

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap};

use anyhow::{anyhow, bail, Context as _, Result};
use switcher_common::{
    backend_index, names, ActiveWord, Backend, Endpoint, FlipMark, Reason, ReverseValue,
    ServiceValue,
};

use super::{
    encode, monotonic_ns, read::Census, BpfDatapath, Datapath, FlipOutcome, ServiceReading,
};
use crate::{
    config::Service,
    domain::{Color, XdpMode},
};

impl BpfDatapath {
    /// See [`Datapath::apply`].
    pub fn apply(&mut self, services: &[Service]) -> Result<BTreeMap<String, u32>> {
        let existing = self.services()?;
        let keys: Vec<Endpoint> = services.iter().map(encode::service_key).collect();
        let existing_ids: StdHashMap<Endpoint, u32> =
            existing.iter().map(|(k, v)| (*k, v.id)).collect();
        let ids = encode::assign_ids(&existing_ids, &keys)?;

        // Ports first: a service must never be visible while its port is still filtered out.
        let ports: BTreeSet<u16> = services.iter().map(|s| s.port).collect();
        let mut port_map = self.array_mut::<u32>(names::SERVICE_PORTS)?;
        for p in &ports {
            port_map
                .set(u32::from(*p), 1, 0)
                .context("writing SERVICE_PORTS")?;
        }
        for (key, v) in &existing {
            if !keys.contains(key) {
                self.remove_service(key, v.id)?;
            }
        }
        // Then the ports of removed services that no remaining service uses.
        let mut port_map = self.array_mut::<u32>(names::SERVICE_PORTS)?;
        for key in existing.keys() {
            let p = u16::from_be(key.port_be);
            if !ports.contains(&p) {
                port_map
                    .set(u32::from(p), 0, 0)
                    .context("clearing SERVICE_PORTS")?;
            }
        }
        let mut reverse_wanted = Vec::new();
        let mut out = BTreeMap::new();
        for ((s, key), id) in services.iter().zip(&keys).zip(ids) {
            for c in Color::BOTH {
                let b = s.backend(c).map(encode::backend).unwrap_or_default();
                self.array_mut::<Backend>(names::BACKENDS)?
                    .set(backend_index(id, c.index()), b, 0)
                    .with_context(|| format!("writing {} backend of {}", c, s.name))?;
                if let Some((rk, rv)) = encode::reverse(s, c, id) {
                    self.hash_mut::<Endpoint, ReverseValue>(names::REVERSE)?
                        .insert(rk, rv, 0)
                        .with_context(|| format!("writing reverse entry for {}", s.name))?;
                    reverse_wanted.push(rk);
                }
            }
            let known = existing.get(key);
            if known.is_none() {
                self.array_mut::<ActiveWord>(names::ACTIVE)?
                    .set(id, ActiveWord::new(s.active.index(), 0), 0)
                    .context("writing ACTIVE")?;
                self.array_mut::<FlipMark>(names::FLIP_MARKS)?
                    .set(id, FlipMark::default(), 0)
                    .context("writing FLIP_MARKS")?;
            }
            // Last: the service becomes visible only once its backends are in place. A
            // running canary keeps its share: only the controller starts and ends it.
            let mut value = encode::service_value(s, id);
            value.canary_share = known.map_or(0, |v| v.canary_share);
            self.hash_mut::<Endpoint, ServiceValue>(names::SERVICES)?
                .insert(*key, value, 0)
                .with_context(|| format!("writing service {}", s.name))?;
            out.insert(s.name.clone(), id);
        }
        let stale: Vec<Endpoint> = self
            .hash::<Endpoint, ReverseValue>(names::REVERSE)?
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !reverse_wanted.contains(k))
            .collect();
        let mut rev = self.hash_mut::<Endpoint, ReverseValue>(names::REVERSE)?;
        for k in stale {
            rev.remove(&k).context("removing stale reverse entry")?;
        }
        Ok(out)
    }

    fn remove_service(&mut self, key: &Endpoint, id: u32) -> Result<()> {
        self.hash_mut::<Endpoint, ServiceValue>(names::SERVICES)?
            .remove(key)
            .context("removing service")?;
        for c in Color::BOTH {
            self.array_mut::<Backend>(names::BACKENDS)?
                .set(backend_index(id, c.index()), Backend::default(), 0)
                .context("clearing backend")?;
        }
        Ok(())
    }

    /// See [`Datapath::set_canary`].
    pub fn set_canary(&mut self, id: u32, share: u32) -> Result<()> {
        let (key, mut v) = self
            .services()?
            .into_iter()
            .find(|(_, v)| v.id == id)
            .ok_or_else(|| anyhow!("service id {id} is not in the datapath"))?;
        v.canary_share = share.min(0xffff);
        self.hash_mut::<Endpoint, ServiceValue>(names::SERVICES)?
            .insert(key, v, 0)
            .context("writing the canary share")
    }

    /// All services in the maps: key → value.
    pub fn services(&self) -> Result<StdHashMap<Endpoint, ServiceValue>> {
        let m = self.hash::<Endpoint, ServiceValue>(names::SERVICES)?;
        m.iter()
            .map(|r| r.context("reading SERVICES"))
            .collect::<Result<_>>()
    }

    fn backend_slot(&self, id: u32, c: Color) -> Result<Backend> {
        self.array::<Backend>(names::BACKENDS)?
            .get(&backend_index(id, c.index()), 0)
            .context("reading BACKENDS")
    }

    /// See [`Datapath::flip`]: writes the flip mark, then the one aligned 4-byte ACTIVE word
    /// that every following packet reads.
    pub fn flip(&mut self, id: u32, to: Color) -> Result<FlipOutcome> {
        let cur = self.reader.active(id)?;
        let from = Color::from_index(cur.color());
        if from == to {
            return Ok(FlipOutcome::unchanged(cur));
        }
        if self.backend_slot(id, to)?.valid == 0 {
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
        self.array_mut::<FlipMark>(names::FLIP_MARKS)?
            .set(id, mark, 0)
            .context("writing FLIP_MARKS")?;
        self.array_mut::<ActiveWord>(names::ACTIVE)?
            .set(id, next, 0)
            .context("writing ACTIVE")?;
        Ok(FlipOutcome {
            from,
            to,
            generation: next.generation(),
            flip_ns,
            changed: true,
        })
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
    fn set_redirect_targets(&mut self, ifindexes: &[u32]) -> Result<()> {
        BpfDatapath::set_redirect_targets(self, ifindexes)
    }
    fn attach(&mut self, interfaces: &[String], mode: XdpMode) -> Result<()> {
        BpfDatapath::attach(self, interfaces, mode)
    }
    fn read(&self, id: u32) -> Result<ServiceReading> {
        self.reader.service(id)
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        self.reader.reasons()
    }
    fn census(&self) -> Result<Census> {
        self.reader.census_now()
    }
    fn close(self: Box<Self>, keep_attached: bool) -> Result<()> {
        BpfDatapath::close(*self, keep_attached)
    }
}
