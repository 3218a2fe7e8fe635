//! Loading the eBPF object, creating its pinned maps under `<bpffs_dir>/v<ABI>/` or adopting
//! the ones an earlier daemon left, and attaching the programs through pinned links. A
//! restarted daemon adopts the pins, so traffic never stops: the flow table, active colours
//! and counters survive.

use std::{
    io,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        LinkOrder, SchedClassifier, TcAttachType, Xdp,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader,
};
use switcher_common::{
    names, ActiveWord, ColorCounters, Endpoint, FlipMark, FlowKey, FlowValue, FragKey, FragValue,
    GelfKey, MemberCounters, Pool, ReverseValue, ServiceEntry, ServiceValue, ShadowCounters,
    ShadowValue, MAP_ABI_VERSION,
};
use tracing::{info, warn};

use super::{bpffs, mapped::MappedArray, read::MapReader};
use crate::domain::XdpMode;

/// The datapath object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switcher-ebpf"));

/// The loaded datapath: its programs, its pinned maps and a reader on them.
pub struct BpfDatapath {
    pub(super) ebpf: Ebpf,
    pub(super) reader: MapReader,
    /// ACTIVE and FLIP_MARKS, mapped: the flip's writes.
    pub(super) active: MappedArray<ActiveWord>,
    pub(super) marks: MappedArray<FlipMark>,
    dir: PathBuf,
    /// What each colour of each programmed service holds, as last written (the health
    /// monitor's changes rebuild a pool from it).
    pub(super) pools: super::program::Pools,
    /// Services whose shadowing is on (SHADOW_ANY opens while there is one).
    pub(super) shadowing: std::collections::BTreeSet<u32>,
    /// Nothing was pinned before this load: a start that fails may remove every pin.
    fresh: bool,
}

impl BpfDatapath {
    /// Loads the programs, creating the pinned maps under `bpffs_dir` or reusing the ones an
    /// earlier daemon left there.
    pub fn load(bpffs_dir: &Path) -> Result<Self> {
        Self::load_object(bpffs_dir, EBPF_OBJECT)
    }

    /// [`BpfDatapath::load`] with another build of the eBPF object (the benchmark compares
    /// two builds side by side); the daemon always runs its own.
    pub fn load_object(bpffs_dir: &Path, object: &[u8]) -> Result<Self> {
        bpffs::ensure_mounted(bpffs_dir)?;
        let dir = super::pins_dir(bpffs_dir);
        let maps_dir = super::maps_dir(bpffs_dir);
        refuse_other_abi_versions(bpffs_dir)?;
        for d in [&maps_dir, &dir.join("links")] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        check_pinned_layouts(&maps_dir)?;
        // Nothing pinned yet: whatever this load pins is ours to remove if it fails (e.g. a
        // capability missing). Pins adopted from an earlier daemon are never removed here;
        // a start that fails later (attaching) is undone by the daemon (`remove_pins`).
        let fresh = is_empty(&maps_dir)? && is_empty(&dir.join("links"))?;
        let loaded = Self::load_pinned(&maps_dir, dir.clone(), object).map(|d| Self { fresh, ..d });
        if loaded.is_err() && fresh {
            if let Err(e) = remove_pins(&dir) {
                warn!("removing the pins of a failed load: {e:#}");
            }
        }
        loaded
    }

