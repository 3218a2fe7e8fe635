//! TC egress: a reply from a backend leaves with the VIP:port the client talked to as its
//! source, so clients only ever see the VIP; and an ICMP error about a packet the switch sent
//! to a backend reaches the client about the VIP (path MTU discovery keeps working). Only
//! flows the switch steered are translated: a packet from a backend's address and port to
//! anyone else leaves as it is (except for UDP services without affinity, which keep no flow
//! state: their members' datagrams are all translated). Uses the skb checksum helpers, which also handle
//! CHECKSUM_PARTIAL packets from local senders correctly.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_ktime_get_coarse_ns,
    programs::TcContext,
};
use switcher_common::{
    csum::Delta,
    decide,
    parse::{self, Frag, Frame, Parsed},
    Endpoint, FlowKey, FlowValue, Reason, ReverseValue, FAMILY_V4, FLOW_CLOSING, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, REV_F_STATELESS,
};

use crate::{
    counters,
    frame::TcFrame,
    maps::{EgressScratch, EGRESS_SCRATCH, FLOWS, HALF_FLOWS, REVERSE, SOFT_FLOWS},
};

const TCP_RST: u8 = 0x04;

/// What the flow tables know of the client's flow a packet answers.
#[derive(Clone, Copy)]
struct Steered {
    /// Flags of its established entry, if it has one.
    established: Option<u8>,
    half_open: bool,
}

/// The flow `e.flow` as ingress recorded it, if the switch steered it to `e.backend`.
#[inline(always)]
fn steered(e: &EgressScratch) -> Option<Steered> {
    let to_backend =
        |v: &FlowValue| v.backend.addr == e.backend.addr && v.backend.port_be == e.backend.port_be;
    // SAFETY (all three): read in place, nothing kept.
    if let Some(v) = unsafe { FLOWS.get(&e.flow) } {
        return to_backend(v).then_some(Steered {
            established: Some(v.flags),
            half_open: false,
        });
    }
    if let Some(v) = unsafe { HALF_FLOWS.get(&e.flow) } {
        return to_backend(v).then_some(Steered {
            established: None,
            half_open: true,
        });
    }
    unsafe { SOFT_FLOWS.get(&e.flow) }
        .filter(|v| to_backend(v))
        .map(|_| Steered {
            established: None,
            half_open: false,
        })
}

#[inline(always)]
pub fn run(ctx: &TcContext) {
    let f = TcFrame(ctx);
    let Some(e) = EGRESS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot; egress runs with bottom halves off, nothing else uses it.
    let e: &mut EgressScratch = unsafe { &mut *e };
    let Ok(p) = parse::parse(&f, &mut e.reply) else {
        return;
    };
    // Later fragments carry no ports; replies of log backends are small and never fragment.
    if let Frag::Later(_) = p.frag {
        return;
    }
    if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 {
        icmp_error(ctx, &f, &p, e);
        return;
    }
    let Ok(l4) = parse::parse_l4(&f, &p) else {
        return;
    };
    e.backend = Endpoint {
        addr: e.reply.src,
        port_be: u16::from_ne_bytes(l4.sport),
        proto: p.proto,
        family: p.family,
    };
    // SAFETY: copied out.
    let Some(rev) = (unsafe { REVERSE.get(&e.backend) }).copied() else {
        return;
    };
    if rev.family != p.family {
        return;
    }
    // The client's flow towards the VIP, as ingress keyed it.
    e.flow = FlowKey {
        src: e.reply.dst,
        dst: rev.vip,
        sport_be: u16::from_ne_bytes(l4.dport),
        dport_be: rev.vport_be,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    };
    let flow = if rev.flags & REV_F_STATELESS != 0 {
        Steered {
            established: None,
            half_open: false,
        }
    } else if let Some(flow) = steered(e) {
        flow
    } else {
        counters::reason(Reason::EgressUnsteered);
        return;
    };
    let udp_flags = if p.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let ok = if p.family == FAMILY_V4 {
        reverse_v4(ctx, p.l3, l4.csum_off, &e.reply.src, &rev.vip, udp_flags)
    } else {
        reverse_v6(ctx, p.l3, l4.csum_off, &e.reply.src, &rev.vip, udp_flags)
    }
    .and_then(|()| {
        let old_port = u16::from_ne_bytes(l4.sport) as u64;
        ctx.l4_csum_replace(l4.csum_off, old_port, rev.vport_be as u64, 2 | udp_flags)
            .ok()?;
        ctx.store(p.l4, &rev.vport_be, 0).ok()
    });
    if p.proto == PROTO_TCP && l4.tcp_flags & TCP_RST != 0 {
        if decide::reset_counts(flow.established, flow.half_open) {
            counters::reset(rev.service_id, rev.color);
        }
        if flow.established.is_some() {
            close_established(&e.flow);
        }
    }
    counters::reason(if ok.is_some() {
        Reason::EgressReversed
    } else {
        Reason::EgressMalformed
    });
}

