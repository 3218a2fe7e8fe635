//! Ethernet (up to two VLAN tags) → IPv4 (with options) / IPv6 (with extension headers) → the
//! L4 ports. Any inconsistency yields the [`Reason`] to count; the caller then passes the packet
//! untouched, so a malformed packet is never rewritten.
//!
//! The parser reads the packet only through [`Frame`], so XDP (direct access), TC
//! (bpf_skb_load_bytes) and host tests (a byte slice) share one implementation. Everything here
//! is `#[inline(always)]` and generic over the frame, so it is monomorphised in the eBPF crate
//! and inlined into each program: the verifier checks every read in place against the packet
//! bounds, and no call is paid per packet.

use crate::{
    FlowKey, Reason, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Upper bound on the L4 offset; keeps offsets small and visible to the verifier.
const MAX_L4_OFF: usize = 512;

/// Bounds-checked byte access to a packet.
pub trait Frame {
    /// Copies `N` bytes at `off`, or `None` if the packet is shorter.
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
    /// Length of the whole frame in bytes.
    fn len(&self) -> usize;

    /// `len`'s usual companion; the parser itself never needs it.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A packet held in memory: host tests and userspace tools parse exactly as the datapath does.
impl Frame for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let b = self.get(off..off.checked_add(N)?)?;
        <[u8; N]>::try_from(b).ok()
    }

    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    None,
    /// First fragment: carries the L4 header.
    First(u32),
    /// A later fragment: no L4 header, steered by its datagram's first fragment.
    Later(u32),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub family: u8,
    pub proto: u8,
    pub vlans: u8,
    pub l3: usize,
    pub l4: usize,
    pub frag: Frag,
    /// The protocol that identifies a fragmented datagram, the same in every fragment: IPv4's
    /// protocol field; for IPv6 the Fragment header's next header (the first fragment's
    /// transport header may lie behind further extension headers later fragments lack).
    pub frag_proto: u8,
    /// IPv4 total length or IPv6 payload length + 40: what the IP header says.
    pub ip_len: u16,
    /// IPv4 TOS or IPv6 traffic class / flow label word, for the FIB lookup.
    pub tos_flow: u32,
}

/// Parses up to the L4 header, writing addresses, protocol and family into `flow` (which may
/// live in a map: the BPF stack is too small to copy them around).
/// `Err(Reason::NotIp | NotService)` are ordinary pass-throughs.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(f: &F, flow: &mut FlowKey) -> Result<Parsed, Reason> {
    parse_into(f, Some(flow))
}

/// [`parse`] without the flow key: the ingress path builds it ([`key_words`]) only once the
/// port shows a service, so the most common packet (not a service's) never copies its
/// addresses.
#[inline(always)]
pub fn parse_headers<F: Frame + ?Sized>(f: &F) -> Result<Parsed, Reason> {
    parse_into(f, None)
}

// The key is written where each family's header is read, as before `parse_headers` existed:
// moving it after the parse makes LLVM read an unset register in the TC shadow program, which
// the verifier refuses.
#[inline(always)]
fn parse_into<F: Frame + ?Sized>(f: &F, flow: Option<&mut FlowKey>) -> Result<Parsed, Reason> {
    let mut off = ETH_HLEN;
    let mut ethertype = be16(f.read::<2>(12).ok_or(Reason::TruncatedL2)?);
    let mut vlans = 0u8;
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag = f.read::<4>(off).ok_or(Reason::TruncatedL2)?;
            ethertype = u16::from_be_bytes([tag[2], tag[3]]);
            off += 4;
            vlans += 1;
        }
    }
    match ethertype {
        ETH_P_IP => parse_v4(f, off, vlans, flow),
        ETH_P_IPV6 => parse_v6(f, off, vlans, flow),
        _ => Err(Reason::NotIp),
    }
}

#[inline(always)]
fn parse_v4<F: Frame + ?Sized>(
    f: &F,
    l3: usize,
    vlans: u8,
    flow: Option<&mut FlowKey>,
) -> Result<Parsed, Reason> {
    let h = f.read::<20>(l3).ok_or(Reason::MalformedL3)?;
    if h[0] >> 4 != 4 {
        return Err(Reason::MalformedL3);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let tot_len = be16([h[2], h[3]]);
    if ihl < 20 || (tot_len as usize) < ihl || l3 + tot_len as usize > f.len() {
        return Err(Reason::MalformedL3);
    }
    // The options must be present too, even though we never read them.
    if ihl > 20 && f.read::<1>(l3 + ihl - 1).is_none() {
        return Err(Reason::MalformedL3);
    }
    let proto = h[9];
    // ICMP is parsed too: egress counts backends' unreachable errors; ingress passes it.
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Reason::NotService);
    }
    let frag_word = be16([h[6], h[7]]);
    let more = frag_word & 0x2000 != 0;
    let offset = frag_word & 0x1fff;
    let id = be16([h[4], h[5]]) as u32;
    let frag = if offset != 0 {
        Frag::Later(id)
    } else if more {
        Frag::First(id)
    } else {
        Frag::None
    };
    if icmp_truncated(proto, frag, ihl, tot_len as usize) {
        return Err(Reason::MalformedL4);
    }
    if let Some(flow) = flow {
        flow.src = v4_in_key([h[12], h[13], h[14], h[15]]);
        flow.dst = v4_in_key([h[16], h[17], h[18], h[19]]);
        flow.proto = proto;
        flow.family = FAMILY_V4;
    }
    Ok(Parsed {
        family: FAMILY_V4,
        proto,
        vlans,
        l3,
        l4: l3 + ihl,
        frag,
        frag_proto: proto,
        ip_len: tot_len,
        tos_flow: h[1] as u32,
    })
}

