//! The oracle's reading of a packet's headers: etherparse's header slices, the RFCs' rules,
//! and the datapath's documented limits. `Err` means the packet must pass untouched.

use etherparse::{
    Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SlicedPacket,
    TcpHeaderSlice, UdpHeaderSlice,
};

use super::{
    Mode, KNOWN_EXT_PAST_PAYLOAD, KNOWN_FIRST_FRAGMENT_UDP_LENGTH, KNOWN_HOP_BY_HOP,
    KNOWN_TWO_FRAGMENT_HEADERS,
};
use crate::wire::{DEST_OPTS, FRAGMENT, HOP_BY_HOP, ICMP4, ICMP6, ROUTING, TCP, UDP};

/// The datapath's bound on the L4 offset (README: extension headers past it are not steered).
const MAX_L4_OFF: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    None,
    First(u32),
    Later(u32),
}

/// The IP layer of an input as the oracle reads it.
#[derive(Clone, Debug)]
pub struct IpView {
    pub l3: usize,
    pub v6: bool,
    pub ihl: usize,
    pub ip_end: usize,
    pub src_at: usize,
    pub dst_at: usize,
    pub frag: Frag,
    /// The protocol that names the datagram of a fragment (IPv6: the Fragment header's next
    /// header), or the transport protocol.
    pub frag_proto: u8,
    /// The transport protocol (later fragments: unknown, `frag_proto`).
    pub proto: u8,
    /// Where the transport header (or a later fragment's payload) starts.
    pub l4: usize,
    /// Set when the datapath's documented limits let it pass this packet untouched.
    pub may_pass: Option<&'static str>,
    /// Set when [`Mode::AsDatapath`] relaxed a rule for this packet: which known issue.
    pub relaxed: Option<&'static str>,
}

impl IpView {
    pub fn addr_len(&self) -> usize {
        if self.v6 {
            16
        } else {
            4
        }
    }

    pub fn src<'a>(&self, p: &'a [u8]) -> &'a [u8] {
        &p[self.src_at..self.src_at + self.addr_len()]
    }

    pub fn dst<'a>(&self, p: &'a [u8]) -> &'a [u8] {
        &p[self.dst_at..self.dst_at + self.addr_len()]
    }
}

/// Why a packet must pass untouched.
pub type Why = &'static str;

pub fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// L2 and L3 of `p`, strictly. `Err`: the packet must not be rewritten.
pub fn read_ip(p: &[u8], mode: Mode) -> Result<IpView, Why> {
    if p.len() < 14 {
        return Err("shorter than an Ethernet header");
    }
    let mut ethertype = be16(p, 12);
    let mut l3 = 14;
    let mut tags = 0;
    while tags < 2 && (ethertype == 0x8100 || ethertype == 0x88a8) {
        if p.len() < l3 + 4 {
            return Err("VLAN tag cut short");
        }
        ethertype = be16(p, l3 + 2);
        l3 += 4;
        tags += 1;
    }
    match ethertype {
        0x0800 => read_v4(p, l3, mode),
        0x86dd => read_v6(p, l3, mode),
        _ => Err("not IPv4 or IPv6 behind at most two 802.1Q/802.1ad tags"),
    }
}

fn read_v4(p: &[u8], l3: usize, mode: Mode) -> Result<IpView, Why> {
    let h = Ipv4HeaderSlice::from_slice(&p[l3..]).map_err(|_| "IPv4 header malformed or cut")?;
    let ihl = h.slice().len();
    let total = h.total_len() as usize;
    if total < ihl {
        return Err("IPv4 total length shorter than its header");
    }
    if l3 + total > p.len() {
        return Err("IPv4 total length longer than the frame");
    }
    let word = be16(p, l3 + 6);
    let id = u32::from(h.identification());
    let frag = match (word & 0x1fff, word & 0x2000 != 0) {
        (0, false) => Frag::None,
        (0, true) => Frag::First(id),
        _ => Frag::Later(id),
    };
    let proto = h.protocol().0;
    // (An ICMP message the datapath reads past the IP packet is judged by `icmp_plan`.)
    let icmp_past_end = mode == Mode::AsDatapath && proto == ICMP4;
    if frag == Frag::None && !icmp_past_end && SlicedPacket::from_ethernet(p).is_err() {
        return Err("etherparse rejects the packet");
    }
    Ok(IpView {
        l3,
        v6: false,
        ihl,
        ip_end: l3 + total,
        src_at: l3 + 12,
        dst_at: l3 + 16,
        frag,
        frag_proto: proto,
        proto,
        l4: l3 + ihl,
        may_pass: None,
        relaxed: None,
    })
}

