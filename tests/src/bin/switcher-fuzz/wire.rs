//! Packet bytes for the generator: headers laid out from their RFCs with valid lengths and
//! checksums (computed with [`crate::checksum`]), fragmentation, and a tolerant layout finder
//! the mutators use to aim at fields. Nothing here judges a packet: that is the oracle's job.

use crate::checksum;

pub const ETH_IP4: u16 = 0x0800;
pub const ETH_IP6: u16 = 0x86dd;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP4: u8 = 1;
pub const ICMP6: u8 = 58;
pub const HOP_BY_HOP: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const DEST_OPTS: u8 = 60;

pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_EDGE: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// How a generated transport checksum is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    Valid,
    /// UDP's "no checksum".
    Zero,
    /// Valid plus this (non-zero) error.
    Wrong(u16),
}

/// An IPv6 extension header before the transport header: its type and its body (without the
/// next-header and length bytes; `body.len() + 2` is a multiple of 8).
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Ext {
    /// Hop-by-hop or destination options of `len8 + 1` units of 8 bytes, PadN-filled.
    pub fn options(kind: u8, len8: u8) -> Self {
        let mut body = vec![0u8; (len8 as usize + 1) * 8 - 2];
        body[0] = 1;
        body[1] = (body.len() - 2) as u8;
        Self { kind, body }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        let mut v = vec![next, ((self.body.len() + 2) / 8).saturating_sub(1) as u8];
        v.extend(&self.body);
        v
    }
}

/// The IP layer of a generated packet.
#[derive(Clone, Debug)]
pub struct Ip {
    /// 4 or 16 bytes.
    pub src: Vec<u8>,
    pub dst: Vec<u8>,
    pub ttl: u8,
    pub tos: u8,
    pub id: u32,
    pub df: bool,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub options: Vec<u8>,
    /// IPv6: headers before the Fragment header (the unfragmentable part: hop-by-hop).
    pub unfragmentable: Vec<Ext>,
    /// IPv6: headers after it (destination options), part of what is fragmented.
    pub fragmentable: Vec<Ext>,
}

impl Ip {
    pub fn new(src: Vec<u8>, dst: Vec<u8>) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 0,
            df: false,
            options: Vec::new(),
            unfragmentable: Vec::new(),
            fragmentable: Vec::new(),
        }
    }

    pub fn v6(&self) -> bool {
        self.src.len() == 16
    }
}

pub fn ethernet(tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut v = MAC_EDGE.to_vec();
    v.extend(MAC_CLIENT);
    for (tpid, tci) in tags {
        v.extend(tpid.to_be_bytes());
        v.extend(tci.to_be_bytes());
    }
    v.extend(ethertype.to_be_bytes());
    v
}

fn apply(csum: u16, mode: Csum) -> u16 {
    match mode {
        Csum::Valid => csum,
        Csum::Zero => 0,
        Csum::Wrong(e) => csum.wrapping_add(e.max(1)),
    }
}

pub fn udp(ip: &Ip, sport: u16, dport: u16, payload: &[u8], mode: Csum) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut v = sport.to_be_bytes().to_vec();
    v.extend(dport.to_be_bytes());
    v.extend((len as u16).to_be_bytes());
    v.extend([0, 0]);
    v.extend(payload);
    let mut c = checksum::checksum(&[&checksum::pseudo(&ip.src, &ip.dst, UDP, len), &v]);
    if c == 0 {
        // RFC 768: a computed zero is sent as all ones.
        c = 0xffff;
    }
    let c = apply(c, mode);
    v[6..8].copy_from_slice(&c.to_be_bytes());
    v
}

pub struct TcpSpec<'a> {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// A multiple of 4 bytes, at most 40.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

pub fn tcp(ip: &Ip, t: &TcpSpec<'_>, mode: Csum) -> Vec<u8> {
    let mut v = t.sport.to_be_bytes().to_vec();
    v.extend(t.dport.to_be_bytes());
    v.extend(t.seq.to_be_bytes());
    v.extend(t.ack.to_be_bytes());
    v.extend([((20 + t.options.len()) / 4) as u8 * 16, t.flags]);
    v.extend(t.window.to_be_bytes());
    v.extend([0, 0, 0, 0]);
    v.extend(t.options);
    v.extend(t.payload);
    let c = checksum::checksum(&[&checksum::pseudo(&ip.src, &ip.dst, TCP, v.len()), &v]);
    v[16..18].copy_from_slice(&apply(c, mode).to_be_bytes());
    v
}

