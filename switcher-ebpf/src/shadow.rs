//! TC ingress on the client-facing interfaces: shadowing. While a service's candidate is
//! validated with `[service.shadow]`, XDP hands that service's UDP packets to the kernel after
//! steering them to the serving member, as always (never XDP_REDIRECT: a redirected frame
//! skips TC). Here a share of them is copied: the packet is rewritten to a candidate member's
//! shadow port, cloned back into this interface's ingress (`bpf_clone_redirect`, so the kernel
//! routes the copy like any packet), then rewritten back; the original goes on unchanged.
//! The copy's destination is no member endpoint, so it is not copied again.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_clone_redirect, bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    programs::TcContext,
};
use switcher_common::{
    decide,
    parse::{self, Frag, Parsed, L4},
    Endpoint, FlowKey, FAMILY_V4, PROTO_UDP,
};

use crate::{
    frame::TcFrame,
    maps::{
        pool_member, ShadowScratch, ACTIVE, REVERSE, SHADOW, SHADOW_ANY, SHADOW_COUNTERS,
        SHADOW_SCRATCH,
    },
};

#[inline(always)]
pub fn run(ctx: &TcContext) {
    if SHADOW_ANY.get(0).is_none_or(|n| *n == 0) {
        return;
    }
    let f = TcFrame(ctx);
    let Some(s) = SHADOW_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot; TC ingress runs with bottom halves off, nothing else uses it.
    let s: &mut ShadowScratch = unsafe { &mut *s };
    let Ok(p) = parse::parse(&f, &mut s.pkt) else {
        return;
    };
    // Only whole UDP datagrams are copied (a fragmented one would need every fragment).
    if p.proto != PROTO_UDP || p.frag != Frag::None {
        return;
    }
    let Ok(l4) = parse::parse_l4(&f, &p) else {
        return;
    };
    // After XDP the destination is the serving member: REVERSE names its service.
    s.member = Endpoint {
        addr: s.pkt.dst,
        port_be: u16::from_ne_bytes(l4.dport),
        proto: PROTO_UDP,
        family: p.family,
    };
    // SAFETY (both): copied out at once.
    let Some(rev) = (unsafe { REVERSE.get(&s.member) }).copied() else {
        return;
    };
    let Some(sv) = SHADOW.get(rev.service_id).copied() else {
        return;
    };
    // A packet the canary sent to the candidate already is no copy's original.
    if sv.share == 0 || rev.color == sv.color || rev.family != p.family {
        return;
    }
    // SAFETY (both): plain helper calls.
    if unsafe { bpf_ktime_get_coarse_ns() } > sv.until_ns
        || !decide::in_canary(sv.share, unsafe { bpf_get_prandom_u32() })
    {
        return;
    }
    // The candidate member the client's flow hashes to, as ingress would pick it.
    s.flow = FlowKey {
        src: s.pkt.src,
        dst: rev.vip,
        sport_be: u16::from_ne_bytes(l4.sport),
        dport_be: rev.vport_be,
        proto: PROTO_UDP,
        family: p.family,
        _pad: [0; 2],
    };
    s.service_id = rev.service_id;
    s.color = sv.color;
    s.to_port_be = sv.port_be;
    let copied = copy(ctx, &p, &l4, s);
    if let Some(c) = SHADOW_COUNTERS.get_ptr_mut(rev.service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        let c = unsafe { &mut *c };
        if copied {
            c.copies += 1;
        } else {
            c.failed += 1;
        }
    }
}

/// Sends the copy; whatever happens, the packet is left as it came (a failed rewrite back
/// cannot happen without the rewrite failing first, which changed nothing).
#[inline(never)]
fn copy(ctx: &TcContext, p: &Parsed, l4: &L4, s: &mut ShadowScratch) -> bool {
    let (id, color) = (s.service_id, s.color);
    let Some(active) = ACTIVE.get(id).copied() else {
        return false;
    };
    let Some(b) = pool_member(id, color, active, &s.flow) else {
        return false;
    };
    if b.valid == 0 || b.family != p.family {
        return false;
    }
    s.to = b.addr;
    if rewrite(ctx, p, l4, s, true).is_none() {
        return false;
    }
    // SAFETY: the helper reads the context the program was given.
    let r =
        unsafe { bpf_clone_redirect(ctx.skb.skb, (*ctx.skb.skb).ifindex, BPF_F_INGRESS as u64) };
    rewrite(ctx, p, l4, s, false).is_some() && r == 0
}

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u64 {
    u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]) as u64
}

/// The destination from the serving member to the copy's (`to_copy`), or back; with the
/// kernel's checksum helpers (they keep a CHECKSUM_PARTIAL packet right).
#[inline(never)]
fn rewrite(ctx: &TcContext, p: &Parsed, l4: &L4, s: &ShadowScratch, to_copy: bool) -> Option<()> {
    let (from, to, from_port, to_port) = if to_copy {
        (&s.member.addr, &s.to, s.member.port_be, s.to_port_be)
    } else {
        (&s.to, &s.member.addr, s.to_port_be, s.member.port_be)
    };
    let flags = BPF_F_PSEUDO_HDR as u64 | BPF_F_MARK_MANGLED_0 as u64;
    if p.family == FAMILY_V4 {
        let (old, new) = (word(from, 0), word(to, 0));
        ctx.l4_csum_replace(l4.csum_off, old, new, flags | 4).ok()?;
        ctx.l3_csum_replace(p.l3 + 10, old, new, 4).ok()?;
        ctx.store(p.l3 + 16, &[to[0], to[1], to[2], to[3]], 0)
            .ok()?;
    } else {
        for i in [0usize, 4, 8, 12] {
            ctx.l4_csum_replace(l4.csum_off, word(from, i), word(to, i), flags | 4)
                .ok()?;
        }
        ctx.store(p.l3 + 24, to, 0).ok()?;
    }
    ctx.l4_csum_replace(
        l4.csum_off,
        u64::from(from_port),
        u64::from(to_port),
        BPF_F_MARK_MANGLED_0 as u64 | 2,
    )
    .ok()?;
    ctx.store(p.l4 + 2, &to_port, 0).ok()
}
