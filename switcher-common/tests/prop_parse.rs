//! Property tests of the packet parser: random bytes and mutated packets of every shape the
//! datapath meets. The parser must never panic, must only accept what an independent reading
//! (etherparse's header slices, plus the datapath's documented extra rules) accepts, must
//! report the same offsets and fields when both accept, and must never look past the IP
//! packet's end (Ethernet padding, or bytes an IP length does not cover) when it accepts.

use std::cell::Cell;

use etherparse::{
    Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SlicedPacket,
    TcpHeaderSlice, TransportSlice, UdpHeaderSlice,
};
mod common;

use common::config;
use proptest::prelude::*;
use proptest::sample::Index;
use switcher_common::{
    parse::{parse, parse_l4, Frag, Frame, Parsed, L4},
    FlowKey, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
/// The datapath's bound on the L4 offset (see parse.rs): past it, nothing is steered.
const MAX_L4_OFF: usize = 512;

// ---------------------------------------------------------------------------------------------
// Packets laid out byte by byte from their RFCs (not with the parser's idea of the formats).

#[derive(Debug, Clone)]
enum Ext {
    /// Hop-by-hop or destination options of `(len8 + 1) * 8` bytes.
    Options {
        kind: u8,
        len8: u8,
    },
    Routing,
    Fragment {
        offset8: u16,
        more: bool,
        id: u32,
    },
}

#[derive(Debug, Clone)]
struct Shape {
    tpids: Vec<u16>,
    v6: bool,
    v4_opt_words: u8,
    /// IPv4: (more fragments, offset in 8-byte units).
    v4_frag: (bool, u16),
    v4_id: u16,
    exts: Vec<Ext>,
    tcp: bool,
    tcp_opt_words: u8,
    flags: u8,
    sport: u16,
    dport: u16,
    csum: u16,
    payload: Vec<u8>,
    padding: Vec<u8>,
}

/// Where the fields a mutation lies about sit in a built packet.
#[derive(Debug, Clone, Copy)]
struct Layout {
    l3: usize,
    /// The transport header, when this packet carries one (not a later fragment).
    l4: Option<usize>,
}

fn ext_bytes(e: &Ext, next: u8) -> Vec<u8> {
    match *e {
        Ext::Options { len8, .. } => {
            let mut v = vec![0; (len8 as usize + 1) * 8];
            v[0] = next;
            v[1] = len8;
            // PadN over the rest of the header, as a sender would write it.
            v[2] = 1;
            v[3] = (v.len() - 4) as u8;
            v
        }
        Ext::Routing => vec![next, 0, 0, 0, 0, 0, 0, 0],
        Ext::Fragment { offset8, more, id } => {
            let mut v = vec![next, 0];
            v.extend(((offset8 << 3) | more as u16).to_be_bytes());
            v.extend(id.to_be_bytes());
            v
        }
    }
}

fn ext_kind(e: &Ext) -> u8 {
    match e {
        Ext::Options { kind, .. } => *kind,
        Ext::Routing => ROUTING,
        Ext::Fragment { .. } => FRAGMENT,
    }
}

fn later_fragment(s: &Shape) -> bool {
    if s.v6 {
        s.exts
            .iter()
            .any(|e| matches!(e, Ext::Fragment { offset8, .. } if *offset8 != 0))
    } else {
        s.v4_frag.1 != 0
    }
}

fn segment(s: &Shape) -> Vec<u8> {
    let mut v = s.sport.to_be_bytes().to_vec();
    v.extend(s.dport.to_be_bytes());
    if s.tcp {
        v.extend(1000u32.to_be_bytes());
        v.extend(2000u32.to_be_bytes());
        v.extend([(5 + s.tcp_opt_words) << 4, s.flags]);
        v.extend(64240u16.to_be_bytes());
        v.extend(s.csum.to_be_bytes());
        v.extend([0, 0]);
        // NOPs, then EOL in the last byte.
        let opts = s.tcp_opt_words as usize * 4;
        v.extend(std::iter::repeat_n(1u8, opts));
        if opts > 0 {
            *v.last_mut().expect("options") = 0;
        }
    } else {
        v.extend(((8 + s.payload.len()) as u16).to_be_bytes());
        v.extend(s.csum.to_be_bytes());
    }
    v.extend(&s.payload);
    v
}

fn build(s: &Shape) -> (Vec<u8>, Layout) {
    let mut v = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    for (i, tpid) in s.tpids.iter().enumerate() {
        v.extend(tpid.to_be_bytes());
        v.extend((100 + i as u16).to_be_bytes());
    }
    v.extend(if s.v6 { [0x86, 0xdd] } else { [0x08, 0x00] });
    let l3 = v.len();
    let proto = if s.tcp { PROTO_TCP } else { PROTO_UDP };
    let later = later_fragment(s);
    // A later fragment carries bytes of the middle of a datagram, no transport header.
    let body = if later { s.payload.clone() } else { segment(s) };
    let l4;
    if s.v6 {
        let mut rest = Vec::new();
        let kinds: Vec<u8> = s.exts.iter().map(ext_kind).collect();
        for (i, e) in s.exts.iter().enumerate() {
            rest.extend(ext_bytes(e, kinds.get(i + 1).copied().unwrap_or(proto)));
        }
        l4 = (!later).then_some(l3 + 40 + rest.len());
        rest.extend(&body);
        v.extend(0x6b81_2345u32.to_be_bytes());
        v.extend((rest.len() as u16).to_be_bytes());
        v.push(kinds.first().copied().unwrap_or(proto));
        v.push(64);
        v.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        v.extend([0x20, 0x01, 0, 2, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        v.extend(rest);
    } else {
        let ihl = 20 + 4 * s.v4_opt_words as usize;
        v.extend([0x40 | (ihl / 4) as u8, 0x28]);
        v.extend(((ihl + body.len()) as u16).to_be_bytes());
        v.extend(s.v4_id.to_be_bytes());
        v.extend((((s.v4_frag.0 as u16) << 13) | s.v4_frag.1).to_be_bytes());
        v.extend([64, proto, 0, 0]);
        v.extend([198, 51, 100, 7, 198, 18, 10, 10]);
        v.extend(std::iter::repeat_n(1u8, ihl - 20));
        l4 = (!later).then_some(l3 + ihl);
        v.extend(body);
    }
    v.extend(&s.padding);
    (v, Layout { l3, l4 })
}

fn ext_strategy() -> impl Strategy<Value = Ext> {
    prop_oneof![
        4 => (prop_oneof![Just(HOP_BY_HOP), Just(DEST_OPTS)], 0u8..4)
            .prop_map(|(kind, len8)| Ext::Options { kind, len8 }),
        1 => Just(Ext::Routing),
        3 => (prop_oneof![Just(0u16), 1u16..200], any::<bool>(), any::<u32>())
            .prop_map(|(offset8, more, id)| Ext::Fragment { offset8, more, id }),
        // Long options: the L4 offset bound.
        1 => (prop_oneof![Just(HOP_BY_HOP), Just(DEST_OPTS)], 20u8..70)
            .prop_map(|(kind, len8)| Ext::Options { kind, len8 }),
    ]
}

fn shape_strategy() -> impl Strategy<Value = Shape> {
    let l2 = prop::collection::vec(prop_oneof![Just(0x8100u16), Just(0x88a8u16)], 0..=2);
    let l3 = (
        any::<bool>(),
        0u8..=10,
        prop_oneof![4 => Just((false, 0u16)), 1 => (any::<bool>(), 0u16..300)],
        any::<u16>(),
        prop::collection::vec(ext_strategy(), 0..=4),
    );
    let l4 = (
        any::<bool>(),
        0u8..=10,
        any::<u8>(),
        any::<u16>(),
        prop_oneof![Just(514u16), Just(601u16), any::<u16>()],
        prop_oneof![Just(0u16), any::<u16>()],
        prop::collection::vec(any::<u8>(), 0..80),
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(any::<u8>(), 1..24)],
    );
    (l2, l3, l4).prop_map(
        |(
            tpids,
            (v6, v4_opt_words, v4_frag, v4_id, exts),
            (tcp, tcp_opt_words, flags, sport, dport, csum, payload, padding),
        )| Shape {
            tpids,
            v6,
            v4_opt_words,
            v4_frag,
            v4_id,
            exts: if v6 { exts } else { vec![] },
            tcp,
            tcp_opt_words,
            flags,
            sport,
            dport,
            csum,
            payload,
            padding,
        },
    )
}

/// What a mutation does to a built packet: the lies and damage the fuzz also applies.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    Truncate(Index),
    Flip(Vec<(Index, u8)>),
    Byte(Index, u8),
    /// IPv4 total length or IPv6 payload length moved by this much.
    IpLen(i16),
    Ihl(u8),
    UdpLen(i16),
    TcpDataOffset(u8),
    /// The first next-header field (IPv4 protocol, IPv6 next header) replaced.
    NextHeader(u8),
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::None),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        3 => prop::collection::vec((any::<Index>(), 0u8..8), 1..4).prop_map(Mutation::Flip),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        2 => prop_oneof![-64i16..64, any::<i16>()].prop_map(Mutation::IpLen),
        1 => (0u8..16).prop_map(Mutation::Ihl),
        2 => prop_oneof![-16i16..16, any::<i16>()].prop_map(Mutation::UdpLen),
        1 => (0u8..16).prop_map(Mutation::TcpDataOffset),
        1 => prop_oneof![Just(0u8), Just(6), Just(17), Just(43), Just(44), Just(50), Just(51),
            Just(58), Just(59), Just(60), any::<u8>()].prop_map(Mutation::NextHeader),
    ]
}

