//! The datapath adapter: everything the controller asks of the XDP/TC programs and their
//! maps, behind the small [`Datapath`] trait. [`BpfDatapath`] is the real one (aya, pinned under
//! bpffs); tests use an in-memory fake, so the controller is tested without root.
//!
//! The aya side is split by concern: [`loader`] (load or adopt, attach, pins), [`program`]
//! (writing services, flips, canaries), [`read`] (counters, marks, the flow table),
//! [`sweep`] (removing closed and idle connections), [`encode`] (pure map entries and ids).

pub mod bpffs;
pub mod encode;
#[cfg(test)]
pub(crate) mod fake;
mod flow_table;
pub mod loader;
mod mapped;
mod netlink;
mod program;
pub mod read;
mod shadow;
pub mod sweep;
pub mod xdp_attached;
pub mod xdp_features;

#[cfg(feature = "bench")]
mod bench;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result};
use switcher_common::{Endpoint, Reason, ShadowCounters, MAP_ABI_VERSION};

pub use loader::{remove_pins, BpfDatapath};
pub use read::{Census, MapReader, MemberReading, ServiceReading};
pub use sweep::{FlowPolicy, FlowSweep, FlowSweeper};

use crate::{
    config::Service,
    domain::{Color, XdpMode},
};

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

impl FlipOutcome {
    /// A flip to the colour that is active already: nothing written.
    pub fn unchanged(active: switcher_common::ActiveWord) -> Self {
        let c = Color::from_index(active.color());
        Self {
            from: c,
            to: c,
            generation: active.generation(),
            flip_ns: 0,
            changed: false,
        }
    }
}

/// Shadowing of one service: `share` (1/65536) of its UDP packets copied to a member of
/// `color`'s pool at `port`, until the kernel's monotonic clock reads `until_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shadow {
    pub share: u32,
    pub color: Color,
    pub port: u16,
    pub until_ns: u64,
}

/// What the controller needs of the datapath. Implementations write the maps in an order that
/// never lets a packet see a half-programmed service.
pub trait Datapath: Send {
    /// Programs exactly `services` (the ones not listed are removed). Services already in the
    /// maps keep their id and their active colour (a flip made before a restart wins over the
    /// config's initial colour) and a running canary keeps its share. Returns name → id.
    fn apply(&mut self, services: &[Service]) -> Result<BTreeMap<String, u32>>;
    /// The one aligned write of service `id`'s active word that every following packet reads.
    fn flip(&mut self, id: u32, to: Color) -> Result<FlipOutcome>;
    /// The canary share (1/65536 of new flows to the inactive colour) of service `id`.
    fn set_canary(&mut self, id: u32, share: u32) -> Result<()>;
    /// Copies of a share of service `id`'s UDP packets to its candidate ([`Shadow`]), or
    /// none.
    fn set_shadow(&mut self, id: u32, shadow: Option<Shadow>) -> Result<()>;
    /// The copies service `id`'s shadowing made (and failed to make) so far.
    fn shadow_counters(&self, id: u32) -> Result<ShadowCounters>;
    /// Voids service `id`'s UDP affinity entries at once (a rollback: every sender moves).
    fn void_affinity(&mut self, id: u32) -> Result<()>;
    /// Takes a member of a colour's pool out of service (no new flows; its established ones
    /// stay) or puts it back; only its share of new flows moves. True when it changed.
    fn set_member_in_service(
        &mut self,
        id: u32,
        color: Color,
        addr: SocketAddr,
        in_service: bool,
    ) -> Result<bool>;
    /// Of the members a reload removed from their pool while connections still used them,
    /// lets go of those in `unused` (the flow sweeper found no flow on them): their replies no
    /// longer need the VIP. A member a reload has made a member again, or marked draining
    /// again after `walked_at` (when the sweeper's walk began), stays. Returns the (service
    /// id, member) let go.
    fn retire_drained(
        &mut self,
        unused: &[Endpoint],
        walked_at: Instant,
    ) -> Result<Vec<(u32, SocketAddr)>>;
    /// The interfaces the datapath may XDP_REDIRECT to.
    fn set_redirect_targets(&mut self, ifindexes: &[u32]) -> Result<()>;
    /// Attaches to `interfaces`, replacing the programs inside links an earlier daemon left.
    fn attach(&mut self, interfaces: &[String], mode: XdpMode) -> Result<()>;
    /// Active word, flip mark and counters of service `id`.
    fn read(&self, id: u32) -> Result<ServiceReading>;
    /// The members of `c`'s pool in use, with their share of new flows and their counters.
    fn members(&self, id: u32, c: Color) -> Result<Vec<MemberReading>>;
    /// Reason counters, summed over CPUs.
    fn reasons(&self) -> Result<Vec<(Reason, u64)>>;
    /// A census of the established-connection table, walked now.
    fn census(&self) -> Result<Census>;
    /// Calls `f` with every entry of the established-connection table, walked now.
    fn for_each_flow(
        &self,
        f: &mut dyn FnMut(&switcher_common::FlowKey, &switcher_common::FlowValue),
    ) -> Result<()>;
    /// Lets go of the datapath: detached and unpinned, or (`keep_attached`) left running and
    /// pinned for the next daemon to adopt.
    fn close(self: Box<Self>, keep_attached: bool) -> Result<()>;
}

