//! TC egress: a reply from a backend leaves with the VIP:port the client talked to as its
//! source, so clients only ever see the VIP. Uses the skb checksum helpers, which also handle
//! CHECKSUM_PARTIAL packets from local senders correctly.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use switcher_common::{
    parse::{self, Frag, Frame},
    Endpoint, FlowKey, Reason, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

const TCP_RST: u8 = 0x04;

use crate::{counters, frame::TcFrame, maps::REVERSE};

#[inline(always)]
pub fn run(ctx: &TcContext) {
    let f = TcFrame(ctx);
    let mut flow = FlowKey::default();
    let Ok(p) = parse::parse(&f, &mut flow) else {
        return;
    };
    // Later fragments carry no ports; replies of log backends are small and never fragment.
    if let Frag::Later(_) = p.frag {
        return;
    }
    if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 {
        count_unreachable(&f, p.l4, p.family);
        return;
    }
    let Ok(l4) = parse::parse_l4(&f, &p) else {
        return;
    };
    let key = Endpoint {
        addr: flow.src,
        port_be: u16::from_ne_bytes(l4.sport),
        proto: p.proto,
        family: p.family,
    };
    // SAFETY: copied out.
    let Some(rev) = (unsafe { REVERSE.get(&key) }).copied() else {
        return;
    };
    if rev.family != p.family {
        return;
    }
    let udp_flags = if p.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let ok = if p.family == FAMILY_V4 {
        reverse_v4(ctx, p.l3, l4.csum_off, &flow.src, &rev.vip, udp_flags)
    } else {
        reverse_v6(ctx, p.l3, l4.csum_off, &flow.src, &rev.vip, udp_flags)
    }
    .and_then(|()| {
        let old_port = u16::from_ne_bytes(l4.sport) as u64;
        ctx.l4_csum_replace(l4.csum_off, old_port, rev.vport_be as u64, 2 | udp_flags)
            .ok()?;
        ctx.store(p.l4, &rev.vport_be, 0).ok()
    });
    if p.proto == PROTO_TCP && l4.tcp_flags & TCP_RST != 0 {
        counters::reset(rev.service_id, rev.color);
    }
    counters::reason(if ok.is_some() {
        Reason::EgressReversed
    } else {
        Reason::EgressMalformed
    });
}

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u64 {
    u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]) as u64
}

#[inline(always)]
fn reverse_v4(
    ctx: &TcContext,
    l3: usize,
    csum_off: usize,
    src: &[u8; 16],
    vip: &[u8; 16],
    udp_flags: u64,
) -> Option<()> {
    let (old, new) = (word(src, 0), word(vip, 0));
    ctx.l4_csum_replace(csum_off, old, new, BPF_F_PSEUDO_HDR as u64 | 4 | udp_flags)
        .ok()?;
    ctx.l3_csum_replace(l3 + 10, old, new, 4).ok()?;
    let addr: [u8; 4] = [vip[0], vip[1], vip[2], vip[3]];
    ctx.store(l3 + 12, &addr, 0).ok()
}

#[inline(always)]
fn reverse_v6(
    ctx: &TcContext,
    l3: usize,
    csum_off: usize,
    src: &[u8; 16],
    vip: &[u8; 16],
    udp_flags: u64,
) -> Option<()> {
    for i in [0usize, 4, 8, 12] {
        ctx.l4_csum_replace(
            csum_off,
            word(src, i),
            word(vip, i),
            BPF_F_PSEUDO_HDR as u64 | 4 | udp_flags,
        )
        .ok()?;
    }
    ctx.store(l3 + 8, vip, 0).ok()
}

/// An ICMP "destination unreachable" leaving towards a client about a packet it sent to a
/// backend (the quoted packet's destination is the backend): counted for that colour, so the
/// controller's watch sees a backend that refuses traffic.
#[inline(always)]
fn count_unreachable(f: &TcFrame, l4: usize, family: u8) {
    let Some(icmp) = f.read::<2>(l4) else {
        return;
    };
    let (unreachable, quoted_l4, proto_off, dst_off, dst_len) = if family == FAMILY_V4 {
        let Some(q) = f.read::<1>(l4 + 8) else {
            return;
        };
        let ihl = ((q[0] & 0x0f) as usize) * 4;
        // Code 4 is "fragmentation needed": path MTU, not a backend refusing traffic.
        (
            icmp[0] == 3 && icmp[1] != 4,
            l4 + 8 + ihl,
            l4 + 8 + 9,
            l4 + 8 + 16,
            4,
        )
    } else {
        // The quoted IPv6 packet is assumed to have no extension headers (ours never do).
        (icmp[0] == 1, l4 + 8 + 40, l4 + 8 + 6, l4 + 8 + 24, 16)
    };
    if !unreachable || quoted_l4 > l4 + 8 + 60 {
        return;
    }
    let (Some(proto), Some(ports)) = (f.read::<1>(proto_off), f.read::<4>(quoted_l4)) else {
        return;
    };
    let mut key = Endpoint {
        addr: [0; 16],
        port_be: u16::from_ne_bytes([ports[2], ports[3]]),
        proto: proto[0],
        family,
    };
    if dst_len == 4 {
        let Some(a) = f.read::<4>(dst_off) else {
            return;
        };
        key.addr[..4].copy_from_slice(&a);
    } else {
        let Some(a) = f.read::<16>(dst_off) else {
            return;
        };
        key.addr = a;
    }
    // SAFETY: copied out.
    if let Some(rev) = unsafe { REVERSE.get(&key) }.copied() {
        counters::unreachable(rev.service_id, rev.color);
    }
}