fn add16(p: &mut [u8], at: usize, delta: i16) {
    if let Some(f) = p.get_mut(at..at + 2) {
        let v = u16::from_be_bytes([f[0], f[1]]).wrapping_add_signed(delta);
        f.copy_from_slice(&v.to_be_bytes());
    }
}

fn mutate(mut p: Vec<u8>, lay: Layout, v6: bool, tcp: bool, m: &Mutation) -> Vec<u8> {
    // Header bytes are where the interesting damage is: flips and byte writes aim at the
    // first 128 bytes.
    let head = p.len().min(128);
    match m {
        Mutation::None => {}
        Mutation::Truncate(i) => p.truncate(i.index(p.len() + 1)),
        Mutation::Flip(bits) => {
            for (i, b) in bits {
                p[i.index(head)] ^= 1 << b;
            }
        }
        Mutation::Byte(i, b) => p[i.index(head)] = *b,
        Mutation::IpLen(d) => add16(&mut p, lay.l3 + if v6 { 4 } else { 2 }, *d),
        Mutation::Ihl(ihl) if !v6 => p[lay.l3] = 0x40 | ihl,
        Mutation::UdpLen(d) if !tcp => {
            if let Some(l4) = lay.l4 {
                add16(&mut p, l4 + 4, *d);
            }
        }
        Mutation::TcpDataOffset(doff) if tcp => {
            if let Some(b) = lay.l4.and_then(|l4| p.get_mut(l4 + 12)) {
                *b = (doff << 4) | (*b & 0x0f);
            }
        }
        Mutation::NextHeader(n) => p[lay.l3 + if v6 { 6 } else { 9 }] = *n,
        Mutation::Ihl(_) | Mutation::UdpLen(_) | Mutation::TcpDataOffset(_) => {}
    }
    p
}

