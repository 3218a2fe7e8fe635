//! Reference programs for `cargo xtask bench`, never attached by the daemon: the floor (the
//! least an XDP program can do per packet) and the generator baseline (drop at ingress).

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// Packets seen by either program; not pinned, it lives as long as the bench holds it.
#[map]
static BENCH_PACKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count() {
    if let Some(c) = BENCH_PACKETS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn bench_floor(_ctx: XdpContext) -> u32 {
    count();
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    count();
    xdp_action::XDP_DROP
}