/// An ICMP (IPv4) or ICMPv6 message: type, code, the 4 bytes after the checksum, the body.
pub fn icmp(ip: &Ip, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, code, 0, 0];
    v.extend(rest);
    v.extend(body);
    let c = if ip.v6() {
        checksum::checksum(&[&checksum::pseudo(&ip.src, &ip.dst, ICMP6, v.len()), &v])
    } else {
        checksum::checksum(&[&v])
    };
    v[2..4].copy_from_slice(&c.to_be_bytes());
    v
}

fn v4_header(ip: &Ip, proto: u8, payload_len: usize, more: bool, offset8: u16) -> Vec<u8> {
    let ihl = 20 + ip.options.len();
    let mut h = vec![0x40 | (ihl / 4) as u8, ip.tos];
    h.extend(((ihl + payload_len) as u16).to_be_bytes());
    h.extend((ip.id as u16).to_be_bytes());
    let flags = (u16::from(ip.df) << 14) | (u16::from(more) << 13) | (offset8 & 0x1fff);
    h.extend(flags.to_be_bytes());
    h.extend([ip.ttl, proto, 0, 0]);
    h.extend(&ip.src);
    h.extend(&ip.dst);
    h.extend(&ip.options);
    let c = checksum::checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn v6_header(ip: &Ip, next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = (0x6000_0000u32 | (u32::from(ip.tos) << 20) | (ip.id & 0xfffff))
        .to_be_bytes()
        .to_vec();
    h.extend((payload_len as u16).to_be_bytes());
    h.extend([next, ip.ttl]);
    h.extend(&ip.src);
    h.extend(&ip.dst);
    h
}

/// A chain of extension headers ending in `last`: (bytes, the first header's type).
fn chain(exts: &[Ext], last: u8) -> (Vec<u8>, u8) {
    let mut v = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        v.extend(e.bytes(exts.get(i + 1).map_or(last, |n| n.kind)));
    }
    (v, exts.first().map_or(last, |e| e.kind))
}

fn frag_header(next: u8, offset8: u16, more: bool, id: u32) -> Vec<u8> {
    let mut v = vec![next, 0];
    v.extend(((offset8 << 3) | u16::from(more)).to_be_bytes());
    v.extend(id.to_be_bytes());
    v
}

/// One unfragmented IP packet carrying `seg` (a transport segment of protocol `proto`).
/// IPv6 headers are `unfragmentable` then `fragmentable`, without a Fragment header.
pub fn ip_packet(ip: &Ip, proto: u8, seg: &[u8]) -> Vec<u8> {
    if ip.v6() {
        let exts: Vec<Ext> = ip
            .unfragmentable
            .iter()
            .chain(&ip.fragmentable)
            .cloned()
            .collect();
        let (mut rest, first) = chain(&exts, proto);
        rest.extend(seg);
        let mut v = v6_header(ip, first, rest.len());
        v.extend(rest);
        v
    } else {
        let mut v = v4_header(ip, proto, seg.len(), false, 0);
        v.extend(seg);
        v
    }
}

/// The datagram `seg` cut into fragments whose fragmentable parts are `sizes` bytes long
/// (multiples of 8 but the last; the rest of the datagram goes in a last fragment). IPv6
/// fragments carry a Fragment header after the unfragmentable headers.
pub fn fragments(ip: &Ip, proto: u8, seg: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let (fragmentable, next) = if ip.v6() {
        let (mut v, first) = chain(&ip.fragmentable, proto);
        v.extend(seg);
        (v, first)
    } else {
        (seg.to_vec(), proto)
    };
    let mut out = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = sizes.iter().map(|s| s & !7).filter(|&s| s > 0).collect();
    cuts.push(usize::MAX);
    for size in cuts {
        if at >= fragmentable.len() {
            break;
        }
        let end = at.saturating_add(size).min(fragmentable.len());
        let more = end < fragmentable.len();
        let part = &fragmentable[at..end];
        let offset8 = (at / 8) as u16;
        if ip.v6() {
            let (mut rest, first) = chain(&ip.unfragmentable, FRAGMENT);
            rest.extend(frag_header(next, offset8, more, ip.id));
            rest.extend(part);
            let mut v = v6_header(ip, first, rest.len());
            v.extend(rest);
            out.push(v);
        } else {
            let mut v = v4_header(ip, proto, part.len(), more, offset8);
            v.extend(part);
            out.push(v);
        }
        at = end;
    }
    out
}

/// Where the headers of a (possibly damaged) frame are, as far as they can be found.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub l3: usize,
    pub v6: bool,
    /// End of the IP packet by its length field, clamped to the frame.
    pub ip_end: usize,
    /// The transport header and its protocol, when the packet seems to carry one.
    pub l4: Option<(usize, u8)>,
}