// ---------------------------------------------------------------------------------------------
// The independent reading: what a packet is, by etherparse's header slices and the datapath's
// documented rules (README "Datapath rules"), computed without switcher-common.

/// What the parser must make of a packet.
#[derive(Debug, PartialEq)]
enum Want {
    /// parse (and parse_l4 unless it is a later fragment) must fail: the packet is passed.
    Reject,
    /// Both must succeed with these values.
    Accept(Box<(Parsed, Option<L4>, FlowKey)>),
    /// A shape etherparse cannot judge (an IPv6 later fragment naming an extension header:
    /// etherparse reads the fragment's payload as that header). Only the invariants apply.
    Unjudged,
}

fn at(pkt: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - pkt.as_ptr() as usize
}

fn want(pkt: &[u8]) -> Want {
    // L2: at most two tags, 802.1Q or 802.1ad, then IPv4 or IPv6.
    let Some(mut ethertype) = pkt.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return Want::Reject;
    };
    let mut l3 = 14;
    let mut vlans = 0;
    while vlans < 2 && (ethertype == 0x8100 || ethertype == 0x88a8) {
        let Some(tag) = pkt.get(l3..l3 + 4) else {
            return Want::Reject;
        };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += 4;
        vlans += 1;
    }
    let ip = &pkt[l3..];
    match ethertype {
        0x0800 => want_v4(pkt, ip, l3, vlans),
        0x86dd => want_v6(pkt, ip, l3, vlans),
        _ => Want::Reject,
    }
}