#[inline(always)]
fn parse_v6<F: Frame + ?Sized>(
    f: &F,
    l3: usize,
    vlans: u8,
    flow: Option<&mut FlowKey>,
) -> Result<Parsed, Reason> {
    let h = f.read::<8>(l3).ok_or(Reason::MalformedL3)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::MalformedL3);
    }
    let payload = be16([h[4], h[5]]);
    // Zero payload length means a jumbogram: not log traffic, not steered.
    if payload == 0 || l3 + 40 + payload as usize > f.len() {
        return Err(Reason::MalformedL3);
    }
    let mut next = h[6];
    let mut off = l3 + 40;
    let mut frag = Frag::None;
    let mut frag_proto = 0;
    // Hop-by-hop (only first, RFC 8200) and destination options are skipped; one fragment
    // header is followed (a second one is not steered).
    for _ in 0..3 {
        match next {
            0 | 60 if next == 60 || off == l3 + 40 => {
                let e = f.read::<2>(off).ok_or(Reason::MalformedL3)?;
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            44 if frag_proto == 0 => {
                let e = f.read::<8>(off).ok_or(Reason::MalformedL3)?;
                next = e[0];
                frag_proto = next;
                let offset = be16([e[2], e[3]]) >> 3;
                let more = e[3] & 1 != 0;
                let id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                frag = if offset != 0 {
                    Frag::Later(id)
                } else if more {
                    Frag::First(id)
                } else {
                    Frag::None
                };
                off += 8;
                // A later fragment carries payload, not further headers.
                if offset != 0 {
                    break;
                }
            }
            _ => break,
        }
        if off > MAX_L4_OFF {
            return Err(Reason::Ipv6ExtUnsupported);
        }
    }
    // The extension headers must lie inside the payload the IPv6 header announces.
    if off > l3 + 40 + payload as usize {
        return Err(Reason::MalformedL3);
    }
    // A later fragment's payload is no header: whatever its Fragment header's next header
    // says, it is steered by its datagram (which its first fragment decided).
    let later = matches!(frag, Frag::Later(_));
    if !later && next != PROTO_TCP && next != PROTO_UDP && next != PROTO_ICMPV6 {
        return Err(match next {
            0 | 43 | 44 | 60 => Reason::Ipv6ExtUnsupported,
            _ => Reason::NotService,
        });
    }
    if icmp_truncated(next, frag, off - l3, payload as usize + 40) {
        return Err(Reason::MalformedL4);
    }
    if frag == Frag::None {
        frag_proto = next;
    }
    if let Some(flow) = flow {
        // Still a builtin memmove each (a byte loop): the variants that avoid it
        // (copy_from_slice, a 128-bit value) make LLVM emit a read of an unset register in the
        // TC shadow program, which the verifier refuses.
        flow.src = f.read::<16>(l3 + 8).ok_or(Reason::MalformedL3)?;
        flow.dst = f.read::<16>(l3 + 24).ok_or(Reason::MalformedL3)?;
        flow.proto = next;
        flow.family = FAMILY_V6;
    }
    Ok(Parsed {
        family: FAMILY_V6,
        proto: next,
        vlans,
        l3,
        l4: off,
        frag,
        frag_proto,
        ip_len: payload + 40,
        tos_flow: u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x0fff_ffff,
    })
}

