//! After the rewrite, for a service that redirects: straight to the backend's interface with
//! bpf_fib_lookup + XDP_REDIRECT, or XDP_PASS to the kernel whenever the fast path does not
//! apply.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action::XDP_PASS, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use switcher_common::{
    csum::Delta,
    parse::{self, Frag, Frame, Parsed},
    FlowKey, Reason, FAMILY_V4,
};

use crate::{
    counters,
    frame::XdpFrame,
    maps::{FIB_SCRATCH, REDIRECT_OK},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

// Own frame: keeps the ingress stack under the 512-byte BPF limit.
#[inline(never)]
pub fn forward(ctx: &XdpContext, f: &XdpFrame, p: &Parsed, flow: &FlowKey) -> u32 {
    match try_redirect(ctx, f, p, flow) {
        Some(action) => {
            counters::reason(Reason::Redirected);
            action
        }
        None => {
            counters::reason(Reason::FibFallback);
            XDP_PASS
        }
    }
}

/// `None` means "let the kernel forward it": VLAN-tagged frames (the FIB result has no tag),
/// TTL about to expire (the kernel sends the ICMP), no neighbour entry yet (the kernel resolves
/// it), local or unroutable backends, or a packet above the egress MTU.
#[inline(always)]
fn try_redirect(ctx: &XdpContext, f: &XdpFrame, p: &Parsed, flow: &FlowKey) -> Option<u32> {
    // The packet's destination is now the backend; read it back from the packet.
    let dst: [u8; 16] = if p.family == FAMILY_V4 {
        let a = f.read::<4>(p.l3 + 16)?;
        [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    } else {
        f.read::<16>(p.l3 + 24)?
    };
    // Fragments all take the kernel path: were the first redirected and the rest passed,
    // a defragmenting netfilter on the edge would wait for a first fragment it never sees.
    if p.vlans != 0 || p.frag != Frag::None {
        return None;
    }
    // The lookup struct lives in a per-CPU scratch slot: the 512-byte BPF stack is full.
    // SAFETY: per-CPU slot used only for the duration of this call.
    let fib = unsafe { &mut *FIB_SCRATCH.get_ptr_mut(0)? };
    // All-zero is the struct's documented initial state. Cleared a word at a time with
    // volatile stores: `zeroed()` (or a plain loop, which LLVM turns back into one) became a
    // call to the builtin memset, a byte loop, on every redirected packet.
    const WORDS: usize = size_of::<bpf_fib_lookup>() / 8;
    let words = (fib as *mut bpf_fib_lookup).cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: inside the per-CPU slot (the struct is 64 bytes, 8-aligned in the map).
        unsafe { words.add(i).write_volatile(0) };
    }
    fib.l4_protocol = p.proto;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = p.ip_len;
    let ttl_off = if p.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = p.tos_flow as u8;
        fib.__bindgen_anon_3.ipv4_src = word(&flow.src, 0);
        fib.__bindgen_anon_4.ipv4_dst = word(&dst, 0);
        p.l3 + 8
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo = p.tos_flow.to_be();
        // SAFETY: writing plain integers into the unions' IPv6 members.
        unsafe {
            for i in 0..4 {
                fib.__bindgen_anon_3.ipv6_src[i] = word(&flow.src, i * 4);
                fib.__bindgen_anon_4.ipv6_dst[i] = word(&dst, i * 4);
            }
        }
        p.l3 + 7
    };
    let ttl = f.read::<1>(ttl_off)?[0];
    if ttl <= 1 {
        return None;
    }
    // SAFETY: ctx is the live xdp_md, fib a valid stack struct of the size we pass.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            fib as *mut bpf_fib_lookup,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // Before any write: a device that cannot transmit XDP frames gets the packet via the kernel.
    // SAFETY: the value is only tested for presence.
    unsafe { REDIRECT_OK.get(&fib.ifindex) }?;
    // We bypass the kernel's forwarding, so do its TTL / hop-limit decrement.
    f.write(ttl_off, [ttl - 1])?;
    if p.family == FAMILY_V4 {
        let mut d = Delta::new();
        let proto = p.proto;
        d.word(
            u16::from_be_bytes([ttl, proto]),
            u16::from_be_bytes([ttl - 1, proto]),
        );
        let c = parse::be16(f.read::<2>(p.l3 + 10)?);
        f.write(p.l3 + 10, d.apply(c).to_be_bytes())?;
    }
    f.write(0, fib.dmac)?;
    f.write(6, fib.smac)?;
    // SAFETY: plain helper call.
    Some(unsafe { bpf_redirect(fib.ifindex, 0) } as u32)
}

/// The 32-bit word at `i` as stored in the packet (network order), as the FIB API wants it.
#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}
