//! Loads (or adopts) the eBPF datapath, attaches it, and programs its maps. Maps and links are
//! pinned under `<bpffs_dir>/v<ABI>/`, so a restarted daemon adopts them and traffic never
//! stops: the flow table, active colours and counters survive.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader,
};
use switcher_common::{
    backend_index, names, ActiveWord, Backend, ColorCounters, Endpoint, FlipMark, Reason,
    ReverseValue, ServiceValue, FAMILY_V4, FAMILY_V6, MAP_ABI_VERSION, MAX_SERVICES,
    SVC_F_REDIRECT, SVC_F_UDP_AFFINITY,
};

use crate::{
    bpffs,
    config::{Color, Forward, Service, XdpModeCfg},
};

/// The datapath object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switcher-ebpf"));

pub struct Datapath {
    ebpf: Ebpf,
    dir: PathBuf,
}

/// What a flip did, for the caller to report.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct FlipOutcome {
    pub from: Color,
    pub to: Color,
    pub generation: u32,
    /// CLOCK_MONOTONIC ns at the map write.
    pub flip_ns: u64,
    pub changed: bool,
}

impl Datapath {
    /// Loads the programs, creating the pinned maps under `bpffs_dir` or reusing the ones an
    /// earlier daemon left there.
    pub fn load(bpffs_dir: &Path) -> Result<Self> {
        bpffs::ensure_mounted(bpffs_dir)?;
        let dir = bpffs_dir.join(format!("v{MAP_ABI_VERSION}"));
        let maps_dir = dir.join("maps");
        for d in [&maps_dir, &dir.join("links")] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        check_pinned_layouts(&maps_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)
            .with_context(|| {
                format!(
                    "loading the datapath (maps pinned in {})",
                    maps_dir.display()
                )
            })?;
        let xdp: &mut Xdp = program(&mut ebpf, names::XDP_PROG)?;
        xdp.load()
            .context("verifier rejected the XDP ingress program")?;
        let tc: &mut SchedClassifier = program(&mut ebpf, names::TC_PROG)?;
        tc.load()
            .context("verifier rejected the TC egress program")?;
        Ok(Self { ebpf, dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn xdp_program(&self) -> Result<&Xdp> {
        self.ebpf
            .program(names::XDP_PROG)
            .ok_or_else(|| anyhow!("program {} missing", names::XDP_PROG))?
            .try_into()
            .context("XDP program type")
    }

    /// One of the reference programs the benchmark compares against (`bench_floor`,
    /// `bench_drop`), loaded on first use; the daemon never loads them.
    pub fn bench_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(prog)
    }

    /// Packets counted by the reference programs, summed over CPUs.
    pub fn bench_packets(&self) -> Result<u64> {
        let map: PerCpuArray<&MapData, u64> = self
            .ebpf
            .map("BENCH_PACKETS")
            .ok_or_else(|| anyhow!("map BENCH_PACKETS missing"))?
            .try_into()
            .context("BENCH_PACKETS type")?;
        Ok(map.get(&0, 0)?.iter().sum())
    }

    pub fn tc_program(&self) -> Result<&SchedClassifier> {
        self.ebpf
            .program(names::TC_PROG)
            .ok_or_else(|| anyhow!("program {} missing", names::TC_PROG))?
            .try_into()
            .context("TC program type")
    }

    /// Attaches XDP ingress and TC egress to each interface. Where a pinned link already
    /// exists (an earlier daemon), the program inside it is replaced atomically instead, so
    /// traffic never sees a moment without a program.
    pub fn attach(&mut self, interfaces: &[String], mode: XdpModeCfg) -> Result<()> {
        for ifname in interfaces {
            self.attach_xdp(ifname, mode)?;
            self.attach_tc(ifname)?;
        }
        Ok(())
    }

    fn attach_xdp(&mut self, ifname: &str, mode: XdpModeCfg) -> Result<()> {
        let pin = self.dir.join("links").join(format!("xdp-{ifname}"));
        let xdp: &mut Xdp = program(&mut self.ebpf, names::XDP_PROG)?;
        if let Some(link) = existing_link(&pin)? {
            let id = xdp
                .attach_to_link(link.try_into().context("pinned XDP link")?)
                .with_context(|| format!("replacing the XDP program on {ifname}"))?;
            // The pin keeps the link (and the program) attached; our handle can go.
            drop(xdp.take_link(id)?);
            return Ok(());
        }
        let mode = match mode {
            XdpModeCfg::Auto => XdpMode::Default,
            XdpModeCfg::Native => XdpMode::Driver,
            XdpModeCfg::Generic => XdpMode::Skb,
        };
        let id = xdp
            .attach(ifname, mode)
            .with_context(|| format!("attaching XDP to {ifname}"))?;
        let link: FdLink = xdp.take_link(id)?.try_into().with_context(|| {
            format!("XDP on {ifname} was attached without a bpf_link (kernel < 5.9?)")
        })?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(())
    }

    fn attach_tc(&mut self, ifname: &str) -> Result<()> {
        let pin = self.dir.join("links").join(format!("tc-{ifname}"));
        let tc: &mut SchedClassifier = program(&mut self.ebpf, names::TC_PROG)?;
        if let Some(link) = existing_link(&pin)? {
            let id = tc
                .attach_to_link(link.try_into().context("pinned TC link")?)
                .with_context(|| format!("replacing the TC program on {ifname}"))?;
            drop(tc.take_link(id)?);
            return Ok(());
        }
        let id = tc
            .attach_with_options(
                ifname,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching TC egress (tcx) to {ifname}"))?;
        let link: FdLink = tc
            .take_link(id)?
            .try_into()
            .with_context(|| format!("TC on {ifname} has no bpf_link (kernel < 6.6?)"))?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(())
    }

    /// Detaches from every interface and removes all pins: the datapath is gone once this
    /// process exits. Without this call the pinned datapath stays, for a hitless restart.
    pub fn remove(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        remove_pins(&dir)
    }

    // ---- programming services ----

    /// Writes `services` into the maps. Services found in the maps keep their id and their
    /// active colour (a flip made before a restart wins over the config's initial colour);
    /// services no longer configured are removed. Returns name → id.
    pub fn apply(&mut self, services: &[Service]) -> Result<BTreeMap<String, u32>> {
        let existing = self.services()?;
        let mut used: Vec<bool> = vec![false; MAX_SERVICES as usize];
        let mut ids = BTreeMap::new();
        let mut plan = Vec::new();
        for s in services {
            let key = service_key(s);
            if let Some(v) = existing.get(&key) {
                used[v.id as usize % MAX_SERVICES as usize] = true;
                plan.push((s, key, Some(v.id)));
            } else {
                plan.push((s, key, None));
            }
        }
        let mut next_free = 0usize;
        let mut alloc = || -> Result<u32> {
            while next_free < used.len() && used[next_free] {
                next_free += 1;
            }
            if next_free >= used.len() {
                bail!("no free service slot (max {MAX_SERVICES})");
            }
            used[next_free] = true;
            Ok(next_free as u32)
        };
        let mut resolved = Vec::new();
        for (s, key, id) in plan {
            let id = match id {
                Some(id) => id,
                None => alloc()?,
            };
            resolved.push((s, key, id, existing.contains_key(&key)));
        }

        let wanted: Vec<Endpoint> = resolved.iter().map(|(_, k, _, _)| *k).collect();
        // Ports first: a service must never be visible while its port is still filtered out.
        let ports: std::collections::BTreeSet<u16> =
            resolved.iter().map(|(s, _, _, _)| s.port).collect();
        let mut port_map = self.array_mut::<u32>(names::SERVICE_PORTS)?;
        for p in &ports {
            port_map
                .set(u32::from(*p), 1, 0)
                .context("writing SERVICE_PORTS")?;
        }
        for (key, v) in &existing {
            if !wanted.contains(key) {
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
        for (s, key, id, known) in resolved {
            for c in [Color::Blue, Color::Green] {
                let b = s.backend(c).map(backend_of).unwrap_or_default();
                self.array_mut::<Backend>(names::BACKENDS)?
                    .set(backend_index(id, c.index()), b, 0)
                    .with_context(|| format!("writing {} backend of {}", c, s.name))?;
                if let Some(addr) = s.backend(c) {
                    let rk = endpoint(addr.ip(), addr.port(), s.protocol.number());
                    let rv = ReverseValue {
                        vip: addr_bytes(s.vip),
                        vport_be: s.port.to_be(),
                        family: family(s.vip),
                        color: c.index(),
                        service_id: id,
                    };
                    self.hash_mut::<Endpoint, ReverseValue>(names::REVERSE)?
                        .insert(rk, rv, 0)
                        .with_context(|| format!("writing reverse entry for {}", s.name))?;
                    reverse_wanted.push(rk);
                }
            }
            if !known {
                self.array_mut::<ActiveWord>(names::ACTIVE)?
                    .set(id, ActiveWord::new(s.active.index(), 0), 0)
                    .context("writing ACTIVE")?;
                self.array_mut::<FlipMark>(names::FLIP_MARKS)?
                    .set(id, FlipMark::default(), 0)
                    .context("writing FLIP_MARKS")?;
            }
            // Last: the service becomes visible only once its backends are in place. A
            // running canary keeps its share: only the controller starts and ends it.
            let mut value = service_value(s, id);
            value.canary_share = existing.get(&key).map_or(0, |v| v.canary_share);
            self.hash_mut::<Endpoint, ServiceValue>(names::SERVICES)?
                .insert(key, value, 0)
                .with_context(|| format!("writing service {}", s.name))?;
            ids.insert(s.name.clone(), id);
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
        Ok(ids)
    }

    fn remove_service(&mut self, key: &Endpoint, id: u32) -> Result<()> {
        self.hash_mut::<Endpoint, ServiceValue>(names::SERVICES)?
            .remove(key)
            .context("removing service")?;
        for c in [Color::Blue, Color::Green] {
            self.array_mut::<Backend>(names::BACKENDS)?
                .set(backend_index(id, c.index()), Backend::default(), 0)
                .context("clearing backend")?;
        }
        Ok(())
    }

    /// Sets the canary share (1/65536 of new flows to the inactive colour) of service `id`.
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

    pub fn active(&self, id: u32) -> Result<ActiveWord> {
        self.array::<ActiveWord>(names::ACTIVE)?
            .get(&id, 0)
            .with_context(|| format!("reading ACTIVE[{id}]"))
    }

    pub fn flip_mark(&self, id: u32) -> Result<FlipMark> {
        self.array::<FlipMark>(names::FLIP_MARKS)?
            .get(&id, 0)
            .with_context(|| format!("reading FLIP_MARKS[{id}]"))
    }

    pub fn backend(&self, id: u32, c: Color) -> Result<Backend> {
        self.array::<Backend>(names::BACKENDS)?
            .get(&backend_index(id, c.index()), 0)
            .context("reading BACKENDS")
    }

    /// Flips service `id` to `to`: writes the flip mark, then the one aligned 4-byte ACTIVE
    /// word that every following packet reads.
    pub fn flip(&mut self, id: u32, to: Color) -> Result<FlipOutcome> {
        let cur = self.active(id)?;
        let from = Color::from_index(cur.color());
        if from == to {
            return Ok(FlipOutcome {
                from,
                to,
                generation: cur.generation(),
                flip_ns: 0,
                changed: false,
            });
        }
        if self.backend(id, to)?.valid == 0 {
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

    /// Per-colour counters of service `id`, summed over CPUs.
    pub fn color_counters(&self, id: u32, c: Color) -> Result<ColorCounters> {
        let m: PerCpuArray<&MapData, ColorCounters> = PerCpuArray::try_from(
            self.ebpf
                .map(names::COLOR_COUNTERS)
                .ok_or_else(|| anyhow!("map {} missing", names::COLOR_COUNTERS))?,
        )?;
        let per_cpu = m
            .get(&backend_index(id, c.index()), 0)
            .context("reading COLOR_COUNTERS")?;
        let mut total = ColorCounters::default();
        for v in per_cpu.iter() {
            total.add(v);
        }
        Ok(total)
    }

    /// Every reason counter, summed over CPUs.
    pub fn reason_counters(&self) -> Result<Vec<(Reason, u64)>> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(names::REASON_COUNTERS)
                .ok_or_else(|| anyhow!("map {} missing", names::REASON_COUNTERS))?,
        )?;
        Reason::ALL
            .iter()
            .map(|r| {
                let v = m.get(&(*r as u32), 0).context("reading REASON_COUNTERS")?;
                Ok((*r, v.iter().sum()))
            })
            .collect()
    }

    /// Makes `ifindexes` the interfaces the datapath may XDP_REDIRECT to.
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

    /// Open TCP flows (no FIN/RST seen) pinned to `color` of service `id`: connections that
    /// would break if that colour's backend were replaced now. Walks the flow table.
    pub fn open_flows(&self, id: u32, color: Color) -> Result<usize> {
        Ok(self
            .flows()?
            .iter()
            .filter(|(_, v)| {
                v.service_id == id
                    && v.color == color.index()
                    && v.state == switcher_common::FLOW_OPEN
            })
            .count())
    }

    /// Entries in the flow table (walks it: for status and tests, not hot paths).
    pub fn flow_count(&self) -> Result<usize> {
        let mut n = 0;
        crate::flow_table::for_each(&self.hash(names::FLOWS)?, |_, _| n += 1)?;
        Ok(n)
    }

    /// Every flow table entry: (key, value).
    pub fn flows(&self) -> Result<Vec<(switcher_common::FlowKey, switcher_common::FlowValue)>> {
        let mut all = Vec::new();
        crate::flow_table::for_each(&self.hash(names::FLOWS)?, |k, v| all.push((*k, *v)))?;
        Ok(all)
    }

    fn array<T: aya::Pod>(&self, name: &str) -> Result<Array<&MapData, T>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        Array::try_from(map).with_context(|| format!("map {name}"))
    }

    fn array_mut<T: aya::Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, T>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        Array::try_from(map).with_context(|| format!("map {name}"))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<HashMap<&MapData, K, V>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        HashMap::try_from(map).with_context(|| format!("map {name}"))
    }

    fn hash_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        HashMap::try_from(map).with_context(|| format!("map {name}"))
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the datapath object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Refuses to adopt pinned maps whose layout differs from this build's (the loader would
/// reuse them as they are, and the programs would read them wrongly or fail to verify).
fn check_pinned_layouts(maps_dir: &Path) -> Result<()> {
    use std::mem::size_of;
    use switcher_common::{FlowKey, FlowValue, FragKey, FragValue};
    let expected: [(&str, usize, usize); 11] = [
        (
            names::SERVICES,
            size_of::<Endpoint>(),
            size_of::<ServiceValue>(),
        ),
        (names::BACKENDS, 4, size_of::<Backend>()),
        (names::ACTIVE, 4, size_of::<ActiveWord>()),
        (names::FLIP_MARKS, 4, size_of::<FlipMark>()),
        (names::FLOWS, size_of::<FlowKey>(), size_of::<FlowValue>()),
        (names::FRAGS, size_of::<FragKey>(), size_of::<FragValue>()),
        (
            names::REVERSE,
            size_of::<Endpoint>(),
            size_of::<ReverseValue>(),
        ),
        (names::COLOR_COUNTERS, 4, size_of::<ColorCounters>()),
        (names::REASON_COUNTERS, 4, size_of::<u64>()),
        (names::REDIRECT_OK, 4, 4),
        (names::SERVICE_PORTS, 4, 4),
    ];
    for (name, key, value) in expected {
        let pin = maps_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&pin)
            .with_context(|| format!("reading pinned map {}", pin.display()))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            bail!(
                "pinned map {} has key/value sizes {}/{} but this switcher needs {key}/{value}: \
                 it was made by an incompatible build. Stop the old daemon and run `switcher \
                 detach` (this interrupts switching), then start this one",
                pin.display(),
                info.key_size(),
                info.value_size()
            );
        }
    }
    Ok(())
}

/// A link an earlier daemon pinned, or `None` if there is none.
fn existing_link(pin: &Path) -> Result<Option<FdLink>> {
    match PinnedLink::from_pin(pin) {
        Ok(p) => Ok(Some(FdLink::from(p))),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
    }
}

/// Removes a versioned datapath folder: unpinning the links detaches the programs once no
/// process holds them, unpinning the maps frees them.
pub fn remove_pins(dir: &Path) -> Result<()> {
    for sub in ["links", "maps"] {
        let d = dir.join(sub);
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let p = e
                .with_context(|| format!("listing {}", d.display()))?
                .path();
            std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
        }
        std::fs::remove_dir(&d).with_context(|| format!("removing {}", d.display()))?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", dir.display()));
        }
        _ => {}
    }
    // The configured folder too, when no other ABI version lives in it.
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

pub fn endpoint(ip: IpAddr, port: u16, proto: u8) -> Endpoint {
    Endpoint {
        addr: addr_bytes(ip),
        port_be: port.to_be(),
        proto,
        family: family(ip),
    }
}

pub fn service_key(s: &Service) -> Endpoint {
    endpoint(s.vip, s.port, s.protocol.number())
}

fn backend_of(a: SocketAddr) -> Backend {
    Backend {
        addr: addr_bytes(a.ip()),
        port_be: a.port().to_be(),
        family: family(a.ip()),
        valid: 1,
    }
}

pub fn service_value(s: &Service, id: u32) -> ServiceValue {
    let mut flags = 0;
    if s.forward == Forward::Redirect {
        flags |= SVC_F_REDIRECT;
    }
    if s.udp_affinity_idle.is_some() {
        flags |= SVC_F_UDP_AFFINITY;
    }
    ServiceValue {
        id,
        flags,
        udp_idle_ns: s.udp_affinity_idle.map_or(0, |d| d.as_nanos() as u64),
        drain_ns: s.drain.as_nanos() as u64,
        canary_share: 0,
        _pad: 0,
    }
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns reads.
pub fn monotonic_ns() -> Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .context("clock_gettime(CLOCK_MONOTONIC)")?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}