fn read_v6(p: &[u8], l3: usize, mode: Mode) -> Result<IpView, Why> {
    let h = Ipv6HeaderSlice::from_slice(&p[l3..]).map_err(|_| "IPv6 header malformed or cut")?;
    let payload = h.payload_length() as usize;
    if payload == 0 {
        return Err("IPv6 payload length 0 (a jumbogram, not log traffic)");
    }
    if l3 + 40 + payload > p.len() {
        return Err("IPv6 payload length longer than the frame");
    }
    let ip_end = l3 + 40 + payload;
    let lenient = mode == Mode::AsDatapath;
    let mut relaxed = None;
    let mut next = h.next_header().0;
    let mut off = l3 + 40;
    let mut frag = Frag::None;
    let mut frag_proto = None;
    let mut count = 0;
    let mut may_pass = None;
    loop {
        // The headers lie inside the payload; the datapath reads them up to the frame's end.
        let end = if lenient { p.len() } else { ip_end };
        let rest = &p[off.min(end)..end];
        let past_payload = |len: usize| off + len > ip_end;
        match next {
            HOP_BY_HOP if off != l3 + 40 && !lenient => {
                return Err("hop-by-hop header not right after the IPv6 header (RFC 8200 4.1)")
            }
            HOP_BY_HOP | DEST_OPTS => {
                if next == HOP_BY_HOP && off != l3 + 40 {
                    relaxed = Some(KNOWN_HOP_BY_HOP);
                }
                let e = Ipv6RawExtHeaderSlice::from_slice(rest)
                    .map_err(|_| "extension header past the IPv6 payload length")?;
                if past_payload(e.slice().len()) {
                    relaxed = Some(KNOWN_EXT_PAST_PAYLOAD);
                }
                next = e.next_header().0;
                off += e.slice().len();
            }
            FRAGMENT if frag_proto.is_some() && !lenient => return Err("two Fragment headers"),
            FRAGMENT => {
                if frag_proto.is_some() {
                    relaxed = Some(KNOWN_TWO_FRAGMENT_HEADERS);
                }
                let e = Ipv6FragmentHeaderSlice::from_slice(rest)
                    .map_err(|_| "Fragment header past the IPv6 payload length")?;
                if past_payload(8) {
                    relaxed = Some(KNOWN_EXT_PAST_PAYLOAD);
                }
                // Decoded here: etherparse 0.16 reads offset and M from the wrong bits (its
                // issue #150). RFC 8200 4.5: offset = word >> 3, M = the lowest bit.
                let word = be16(rest, 2);
                next = e.next_header().0;
                frag_proto = Some(next);
                off += 8;
                let id = e.identification();
                frag = if word >> 3 != 0 {
                    Frag::Later(id)
                } else if word & 1 != 0 {
                    Frag::First(id)
                } else {
                    Frag::None
                };
            }
            ROUTING => return Err("routing header: the destination is not the final one"),
            _ => break,
        }
        count += 1;
        if count > 3 {
            may_pass.get_or_insert("more than three IPv6 extension headers");
        }
        if let Frag::Later(_) = frag {
            break;
        }
    }
    if !matches!(frag, Frag::Later(_)) && off > MAX_L4_OFF {
        may_pass.get_or_insert("L4 header past offset 512");
    }
    if off > ip_end {
        // Only a later fragment can be steered like this (the datapath checks that a
        // transport header lies inside the packet).
        may_pass.get_or_insert("headers past the IPv6 payload");
    }
    // (etherparse rejects what a relaxed rule let through, for the same reason.)
    let icmp_past_end = lenient && next == ICMP6;
    if frag_proto.is_none()
        && relaxed.is_none()
        && !icmp_past_end
        && SlicedPacket::from_ethernet(p).is_err()
    {
        return Err("etherparse rejects the packet");
    }
    Ok(IpView {
        l3,
        v6: true,
        ihl: 40,
        ip_end,
        src_at: l3 + 8,
        dst_at: l3 + 24,
        frag,
        frag_proto: match frag {
            Frag::None => next,
            _ => frag_proto.unwrap_or(next),
        },
        proto: next,
        l4: off,
        may_pass,
        relaxed,
    })
}

/// A TCP or UDP header as the oracle reads it.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    pub sport: u16,
    pub dport: u16,
    pub csum_at: usize,
}

/// The TCP/UDP header of a packet that is not a later fragment: sound, or the packet must
/// pass.
pub fn read_transport(p: &[u8], ip: &mut IpView, mode: Mode) -> Result<Transport, Why> {
    if ip.l4 > ip.ip_end {
        return Err("transport header past the end of the IP packet");
    }
    let seg = &p[ip.l4..ip.ip_end];
    match ip.proto {
        TCP => {
            let t = TcpHeaderSlice::from_slice(seg)
                .map_err(|_| "TCP header cut, or its data offset lies")?;
            Ok(Transport {
                sport: t.source_port(),
                dport: t.destination_port(),
                csum_at: ip.l4 + 16,
            })
        }
        UDP => {
            let u = UdpHeaderSlice::from_slice(seg).map_err(|_| "UDP header cut")?;
            let len = u.length() as usize;
            if len < 8 {
                return Err("UDP length shorter than its header");
            }
            if ip.frag == Frag::None {
                if len > seg.len() {
                    return Err("UDP length longer than the IP payload");
                }
                if len < seg.len() {
                    // Linux trims such a datagram; the datapath passes it (stricter).
                    ip.may_pass
                        .get_or_insert("UDP length shorter than the IP payload");
                }
            } else if len < seg.len() {
                if mode == Mode::Rfc {
                    return Err("UDP length shorter than this first fragment's UDP bytes");
                }
                ip.relaxed = Some(KNOWN_FIRST_FRAGMENT_UDP_LENGTH);
            }
            if ip.v6 && u.checksum() == 0 {
                return Err("IPv6 UDP without checksum (invalid, RFC 8200 8.1)");
            }
            Ok(Transport {
                sport: u.source_port(),
                dport: u.destination_port(),
                csum_at: ip.l4 + 6,
            })
        }
        _ => Err("not TCP or UDP"),
    }
}