fn want_v4(pkt: &[u8], ip: &[u8], l3: usize, vlans: u8) -> Want {
    let Ok(h) = Ipv4HeaderSlice::from_slice(ip) else {
        return Want::Reject;
    };
    let total = h.total_len() as usize;
    if total < h.slice().len() || total > ip.len() {
        return Want::Reject;
    }
    let proto = h.protocol().0;
    if ![PROTO_TCP, PROTO_UDP, PROTO_ICMP].contains(&proto) {
        return Want::Reject;
    }
    let id = h.identification() as u32;
    let frag = if h.fragments_offset().value() != 0 {
        Frag::Later(id)
    } else if h.more_fragments() {
        Frag::First(id)
    } else {
        Frag::None
    };
    let mut flow = FlowKey {
        proto,
        family: FAMILY_V4,
        ..FlowKey::default()
    };
    flow.src[..4].copy_from_slice(&h.source());
    flow.dst[..4].copy_from_slice(&h.destination());
    let p = Parsed {
        family: FAMILY_V4,
        proto,
        vlans,
        l3,
        l4: l3 + h.slice().len(),
        frag,
        frag_proto: proto,
        ip_len: h.total_len(),
        tos_flow: ip[1] as u32,
    };
    if frag == Frag::None {
        // Unfragmented: the whole packet as etherparse slices it must be sound too.
        if SlicedPacket::from_ethernet(pkt).is_err() {
            return Want::Reject;
        }
    }
    finish(pkt, &ip[..total], p, flow)
}