/// The [`FlowKey`] of the packet `p` describes (parsed by [`parse_headers`]), with the ports
/// `sport` and `dport` as the packet has them, as the key's five 8-byte words in memory order.
/// The datapath stores the key a word at a time: what reads it afterwards (the hash, the
/// service compare) loads whole words, and a load spanning several narrower stores still in
/// flight is not forwarded from them: the CPU waits for them to reach the cache.
#[inline(always)]
pub fn key_words<F: Frame + ?Sized>(
    f: &F,
    p: &Parsed,
    sport: [u8; 2],
    dport: [u8; 2],
) -> Result<[u64; 5], Reason> {
    let word = |b: &[u8; 16], i: usize| {
        u64::from_ne_bytes([
            b[i],
            b[i + 1],
            b[i + 2],
            b[i + 3],
            b[i + 4],
            b[i + 5],
            b[i + 6],
            b[i + 7],
        ])
    };
    let (src, dst) = if p.family == FAMILY_V4 {
        let a = f.read::<8>(p.l3 + 12).ok_or(Reason::MalformedL3)?;
        let v4 = |i: usize| u64::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3], 0, 0, 0, 0]);
        ([v4(0), 0], [v4(4), 0])
    } else {
        let s = f.read::<16>(p.l3 + 8).ok_or(Reason::MalformedL3)?;
        let d = f.read::<16>(p.l3 + 24).ok_or(Reason::MalformedL3)?;
        ([word(&s, 0), word(&s, 8)], [word(&d, 0), word(&d, 8)])
    };
    let tail = u64::from_ne_bytes([
        sport[0], sport[1], dport[0], dport[1], p.proto, p.family, 0, 0,
    ]);
    Ok([src[0], src[1], dst[0], dst[1], tail])
}

/// An IPv4 address as a flow key holds it: its 4 bytes, then zeros, built as one 128-bit
/// value the datapath stores as two words (clearing the array, then copying into it, became
/// calls to the builtin memset, a byte loop, on every packet).
#[inline(always)]
fn v4_in_key(a: [u8; 4]) -> [u8; 16] {
    (u32::from_le_bytes(a) as u128).to_le_bytes()
}

/// An unfragmented ICMP or ICMPv6 message shorter than its 8-byte header (type, code,
/// checksum, rest of header): no such message is sound, whatever its type.
#[inline(always)]
fn icmp_truncated(proto: u8, frag: Frag, l4_off: usize, ip_len: usize) -> bool {
    (proto == PROTO_ICMP || proto == PROTO_ICMPV6) && frag == Frag::None && l4_off + 8 > ip_len
}

/// The L4 fields the datapath needs.
#[derive(Debug, PartialEq, Eq)]
pub struct L4 {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// Offset of the checksum field.
    pub csum_off: usize,
    pub csum: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Bytes after the L4 header, up to the end of the IP packet (this fragment's, for a
    /// first fragment).
    pub payload: u16,
}

/// The destination port of a TCP or UDP packet, read before its header is validated: the
/// datapath passes a packet to no service's port on it alone (and validates the rest,
/// [`parse_l4`], only for a service's).
#[inline(always)]
pub fn dport<F: Frame + ?Sized>(f: &F, p: &Parsed) -> Result<[u8; 2], Reason> {
    if p.l4 > MAX_L4_OFF {
        return Err(Reason::MalformedL4);
    }
    f.read::<2>(p.l4 + 2).ok_or(Reason::MalformedL4)
}

/// Reads the TCP or UDP header at `p.l4`, which must lie inside the IP packet.
#[inline(always)]
pub fn parse_l4<F: Frame + ?Sized>(f: &F, p: &Parsed) -> Result<L4, Reason> {
    if p.l4 > MAX_L4_OFF {
        return Err(Reason::MalformedL4);
    }
    let ip_end = p.l3 + p.ip_len as usize;
    if p.proto == PROTO_TCP {
        let h = f.read::<20>(p.l4).ok_or(Reason::MalformedL4)?;
        let doff = (h[12] >> 4) as usize * 4;
        if doff < 20 || p.l4 + doff > ip_end {
            return Err(Reason::MalformedL4);
        }
        Ok(L4 {
            sport: [h[0], h[1]],
            dport: [h[2], h[3]],
            csum_off: p.l4 + 16,
            csum: be16([h[16], h[17]]),
            tcp_flags: h[13],
            payload: (ip_end - p.l4 - doff) as u16,
        })
    } else {
        let h = f.read::<8>(p.l4).ok_or(Reason::MalformedL4)?;
        let udp_len = be16([h[4], h[5]]) as usize;
        if udp_len < 8 || p.l4 + 8 > ip_end {
            return Err(Reason::MalformedL4);
        }
        // An unfragmented datagram must fit its UDP length exactly inside the IP packet; a
        // first fragment carries part of it, never more than its length says.
        if p.l4 + udp_len < ip_end || (p.frag == Frag::None && p.l4 + udp_len != ip_end) {
            return Err(Reason::MalformedL4);
        }
        let csum = be16([h[6], h[7]]);
        if csum == 0 && p.family == FAMILY_V6 {
            return Err(Reason::Udp6ZeroChecksum);
        }
        Ok(L4 {
            sport: [h[0], h[1]],
            dport: [h[2], h[3]],
            csum_off: p.l4 + 6,
            csum,
            tcp_flags: 0,
            payload: (ip_end - p.l4).saturating_sub(8) as u16,
        })
    }
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[cfg(test)]
mod tests;
