//! Reference programs for `cargo xtask bench`, never attached by the daemon: the floor (the
//! least an XDP program can do per packet) and the forwarding benchmark's frame source.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Packets seen by the programs; not pinned, it lives as long as the bench holds it.
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

/// The floor with its count made in a BPF-to-BPF call: what one call and its return cost on
/// this kernel (the ingress program still calls `forward` on a redirect and `record` when a
/// flow table changes: the 512-byte stack cannot take them inline).
#[xdp]
pub fn bench_call(_ctx: XdpContext) -> u32 {
    counted()
}

#[inline(never)]
fn counted() -> u32 {
    count();
    xdp_action::XDP_PASS
}

/// The first bytes of the frame `bench_tx` sends (headers), set by the benchmark.
#[map]
static BENCH_FRAME_HEAD: Array<[u64; FRAME_HEAD_WORDS]> = Array::with_max_entries(1, 0);

const FRAME_HEAD_WORDS: usize = 8;

/// The forwarding benchmark's frame source: run with BPF_PROG_TEST_RUN in live-frames mode,
/// XDP_TX sends each frame out of the context's ingress interface (the client's veth), so the
/// edge receives it as an XDP frame, the way a NIC driver hands over a buffer, not an skb.
///
/// Live frames come from a page pool whose pages are recycled with whatever the path wrote
/// into them (a router rewrites the MACs and the TTL, a NAT the address), and the kernel
/// resets only the frame's pointers: so the headers are written afresh for every frame.
#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    count();
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(head) = BENCH_FRAME_HEAD.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if start + FRAME_HEAD_WORDS * 8 > end {
        return xdp_action::XDP_ABORTED;
    }
    let dst = start as *mut u64;
    for (i, w) in head.iter().enumerate() {
        // SAFETY: the bounds check above covers every word; the packet may be unaligned.
        unsafe { dst.add(i).write_unaligned(*w) };
    }
    xdp_action::XDP_TX
}