fn want_v6(pkt: &[u8], ip: &[u8], l3: usize, vlans: u8) -> Want {
    let Ok(h) = Ipv6HeaderSlice::from_slice(ip) else {
        return Want::Reject;
    };
    let payload_len = h.payload_length() as usize;
    // Zero: a jumbogram, which etherparse reads as "the rest of the frame"; not log traffic.
    if payload_len == 0 || 40 + payload_len > ip.len() {
        return Want::Reject;
    }
    let packet = &ip[..40 + payload_len];
    let mut next = h.next_header().0;
    let mut off = 40;
    let mut count = 0;
    let mut frag = Frag::None;
    let mut frag_proto = None;
    loop {
        let rest = &packet[off..];
        match next {
            // Hop-by-hop only right after the IPv6 header (RFC 8200 4.1).
            HOP_BY_HOP if off != 40 => return Want::Reject,
            HOP_BY_HOP | DEST_OPTS => {
                let Ok(e) = Ipv6RawExtHeaderSlice::from_slice(rest) else {
                    return Want::Reject;
                };
                next = e.next_header().0;
                off += e.slice().len();
            }
            // One Fragment header: a second one would make the packet both a fragment and
            // not, depending on which header a reader believes (RFC 8200 4.1: at most once).
            FRAGMENT if frag_proto.is_some() => return Want::Reject,
            FRAGMENT => {
                let Ok(e) = Ipv6FragmentHeaderSlice::from_slice(rest) else {
                    return Want::Reject;
                };
                next = e.next_header().0;
                frag_proto = Some(next);
                off += e.slice().len();
                // Decoded here: etherparse 0.16 reads the offset and M flag from the wrong
                // bits (its issue #150, fixed in 0.20). RFC 8200 4.5: offset = word >> 3,
                // M = the word's lowest bit.
                let word = u16::from_be_bytes([rest[2], rest[3]]);
                let id = e.identification();
                if word >> 3 != 0 {
                    frag = Frag::Later(id);
                } else if word & 1 != 0 {
                    frag = Frag::First(id);
                }
            }
            _ => break,
        }
        count += 1;
        // The datapath follows three extension headers and bounds the L4 offset (a later
        // fragment has no L4 header to bound).
        if count > 3 {
            return Want::Reject;
        }
        if matches!(frag, Frag::Later(_)) {
            break;
        }
        if l3 + off > MAX_L4_OFF {
            return Want::Reject;
        }
    }
    let later = matches!(frag, Frag::Later(_));
    if !later && ![PROTO_TCP, PROTO_UDP, PROTO_ICMPV6].contains(&next) {
        return Want::Reject;
    }
    if frag == Frag::None && SlicedPacket::from_ethernet(pkt).is_err() {
        return Want::Reject;
    }
    let flow = FlowKey {
        proto: next,
        family: FAMILY_V6,
        src: h.source(),
        dst: h.destination(),
        ..FlowKey::default()
    };
    let p = Parsed {
        family: FAMILY_V6,
        proto: next,
        vlans,
        l3,
        l4: l3 + off,
        frag,
        // Only a fragment needs it; unfragmented packets carry their transport protocol.
        frag_proto: match frag {
            Frag::None => next,
            _ => frag_proto.unwrap_or(next),
        },
        ip_len: (40 + payload_len) as u16,
        tos_flow: u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]) & 0x0fff_ffff,
    };
    if later && [HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTS, 51].contains(&next) {
        // Accepted by both readings of the headers up to the Fragment header; etherparse
        // would go on reading the payload as headers, so the comparison stops here.
        return match finish(pkt, packet, p, flow) {
            Want::Accept(_) => Want::Unjudged,
            w => w,
        };
    }
    finish(pkt, packet, p, flow)
}

/// The transport header of a packet whose IP layer is accepted (`packet`: the IP packet as
/// its length field bounds it).
fn finish(pkt: &[u8], packet: &[u8], p: Parsed, flow: FlowKey) -> Want {
    if matches!(p.frag, Frag::Later(_)) || (p.proto != PROTO_TCP && p.proto != PROTO_UDP) {
        // parse alone decides (ICMP is parsed for egress; ingress then passes it).
        return Want::Accept(Box::new((p, None, flow)));
    }
    let seg = &packet[p.l4 - p.l3..];
    let l4 = if p.proto == PROTO_TCP {
        let Ok(t) = TcpHeaderSlice::from_slice(seg) else {
            return Want::Reject;
        };
        L4 {
            sport: t.source_port().to_be_bytes(),
            dport: t.destination_port().to_be_bytes(),
            csum_off: p.l4 + 16,
            csum: t.checksum(),
            tcp_flags: seg[13],
            payload: (seg.len() - t.slice().len()) as u16,
        }
    } else {
        let Ok(u) = UdpHeaderSlice::from_slice(seg) else {
            return Want::Reject;
        };
        let len = u.length() as usize;
        // Unfragmented: the UDP length is exactly the rest of the IP packet (etherparse also
        // takes shorter lengths and 0; the datapath does not). A first fragment: at least the
        // UDP bytes it carries (the datagram goes on in later fragments).
        if len < 8 || len < seg.len() || (p.frag == Frag::None && len != seg.len()) {
            return Want::Reject;
        }
        if p.family == FAMILY_V6 && u.checksum() == 0 {
            return Want::Reject;
        }
        L4 {
            sport: u.source_port().to_be_bytes(),
            dport: u.destination_port().to_be_bytes(),
            csum_off: p.l4 + 6,
            csum: u.checksum(),
            tcp_flags: 0,
            payload: (seg.len() - 8) as u16,
        }
    };
    if p.frag == Frag::None {
        // Where etherparse slices a transport header too, it is at the same place. (It may
        // not: a Fragment header with reserved bits set reads as fragmenting to etherparse
        // 0.16, see above.)
        let s = SlicedPacket::from_ethernet(pkt).expect("checked by the caller");
        let off = match s.transport {
            Some(TransportSlice::Tcp(t)) => Some(at(pkt, t.slice())),
            Some(TransportSlice::Udp(u)) => Some(at(pkt, u.slice())),
            _ => None,
        };
        if let Some(off) = off {
            assert_eq!(
                off, p.l4,
                "the independent reading disagrees with etherparse"
            );
        }
    }
    Want::Accept(Box::new((p, Some(l4), flow)))
}