/// The backend reset the connection: its established entry starts the closing grace now
/// (the daemon removes it after), like a reset the client sends. A handshake spoofed from a
/// made-up source (SYN, then ACK) is reset by the backend, so it cannot hold a protected entry
/// for longer than the grace.
#[inline(always)]
fn close_established(flow: &FlowKey) {
    let Some(v) = FLOWS.get_ptr_mut(flow) else {
        return;
    };
    // SAFETY: the entry is updated in place (an aligned byte and word); a racing ingress
    // write of the same entry leaves either state, both valid.
    unsafe {
        if (*v).state != FLOW_CLOSING {
            (*v).state = FLOW_CLOSING;
            (*v).last_seen_ns = bpf_ktime_get_coarse_ns();
        }
    }
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

/// Where the parts of an ICMP error live: the quoted packet is the one the switch sent to a
/// backend (client → backend).
struct Quoted {
    /// Offset of the quoted IP header's destination address, and its length.
    dst: usize,
    dst_len: usize,
    /// Offset of the quoted protocol byte, of the quoted transport header.
    proto: usize,
    l4: usize,
    /// Offset of the quoted IPv4 header checksum (IPv4 only).
    ip_csum: Option<usize>,
    /// A destination-unreachable error (not "fragmentation needed" / "packet too big").
    unreachable: bool,
    /// An error type this datapath translates (unreachable, too big, time exceeded).
    translated: bool,
    /// End of the ICMP message's IP packet: the quote ends there (any bytes after it are
    /// Ethernet padding, never read or patched).
    end: usize,
}

#[inline(always)]
fn quoted(f: &TcFrame, l4: usize, family: u8, end: usize) -> Option<Quoted> {
    let icmp = f.read::<2>(l4)?;
    let q = l4 + 8;
    if family == FAMILY_V4 {
        let ihl = ((f.read::<1>(q)?[0] & 0x0f) as usize) * 4;
        if !(20..=60).contains(&ihl) {
            return None;
        }
        Some(Quoted {
            dst: q + 16,
            dst_len: 4,
            proto: q + 9,
            l4: q + ihl,
            ip_csum: Some(q + 10),
            // Code 4 is "fragmentation needed": path MTU, not a backend refusing traffic.
            unreachable: icmp[0] == 3 && icmp[1] != 4,
            translated: icmp[0] == 3 || icmp[0] == 11,
            end,
        })
    } else {
        // The quoted IPv6 packet is assumed to have no extension headers (ours never do).
        Some(Quoted {
            dst: q + 24,
            dst_len: 16,
            proto: q + 6,
            l4: q + 40,
            ip_csum: None,
            unreachable: icmp[0] == 1,
            translated: icmp[0] == 1 || icmp[0] == 2 || icmp[0] == 3,
            end,
        })
    }
}

/// An ICMP error leaving towards a client about a packet the switch sent to a backend:
/// counted for that colour when the backend's own host sent it (a backend refusing traffic),
/// and, for a flow the switch steered, translated so the client sees it about the VIP.
#[inline(never)]
fn icmp_error(ctx: &TcContext, f: &TcFrame, p: &Parsed, e: &mut EgressScratch) {
    let (l3, l4, family) = (p.l3, p.l4, p.family);
    let Some(q) = quoted(f, l4, family, l3 + p.ip_len as usize) else {
        return;
    };
    // The quoted ports must be inside the IP packet, not in padding after it.
    if !q.translated || q.l4 > l4 + 8 + 60 || q.l4 + 4 > q.end {
        return;
    }
    let (Some(proto), Some(ports)) = (f.read::<1>(q.proto), f.read::<4>(q.l4)) else {
        return;
    };
    e.backend = Endpoint {
        addr: [0; 16],
        port_be: u16::from_ne_bytes([ports[2], ports[3]]),
        proto: proto[0],
        family,
    };
    e.flow = FlowKey::default();
    // The quoted source is the client, the quoted destination the backend.
    if q.dst_len == 4 {
        let (Some(d), Some(s)) = (f.read::<4>(q.dst), f.read::<4>(q.dst - 4)) else {
            return;
        };
        e.backend.addr[..4].copy_from_slice(&d);
        e.flow.src[..4].copy_from_slice(&s);
    } else {
        let (Some(d), Some(s)) = (f.read::<16>(q.dst), f.read::<16>(q.dst - 16)) else {
            return;
        };
        e.backend.addr = d;
        e.flow.src = s;
    }
    // SAFETY: copied out.
    let Some(rev) = (unsafe { REVERSE.get(&e.backend) }).copied() else {
        return;
    };
    // The outer source: the backend's own host, or a router on the way (path MTU).
    let from_backend = if family == FAMILY_V4 {
        f.read::<4>(l3 + 12)
            .is_some_and(|a| a[..] == e.backend.addr[..4])
    } else {
        f.read::<16>(l3 + 8).is_some_and(|a| a == e.backend.addr)
    };
    // A backend refusing traffic is a health signal whoever's flow it was (a UDP service
    // without affinity keeps no flow entries); only its own host's errors count.
    if q.unreachable && from_backend {
        counters::unreachable(rev.service_id, rev.color);
    }
    e.flow.dst = rev.vip;
    e.flow.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    e.flow.dport_be = rev.vport_be;
    e.flow.proto = proto[0];
    e.flow.family = family;
    // Translated only for flows the switch steered: nobody else gets the VIP's name on it.
    if rev.flags & REV_F_STATELESS == 0 && steered(e).is_none() {
        counters::reason(Reason::EgressUnsteered);
        return;
    }
    let ok = translate_icmp(ctx, l3, l4, family, &q, &rev, &e.backend, from_backend)
        .and_then(|()| quoted_l4_checksum(ctx, l4 + 2, family, &q, &rev, &e.backend));
    counters::reason(if ok.is_some() {
        Reason::EgressIcmp
    } else {
        Reason::EgressMalformed
    });
}

/// Rewrites the quoted packet's destination (backend → VIP, address and port) and, when the
/// backend sent the error, the outer source too; keeps the quoted IPv4 header checksum and
/// the ICMP checksum right.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn translate_icmp(
    ctx: &TcContext,
    l3: usize,
    l4: usize,
    family: u8,
    q: &Quoted,
    rev: &ReverseValue,
    backend: &Endpoint,
    from_backend: bool,
) -> Option<()> {
    let csum = l4 + 2;
    // ICMPv6's checksum covers a pseudo-header (the outer addresses); ICMPv4's does not.
    let pseudo = if family == FAMILY_V4 {
        0
    } else {
        BPF_F_PSEUDO_HDR as u64
    };
    let words = if family == FAMILY_V4 { 1 } else { 4 };
    for i in 0..words {
        let (old, new) = (word(&backend.addr, i * 4), word(&rev.vip, i * 4));
        if let Some(ip_csum) = q.ip_csum {
            // The quoted IPv4 header's own checksum, and that change in the ICMP checksum.
            let before: [u8; 2] = ctx.load(ip_csum).ok()?;
            ctx.l3_csum_replace(ip_csum, old, new, 4).ok()?;
            let after: [u8; 2] = ctx.load(ip_csum).ok()?;
            ctx.l4_csum_replace(
                csum,
                u16::from_ne_bytes(before) as u64,
                u16::from_ne_bytes(after) as u64,
                2,
            )
            .ok()?;
        }
        ctx.l4_csum_replace(csum, old, new, 4).ok()?;
        if from_backend {
            if family == FAMILY_V4 {
                ctx.l3_csum_replace(l3 + 10, old, new, 4).ok()?;
            } else {
                ctx.l4_csum_replace(csum, old, new, pseudo | 4).ok()?;
            }
        }
    }
    let vip = rev.vip;
    if family == FAMILY_V4 {
        let a: [u8; 4] = [vip[0], vip[1], vip[2], vip[3]];
        ctx.store(q.dst, &a, 0).ok()?;
        if from_backend {
            ctx.store(l3 + 12, &a, 0).ok()?;
        }
    } else {
        ctx.store(q.dst, &vip, 0).ok()?;
        if from_backend {
            ctx.store(l3 + 8, &vip, 0).ok()?;
        }
    }
    // The quoted destination port.
    ctx.l4_csum_replace(csum, backend.port_be as u64, rev.vport_be as u64, 2)
        .ok()?;
    ctx.store(q.l4 + 2, &rev.vport_be, 0).ok()
}