    fn load_pinned(maps_dir: &Path, dir: PathBuf, object: &[u8]) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(maps_dir)
            .load(object)
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
        let shadow: &mut SchedClassifier = program(&mut ebpf, names::TC_SHADOW_PROG)?;
        shadow
            .load()
            .context("verifier rejected the TC shadow (ingress) program")?;
        let reader = MapReader::open(maps_dir)?;
        Ok(Self {
            ebpf,
            reader,
            active: MappedArray::open(&maps_dir.join(names::ACTIVE))?,
            marks: MappedArray::open(&maps_dir.join(names::FLIP_MARKS))?,
            dir,
            pools: Default::default(),
            shadowing: Default::default(),
            fresh: false,
        })
    }

    /// Whether this load found nothing pinned (it created the maps).
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// The versioned pin folder (maps and links).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ingress program, for BPF_PROG_TEST_RUN.
    pub fn xdp_program(&self) -> Result<&Xdp> {
        self.ebpf
            .program(names::XDP_PROG)
            .ok_or_else(|| anyhow!("program {} missing", names::XDP_PROG))?
            .try_into()
            .context("XDP program type")
    }

    /// The shadow (TC ingress) program, for BPF_PROG_TEST_RUN.
    pub fn shadow_program(&self) -> Result<&SchedClassifier> {
        self.ebpf
            .program(names::TC_SHADOW_PROG)
            .ok_or_else(|| anyhow!("program {} missing", names::TC_SHADOW_PROG))?
            .try_into()
            .context("TC program type")
    }

    /// The egress program, for BPF_PROG_TEST_RUN.
    pub fn tc_program(&self) -> Result<&SchedClassifier> {
        self.ebpf
            .program(names::TC_PROG)
            .ok_or_else(|| anyhow!("program {} missing", names::TC_PROG))?
            .try_into()
            .context("TC program type")
    }

    /// Read access to the maps (the same pins the metrics read).
    pub fn reader(&self) -> &MapReader {
        &self.reader
    }

    /// Attaches XDP ingress, TC egress and the TC ingress shadow program to each interface.
    /// Where a pinned link already exists (an earlier daemon), the program inside it is
    /// replaced atomically instead, so traffic never sees a moment without a program.
    pub fn attach(&mut self, interfaces: &[String], mode: XdpMode) -> Result<()> {
        for ifname in interfaces {
            self.drop_stale_links(ifname)?;
            self.attach_xdp(ifname, mode)?;
            self.attach_tc(ifname, names::TC_PROG, TcAttachType::Egress, "tc")?;
            self.attach_tc(
                ifname,
                names::TC_SHADOW_PROG,
                TcAttachType::Ingress,
                "tc-ingress",
            )?;
        }
        Ok(())
    }

    /// A pinned XDP link whose program no longer runs on its interface (the interface was
    /// deleted and made again, or the link was detached by hand) cannot be updated: the
    /// kernel refuses, and a restart would fail for good. Such links, and the interface's TC
    /// links pinned with them, are unpinned so the programs are attached afresh.
    fn drop_stale_links(&mut self, ifname: &str) -> Result<()> {
        let links = self.dir.join("links");
        let Some(link) = existing_link(&links.join(format!("xdp-{ifname}")))? else {
            return Ok(());
        };
        let ours = link
            .info()
            .with_context(|| format!("reading the pinned XDP link of {ifname}"))?
            .program_id();
        let (mode, running) = super::xdp_attached::query(ifname)?;
        if mode != super::xdp_attached::Attached::None && running == ours {
            return Ok(());
        }
        warn!(
            interface = ifname,
            "the pinned XDP link no longer runs on {ifname} (XDP there: {}, program {running}); attaching afresh",
            mode.label()
        );
        for prefix in ["xdp", "tc", "tc-ingress"] {
            let pin = links.join(format!("{prefix}-{ifname}"));
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("unpinning {}", pin.display())),
            }
        }
        Ok(())
    }

    fn attach_xdp(&mut self, ifname: &str, mode: XdpMode) -> Result<()> {
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
            XdpMode::Auto => aya::programs::XdpMode::Default,
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Generic => aya::programs::XdpMode::Skb,
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

    fn attach_tc(
        &mut self,
        ifname: &str,
        prog: &str,
        hook: TcAttachType,
        pin_prefix: &str,
    ) -> Result<()> {
        let pin = self
            .dir
            .join("links")
            .join(format!("{pin_prefix}-{ifname}"));
        let tc: &mut SchedClassifier = program(&mut self.ebpf, prog)?;
        if let Some(link) = existing_link(&pin)? {
            let id = tc
                .attach_to_link(link.try_into().context("pinned TC link")?)
                .with_context(|| format!("replacing the TC {hook:?} program on {ifname}"))?;
            drop(tc.take_link(id)?);
            return Ok(());
        }
        let id = tc
            .attach_with_options(
                ifname,
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching TC {hook:?} (tcx) to {ifname}"))?;
        let link: FdLink = tc
            .take_link(id)?
            .try_into()
            .with_context(|| format!("TC on {ifname} has no bpf_link (kernel < 6.6?)"))?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(())
    }

    /// Detaches from every interface and removes all pins (`keep_attached`: leaves both, for
    /// a hitless restart or upgrade).
    pub fn close(self, keep_attached: bool) -> Result<()> {
        let dir = self.dir.clone();
        if keep_attached {
            info!(pins = %dir.display(), "leaving the datapath attached and pinned");
            return Ok(());
        }
        // Our link handles were dropped after pinning: unpinning detaches the programs.
        drop(self);
        remove_pins(&dir)?;
        info!(pins = %dir.display(), "datapath detached and unpinned");
        Ok(())
    }

    pub(super) fn array_mut<T: aya::Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, T>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        Array::try_from(map).with_context(|| format!("map {name}"))
    }

    pub(super) fn hash<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
    ) -> Result<HashMap<&MapData, K, V>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        HashMap::try_from(map).with_context(|| format!("map {name}"))
    }

    pub(super) fn hash_mut<K: aya::Pod, V: aya::Pod>(
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

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
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
    let expected: [(&str, usize, usize); 20] = [
        (
            names::SERVICES,
            size_of::<Endpoint>(),
            size_of::<ServiceValue>(),
        ),
        (names::POOLS, 4, size_of::<Pool>()),
        (names::ACTIVE, 4, size_of::<ActiveWord>()),
        (names::FLIP_MARKS, 4, size_of::<FlipMark>()),
        (names::FLOWS, size_of::<FlowKey>(), size_of::<FlowValue>()),
        (
            names::HALF_FLOWS,
            size_of::<FlowKey>(),
            size_of::<FlowValue>(),
        ),
        (
            names::SOFT_FLOWS,
            size_of::<FlowKey>(),
            size_of::<FlowValue>(),
        ),
        (names::MEMBER_COUNTERS, 4, size_of::<MemberCounters>()),
        (names::MEMBER_LIVE, 4, 4),
        (names::FRAGS, size_of::<FragKey>(), size_of::<FragValue>()),
        (
            names::GELF_CHUNKS,
            size_of::<GelfKey>(),
            size_of::<FragValue>(),
        ),
        (
            names::REVERSE,
            size_of::<Endpoint>(),
            size_of::<ReverseValue>(),
        ),
        (names::COLOR_COUNTERS, 4, size_of::<ColorCounters>()),
        (names::REASON_COUNTERS, 4, size_of::<u64>()),
        (names::SHADOW, 4, size_of::<ShadowValue>()),
        (names::SHADOW_ANY, 4, 4),
        (names::SHADOW_COUNTERS, 4, size_of::<ShadowCounters>()),
        (names::REDIRECT_OK, 4, 4),
        (names::SERVICE_PORTS, 4, 4),
        (names::SERVICE_BY_ID, 4, size_of::<ServiceEntry>()),
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

/// A datapath of another map layout still pinned under `bpffs_dir` (an older or newer build)
/// holds the interfaces: this one could neither adopt it nor attach beside it.
fn refuse_other_abi_versions(bpffs_dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(bpffs_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let other = name
            .strip_prefix('v')
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| *v != MAP_ABI_VERSION);
        if let Some(v) = other {
            bail!(
                "a datapath with map layout v{v} is pinned in {} (this switcher uses v{MAP_ABI_VERSION}): \
                 the maps cannot be adopted. Stop the old daemon and run `switcher detach` (this \
                 interrupts switching until this daemon starts), then start this one",
                e.path().display()
            );
        }
    }
    Ok(())
}

fn is_empty(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .next()
        .is_none())
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