// ---------------------------------------------------------------------------------------------
// The parser, watched.

/// A frame that remembers the furthest byte any successful read reached.
struct Traced<'a> {
    bytes: &'a [u8],
    furthest: Cell<usize>,
}

impl Frame for Traced<'_> {
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let r = self.bytes.read::<N>(off);
        if r.is_some() {
            self.furthest.set(self.furthest.get().max(off + N));
        }
        r
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// What the parser made of `pkt`: `Ok` when the datapath would steer it (parse succeeded and,
/// unless it is a later fragment, parse_l4 too). Checks the invariants every result must meet.
fn run(pkt: &[u8]) -> Result<(Parsed, Option<L4>, FlowKey), ()> {
    let frame = Traced {
        bytes: pkt,
        furthest: Cell::new(0),
    };
    // The datapath parses into a scratch key that still holds the previous packet's.
    let mut flow = FlowKey {
        src: [0xa5; 16],
        dst: [0x5a; 16],
        sport_be: 0x1234,
        dport_be: 0x4321,
        proto: 0xee,
        family: 0xee,
        _pad: [0; 2],
    };
    let p = parse(&frame, &mut flow).map_err(|_| ())?;
    let ip_end = p.l3 + p.ip_len as usize;
    assert!(ip_end <= pkt.len(), "IP packet past the frame: {p:?}");
    assert!(p.l4 >= p.l3 + 20, "L4 inside the IP header: {p:?}");
    let mut clean = FlowKey::default();
    assert_eq!(parse(pkt, &mut clean).as_ref(), Ok(&p), "parse is pure");
    assert_eq!(
        (flow.src, flow.dst, flow.proto, flow.family),
        (clean.src, clean.dst, clean.proto, clean.family),
        "a reused flow key is fully overwritten"
    );
    let l4 = if matches!(p.frag, Frag::Later(_)) || (p.proto != PROTO_TCP && p.proto != PROTO_UDP) {
        None
    } else {
        let l4 = parse_l4(&frame, &p).map_err(|_| ())?;
        let hdr = if p.proto == PROTO_TCP { 20 } else { 8 };
        assert!(p.l4 + hdr <= ip_end, "L4 header past the IP packet: {p:?}");
        assert!(l4.csum_off + 2 <= p.l4 + hdr, "checksum outside the header");
        assert!(
            p.l4 + hdr + l4.payload as usize <= ip_end,
            "payload past the IP packet"
        );
        Some(l4)
    };
    assert!(
        frame.furthest.get() <= ip_end,
        "accepted after reading byte {} of a {ip_end}-byte IP packet (frame {}): {p:?}",
        frame.furthest.get(),
        pkt.len()
    );
    Ok((p, l4, clean))
}

fn check(pkt: &[u8]) -> Result<(), TestCaseError> {
    let got = run(pkt);
    match want(pkt) {
        Want::Reject => prop_assert!(
            got.is_err(),
            "accepted what must be passed untouched: {:?}\n{:02x?}",
            got,
            pkt
        ),
        Want::Accept(w) => {
            let got = got.map_err(|()| {
                TestCaseError::fail(format!("rejected a sound packet {w:?}\n{pkt:02x?}"))
            })?;
            prop_assert_eq!(&got.0, &w.0, "{:02x?}", pkt);
            prop_assert_eq!(&got.1, &w.1, "{:02x?}", pkt);
            prop_assert_eq!(&got.2, &w.2, "{:02x?}", pkt);
        }
        Want::Unjudged => {}
    }
    Ok(())
}