/// The quoted transport checksum as the client computed it (for the VIP), when the quote
/// holds it: a client that checks it finds its own packet. UDP over IPv4 without a checksum
/// stays without one. The change is carried into the ICMP checksum at `icmp_csum`.
#[inline(always)]
fn quoted_l4_checksum(
    ctx: &TcContext,
    icmp_csum: usize,
    family: u8,
    q: &Quoted,
    rev: &ReverseValue,
    backend: &Endpoint,
) -> Option<()> {
    let at = match backend.proto {
        PROTO_UDP => q.l4 + 6,
        PROTO_TCP => q.l4 + 16,
        _ => return Some(()),
    };
    // Not quoted (a short TCP quote): nothing to fix.
    if at + 2 > q.end {
        return Some(());
    }
    let Ok(old) = ctx.load::<[u8; 2]>(at) else {
        return Some(());
    };
    let old = u16::from_be_bytes(old);
    let mut d = Delta::new();
    if family == FAMILY_V4 {
        let (b, v) = (&backend.addr, &rev.vip);
        d.bytes4(&[b[0], b[1], b[2], b[3]], &[v[0], v[1], v[2], v[3]]);
    } else {
        d.bytes16(&backend.addr, &rev.vip);
    }
    d.word(u16::from_be(backend.port_be), u16::from_be(rev.vport_be));
    let new = if backend.proto == PROTO_UDP {
        d.apply_udp(old)
    } else {
        d.apply(old)
    };
    ctx.l4_csum_replace(icmp_csum, u64::from(old.to_be()), u64::from(new.to_be()), 2)
        .ok()?;
    ctx.store(at, &new.to_be_bytes(), 0).ok()
}