pub fn layout(p: &[u8]) -> Option<Layout> {
    let mut at = 12;
    for _ in 0..4 {
        let t = u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]);
        match t {
            0x8100 | 0x88a8 | 0x9100 => at += 4,
            ETH_IP4 | ETH_IP6 => break,
            _ => return None,
        }
    }
    let ethertype = u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]);
    let l3 = at + 2;
    if ethertype == ETH_IP4 {
        let ihl = (*p.get(l3)? as usize & 0x0f) * 4;
        let total = u16::from_be_bytes([*p.get(l3 + 2)?, *p.get(l3 + 3)?]) as usize;
        let frag = u16::from_be_bytes([*p.get(l3 + 6)?, *p.get(l3 + 7)?]) & 0x1fff;
        let proto = *p.get(l3 + 9)?;
        let ip_end = (l3 + total).min(p.len());
        let l4 = (frag == 0 && ihl >= 20 && l3 + ihl < p.len()).then_some((l3 + ihl, proto));
        Some(Layout {
            l3,
            v6: false,
            ip_end,
            l4,
        })
    } else if ethertype == ETH_IP6 {
        let payload = u16::from_be_bytes([*p.get(l3 + 4)?, *p.get(l3 + 5)?]) as usize;
        let ip_end = (l3 + 40 + payload).min(p.len());
        let mut next = *p.get(l3 + 6)?;
        let mut off = l3 + 40;
        let mut l4 = None;
        for _ in 0..8 {
            match next {
                HOP_BY_HOP | DEST_OPTS | ROUTING | 135 | 139 | 140 | 253 | 254 => {
                    let n = *p.get(off)?;
                    off += (*p.get(off + 1)? as usize + 1) * 8;
                    next = n;
                }
                FRAGMENT => {
                    let n = *p.get(off)?;
                    let word = u16::from_be_bytes([*p.get(off + 2)?, *p.get(off + 3)?]);
                    off += 8;
                    next = n;
                    if word >> 3 != 0 {
                        break;
                    }
                }
                51 => {
                    let n = *p.get(off)?;
                    off += (*p.get(off + 1)? as usize + 2) * 4;
                    next = n;
                }
                _ => {
                    l4 = (off < p.len()).then_some((off, next));
                    break;
                }
            }
        }
        Some(Layout {
            l3,
            v6: true,
            ip_end,
            l4,
        })
    } else {
        None
    }
}

pub fn get16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

pub fn set16(p: &mut [u8], at: usize, v: u16) {
    if let Some(f) = p.get_mut(at..at + 2) {
        f.copy_from_slice(&v.to_be_bytes());
    }
}

/// Recomputes the IPv4 header checksum, when the header is there.
pub fn fix_ipv4_checksum(p: &mut [u8], lay: &Layout) {
    if lay.v6 {
        return;
    }
    let ihl = (p[lay.l3] as usize & 0x0f) * 4;
    if ihl < 20 || lay.l3 + ihl > p.len() {
        return;
    }
    set16(p, lay.l3 + 10, 0);
    let c = checksum::checksum(&[&p[lay.l3..lay.l3 + ihl]]);
    set16(p, lay.l3 + 10, c);
}

/// Recomputes the TCP, UDP or ICMP checksum of an unfragmented packet from scratch, over the
/// IP packet as its length field bounds it.
pub fn fix_l4_checksum(p: &mut [u8], lay: &Layout) {
    let Some((l4, proto)) = lay.l4 else {
        return;
    };
    let at = match proto {
        TCP => l4 + 16,
        UDP => l4 + 6,
        ICMP4 | ICMP6 => l4 + 2,
        _ => return,
    };
    if at + 2 > lay.ip_end || l4 > lay.ip_end {
        return;
    }
    let (src, dst) = if lay.v6 {
        (lay.l3 + 8..lay.l3 + 24, lay.l3 + 24..lay.l3 + 40)
    } else {
        (lay.l3 + 12..lay.l3 + 16, lay.l3 + 16..lay.l3 + 20)
    };
    set16(p, at, 0);
    let seg = &p[l4..lay.ip_end];
    let c = if proto == ICMP4 {
        checksum::checksum(&[seg])
    } else {
        let pseudo = checksum::pseudo(&p[src], &p[dst], proto, seg.len());
        checksum::checksum(&[&pseudo, seg])
    };
    let c = if proto == UDP && c == 0 { 0xffff } else { c };
    set16(p, at, c);
}