/// An Ethernet header (with up to two tags) and an IP ethertype before random bytes: random
/// input that reaches the IP and transport parsers.
fn ip_prefixed_noise() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(prop_oneof![Just(0x8100u16), Just(0x88a8u16)], 0..=2),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..200),
        any::<bool>(),
    )
        .prop_map(|(tpids, v6, mut noise, sane_version)| {
            let mut v = vec![0u8; 12];
            for t in tpids {
                v.extend(t.to_be_bytes());
                v.extend([0, 7]);
            }
            v.extend(if v6 { [0x86, 0xdd] } else { [0x08, 0x00] });
            if sane_version {
                if let Some(b) = noise.first_mut() {
                    *b = if v6 { 0x60 | (*b & 0x0f) } else { 0x45 };
                }
            }
            v.extend(noise);
            v
        })
}

proptest! {
    #![proptest_config(config(4000))]

    /// Any bytes at all: no panic, and whatever is accepted meets the invariants.
    #[test]
    fn random_bytes_never_panic(pkt in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = run(&pkt);
    }

    /// Random bytes behind a plausible L2 header, judged against the independent reading.
    #[test]
    fn random_ip_packets_agree_with_the_independent_reading(pkt in ip_prefixed_noise()) {
        check(&pkt)?;
    }

    /// Well-formed packets of every shape, then damaged: truncated, bits flipped, lengths and
    /// header fields that lie. Accept/reject and every offset agree with the reading.
    #[test]
    fn mutated_packets_agree_with_the_independent_reading(
        shape in shape_strategy(),
        m in mutation_strategy(),
    ) {
        let (pkt, lay) = build(&shape);
        let pkt = mutate(pkt, lay, shape.v6, shape.tcp, &m);
        check(&pkt)?;
    }
}

#[test]
fn the_reading_accepts_the_datapath_fixture_shapes() {
    // The independent reading is not vacuous: sound packets of the usual shapes are accepted.
    let base = Shape {
        tpids: vec![],
        v6: false,
        v4_opt_words: 0,
        v4_frag: (false, 0),
        v4_id: 7,
        exts: vec![],
        tcp: false,
        tcp_opt_words: 0,
        flags: 0x02,
        sport: 40000,
        dport: 514,
        csum: 0x1234,
        payload: b"hello".to_vec(),
        padding: vec![],
    };
    let shapes = [
        base.clone(),
        Shape {
            tcp: true,
            tcp_opt_words: 3,
            tpids: vec![0x88a8, 0x8100],
            ..base.clone()
        },
        Shape {
            v4_opt_words: 10,
            padding: vec![0; 10],
            ..base.clone()
        },
        Shape {
            v4_frag: (true, 0),
            ..base.clone()
        },
        Shape {
            v4_frag: (false, 185),
            ..base.clone()
        },
        Shape {
            v6: true,
            exts: vec![
                Ext::Options {
                    kind: HOP_BY_HOP,
                    len8: 0,
                },
                Ext::Fragment {
                    offset8: 0,
                    more: true,
                    id: 9,
                },
                Ext::Options {
                    kind: DEST_OPTS,
                    len8: 1,
                },
            ],
            ..base.clone()
        },
        Shape {
            v6: true,
            tcp: true,
            exts: vec![Ext::Fragment {
                offset8: 3,
                more: false,
                id: 9,
            }],
            ..base.clone()
        },
    ];
    for s in shapes {
        let (pkt, _) = build(&s);
        assert!(
            matches!(want(&pkt), Want::Accept(_)),
            "{s:?}: {:?}",
            want(&pkt)
        );
        check(&pkt).expect("agrees");
    }
}