/// The versioned folder under `bpffs_dir` a datapath of this build pins into.
pub fn pins_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join(format!("v{MAP_ABI_VERSION}"))
}

/// Where this build's maps are pinned ([`MapReader::open`] takes it).
pub fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    pins_dir(bpffs_dir).join("maps")
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock bpf_ktime_get_coarse_ns reads (flow entries'
/// times).
pub fn monotonic_coarse_ns() -> Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .context("clock_gettime(CLOCK_MONOTONIC_COARSE)")?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns reads.
pub fn monotonic_ns() -> Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .context("clock_gettime(CLOCK_MONOTONIC)")?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// What the controller holds once it has let go of the datapath: every call fails.
pub(crate) struct Closed;

impl Closed {
    fn err<T>() -> Result<T> {
        anyhow::bail!("the datapath was closed: the daemon is shutting down")
    }
}

impl Datapath for Closed {
    fn apply(&mut self, _: &[Service]) -> Result<BTreeMap<String, u32>> {
        Self::err()
    }
    fn flip(&mut self, _: u32, _: Color) -> Result<FlipOutcome> {
        Self::err()
    }
    fn set_canary(&mut self, _: u32, _: u32) -> Result<()> {
        Self::err()
    }
    fn set_shadow(&mut self, _: u32, _: Option<Shadow>) -> Result<()> {
        Self::err()
    }
    fn shadow_counters(&self, _: u32) -> Result<ShadowCounters> {
        Self::err()
    }
    fn void_affinity(&mut self, _: u32) -> Result<()> {
        Self::err()
    }
    fn set_member_in_service(&mut self, _: u32, _: Color, _: SocketAddr, _: bool) -> Result<bool> {
        Self::err()
    }
    fn retire_drained(&mut self, _: &[Endpoint], _: Instant) -> Result<Vec<(u32, SocketAddr)>> {
        Self::err()
    }
    fn set_redirect_targets(&mut self, _: &[u32]) -> Result<()> {
        Self::err()
    }
    fn attach(&mut self, _: &[String], _: XdpMode) -> Result<()> {
        Self::err()
    }
    fn read(&self, _: u32) -> Result<ServiceReading> {
        Self::err()
    }
    fn members(&self, _: u32, _: Color) -> Result<Vec<MemberReading>> {
        Self::err()
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        Self::err()
    }
    fn census(&self) -> Result<Census> {
        Self::err()
    }
    fn for_each_flow(
        &self,
        _: &mut dyn FnMut(&switcher_common::FlowKey, &switcher_common::FlowValue),
    ) -> Result<()> {
        Self::err()
    }
    fn close(self: Box<Self>, _: bool) -> Result<()> {
        Ok(())
    }
}
